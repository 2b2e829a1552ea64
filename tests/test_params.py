"""params.yaml validation: every bad key is named."""

import subprocess
import sys

import pytest
import yaml

from selftrain.cli import main
from selftrain.failures import EXIT_BAD_INPUT
from selftrain.models import check_params
from selftrain.params import Params, ParamsError, load_params, parse_override, parse_params, parse_yaml


def test_repository_params_file_is_valid():
    p = load_params("params.yaml")
    assert isinstance(p, Params) and p.teacher.model and p.student.unlabeled_ratio >= 1


def test_unknown_key_is_named():
    with pytest.raises(ParamsError, match=r"student\.epoch: unknown key"):
        parse_params({"student": {"epoch": 3}})


def test_bad_values_are_named_with_the_value():
    with pytest.raises(ParamsError) as e:
        parse_params({"teacher": {"lr": -1}, "pseudo_labels": {"threshold": 1.5, "per_class": 0}})
    msg = str(e.value)
    assert "3 invalid" in msg
    assert "teacher.lr: Input should be greater than 0 (got -1)" in msg
    assert "pseudo_labels.threshold" in msg and "pseudo_labels.per_class" in msg


def test_unknown_timm_model_is_refused_with_suggestions():
    with pytest.raises(ParamsError, match=r"teacher\.model: unknown timm model 'resnet9000'.*resnet"):
        check_params(parse_params({"teacher": {"model": "resnet9000"}}))
    with pytest.raises(ParamsError, match=r"generations\.gen1\.model: unknown timm model"):
        check_params(parse_params({"generations": {"gen1": {"model": "resnet9000", "teacher": "gen0"}}}))


def _imported(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported once it has run `code`."""
    probe = f"{code}; import sys; print(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def test_loading_params_imports_neither_torch_nor_timm():
    code = (
        "from selftrain.params import load_params; "
        "load_params('params.yaml', {'resources': {'train-mpl': {'gpu': 1}, 'infer': {'gpu': 1}}})"
    )
    assert _imported(code, ("torch", "timm", "selftrain.stages")) == []


def test_the_cli_checks_models_before_a_stage_that_builds_one(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"teacher": {"model": "resnet9000"}}))
    assert main(["prepare", "--params", str(bad), "--out", str(tmp_path / "data")]) == 0  # splits data: no model in it
    out = tmp_path / "teacher"
    args = [
        "--params",
        str(bad),
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--promoted",
        str(tmp_path / "promoted.json"),
    ]
    assert main(["train-teacher", *args]) == EXIT_BAD_INPUT
    assert "teacher.model: unknown timm model 'resnet9000'" in capsys.readouterr().err
    assert not out.exists()


def gens(*models: str) -> dict:
    return {f"gen{k}": {"model": m, "teacher": f"gen{k - 1}"} for k, m in enumerate(models, start=1)}


def test_generation_chain_is_checked():
    growing = {"generations": gens("resnet10t", "resnet14t", "resnet18"), "student": {"init": "scratch"}}
    assert list(parse_params(growing).generations) == ["gen1", "gen2", "gen3"]
    with pytest.raises(
        ParamsError, match="generations.gen2.model: 'resnet14t' cannot start from its teacher 'resnet10t'"
    ):
        check_params(parse_params({**growing, "student": {"init": "teacher"}}))
    check_params(
        parse_params({"generations": gens("resnet10t", "resnet10t_small"), "student": {"init": "teacher"}})
    )  # the weights fit
    with pytest.raises(ParamsError, match="keys must be gen1, gen2, ... in order, got gen1, gen3"):
        parse_params(
            {"generations": {"gen1": gens("resnet10t")["gen1"], "gen3": {"model": "resnet10t", "teacher": "gen2"}}}
        )
    with pytest.raises(ParamsError, match="generations.gen2.teacher: must be 'gen1', got 'gen0'"):
        parse_params({"generations": {**gens("resnet10t"), "gen2": {"model": "resnet10t", "teacher": "gen0"}}})
    with pytest.raises(ParamsError, match="generations.gen2.model: 'resnet10t' is smaller than its teacher 'resnet18'"):
        check_params(parse_params({"generations": gens("resnet18", "resnet10t"), "student": {"init": "scratch"}}))
    with pytest.raises(ParamsError, match="generations.gen1.model: 'resnet10t' is smaller than its teacher 'resnet18'"):
        check_params(parse_params({"teacher": {"model": "resnet18"}, "student": {"init": "scratch"}}))
    check_params(
        parse_params({"teacher": {"model": "resnet18"}, "student": {"allow_smaller": True, "init": "scratch"}})
    )
    with pytest.raises(ParamsError, match="list at least one generation"):
        parse_params({"generations": {}})
    smaller = {"teacher": {"model": "resnet18"}, "student": {"init": "scratch"}}
    distill = {**smaller, "generations": {"gen1": {"model": "resnet10t", "teacher": "gen0", "method": "distill"}}}
    check_params(parse_params(distill))  # distilling down is what distill is for
    with pytest.raises(
        ParamsError,
        match=r"generations\.gen1\.method: Input should be 'distill', 'fixmatch', 'mpl', 'noisy_student' or "
        r"'reduced_mpl'",
    ):
        parse_params({"generations": {"gen1": {"model": "resnet10t", "teacher": "gen0", "method": "mlp"}}})


def test_contradictory_params():
    with pytest.raises(ParamsError, match="data.folders .* is required"):
        parse_params({"data": {"source": "folders"}})
    with pytest.raises(ParamsError, match="both 0"):
        parse_params({"student": {"labeled_weight": 0, "pseudo_weight": 0}})
    with pytest.raises(ParamsError, match="init_checkpoint is needed when, and only when"):
        parse_params({"student": {"init": "checkpoint"}})
    with pytest.raises(
        ParamsError,
        match=r"student.augment: Input should be 'none', 's1', 's2', 's3', 's4' or 'noisy_student' \(got 'flip_crop'\)",
    ):
        parse_params({"student": {"augment": "flip_crop"}})


def test_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad)


def test_overrides_apply_dotted_keys_and_are_validated(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"student": {"epochs": 3}}))
    assert load_params(f, dict([parse_override("student.epochs=5")])).student.epochs == 5
    assert load_params(f, {"pseudo_labels.per_class": None}).pseudo_labels.per_class is None
    with pytest.raises(ParamsError, match="student.epochs"):
        load_params(f, {"student.epochs": "many"})
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_override("student.epochs")


def test_student_loss_is_checked():
    with pytest.raises(ParamsError, match=r"student\.loss: .*'ce', 'kd', 'dist' or 'soft_ce'.*\(got 'kl'\)"):
        parse_params({"student": {"loss": "kl"}})
    with pytest.raises(ParamsError, match=r"student\.loss_tau: Input should be greater than 0"):
        parse_params({"student": {"loss": "kd", "loss_tau": 0}})
    with pytest.raises(
        ParamsError, match=r"soft_ce \(no labeled part\) but student\.pseudo_weight is 0: nothing to learn from"
    ):
        parse_params({"student": {"loss": "soft_ce", "pseudo_weight": 0}})
    assert parse_params({"student": {"loss": "dist", "loss_tau": 4, "dist_gamma": 2}}).student.dist_gamma == 2


def test_prefect_timeouts_name_real_stages():
    p = parse_params({"prefect": {"timeout_s": 60, "timeouts_s": {"train-mpl": 7200}}})
    assert p.prefect.timeout("train-mpl") == 7200 and p.prefect.timeout("infer") == 60
    with pytest.raises(ParamsError, match=r"prefect\.timeouts_s.*unknown stage\(s\) \['train_mpl'\]"):
        parse_params({"prefect": {"timeouts_s": {"train_mpl": 7200}}})
    with pytest.raises(ParamsError, match=r"prefect\.retries"):
        parse_params({"prefect": {"retries": -1}})


def test_kubernetes_resources_name_real_stages_and_quantities():
    p = parse_params({"resources": {"infer": {"gpu": 1, "memory": "16Gi", "cpu": "500m", "parallelism": 4}}})
    assert p.resources["infer"].memory == "16Gi" and not p.kubernetes.enabled
    with pytest.raises(ParamsError, match=r"resources: unknown stage\(s\) \['train_student'\]"):
        parse_params({"resources": {"train_student": {"gpu": 1}}})
    with pytest.raises(ParamsError, match=r"resources\.infer\.memory: '16 GB' is not a Kubernetes quantity"):
        parse_params({"resources": {"infer": {"memory": "16 GB"}}})
    for zero in ("0", "0m", "0.0"):  # the pod's OMP_NUM_THREADS is its CPU request rounded up: 0 threads
        with pytest.raises(ParamsError, match=rf"resources\.infer\.cpu: '{zero}' requests nothing"):
            parse_params({"resources": {"infer": {"cpu": zero}}})
    assert parse_params({"resources": {"infer": {"cpu": "1m"}}}).resources["infer"].cpu == "1m"
    with pytest.raises(ParamsError, match=r"resources\.infer\.gpu"):
        parse_params({"resources": {"infer": {"gpu": -1}}})
    with pytest.raises(ParamsError, match=r"infer\.parts"):
        parse_params({"infer": {"parts": 0}})


def test_stages_that_build_no_model_start_without_timm():
    """The CLI skips the model check for MODEL_FREE stages; it may only because their modules never import timm."""
    code = (
        "from selftrain.stages import MODEL_FREE, STAGES; from selftrain.cli import build_parser; "
        "[STAGES[s] for s in MODEL_FREE]; [build_parser(s) for s in [*MODEL_FREE, 'summary']]"
    )
    assert _imported(code, ("timm", "torchvision", "selftrain.models")) == []


def test_a_key_given_twice_is_an_error_naming_it(tmp_path):
    """PyYAML keeps the last `seed:` silently while `dvc repro` refuses the file: the CLI and the flow must refuse it
    too."""
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ndata:\n  image_size: 28\nseed: 1\n")
    with pytest.raises(ParamsError, match=r"key 'seed' appears twice in one mapping \(first on line 1\)(?s:.*)line 4"):
        load_params(path)
    path.write_text("teacher:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ParamsError, match="key 'epochs' appears twice"):
        load_params(path)
    # a merge key may still be overridden: that is what it is for
    assert parse_yaml("t: {<<: {epochs: 3, lr: 0.01}, epochs: 4}\n", "x") == {"t": {"epochs": 4, "lr": 0.01}}


def test_an_alias_bomb_gets_a_short_error(tmp_path):
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 9)]
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(levels) + "\nseed: *a8\n")  # 9**9 = 387 M strings once expanded
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert "aliases expand to over 100,000 values" in str(err.value) and len(str(err.value)) < 300
    # a large value that does load is quoted short in the error, never whole
    path.write_text(f"seed: [{', '.join(['1'] * 5000)}]\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert "seed: Input should be a valid integer" in str(err.value) and len(str(err.value)) < 300


def test_a_methods_options_at_the_top_level_are_pointed_to_methods():
    with pytest.raises(
        ParamsError, match=r"mpl: a method's options now live under methods.<name> \(e.g. methods.mpl.steps\)"
    ):
        parse_params({"mpl": {"steps": 10}})
    assert parse_params({"methods": {"mpl": {"steps": 10}}}).methods.mpl.steps == 10
    with pytest.raises(ParamsError, match=r"methods.fixmatch.tua: unknown key"):
        parse_params({"methods": {"fixmatch": {"tua": 0.9}}})
