"""`selftrain plan`: image passes per stage from params, GPU-hours from throughputs, wall time over a pool."""

import json

import pytest

from selftrain import plan
from selftrain.cli import main
from selftrain.params import parse_params

PARAMS = {
    "data": {"labeled_per_class": 10, "val_per_class": 5, "unlabeled": 1000, "test": 200, "holdout": 100},
    "teacher": {"epochs": 4, "val_every": 2},
    "student": {"epochs": 2, "unlabeled_ratio": 4},
    "generations": {
        "gen1": {"model": "resnet10t", "teacher": "gen0"},
        "gen2": {"model": "resnet14t", "teacher": "gen1", "method": "mpl"},
    },
    "methods": {"mpl": {"steps": 100, "batch_size": 8, "unlabeled_ratio": 2, "finetune_epochs": 1}},
    "robustness": {"corruption_images": 10, "perturbation_images": 2, "frames": 10, "hard_images": 5},
}
RATES = {
    "device": "test-gpu",
    "models": {
        "resnet10t": {"train_img_s": 1000.0, "infer_img_s": 4000.0},
        "resnet14t": {"train_img_s": 500.0, "infer_img_s": 2000.0},
    },
}


def test_image_passes_follow_the_params():
    w = {s.stage: s for s in plan.work(parse_params(PARAMS))}
    assert (w["train-teacher"].train_images, w["train-teacher"].infer_images) == (
        4 * 100,
        2 * 50,
    )  # val at epochs 2 and 4
    assert w["infer@gen1"].infer_images == 1000 and w["infer@gen1"].sharded and w["infer@gen2"].model == "resnet10t"
    assert w["train-student@gen1"].train_images == 2 * (1000 + 1000 // 4)
    # MPL: student (1 + r) and teacher (1 + 2r) passes of batch images per step, then the finetune on labeled data
    assert w["train-student@gen2"].train_images == 100 * 8 * ((1 + 2) + (1 + 4)) + 1 * 100
    assert w["evaluate@gen2"].infer_images == 2 * (50 + 200 + 10 * 76 + 2 * 10 * 9 + 5)


def test_gpu_hours_from_throughputs_and_only_infer_spreads_over_the_pool():
    rows = {r["stage"]: r for r in plan.plan(parse_params(PARAMS), RATES, nodes=4, gpus_per_node=2)}
    assert rows["train-student@gen2"]["gpu_hours"] == pytest.approx((100 * 8 * 8 + 100) / 500 / 3600)
    assert (
        rows["infer@gen1"]["wall_hours"] == pytest.approx(rows["infer@gen1"]["gpu_hours"] / 8)
        and rows["infer@gen1"]["gpus"] == 8
    )
    assert rows["train-teacher"]["wall_hours"] == rows["train-teacher"]["gpu_hours"]
    with pytest.raises(ValueError, match="no throughput for model 'resnet14t'"):
        plan.plan(parse_params(PARAMS), {"models": {"resnet10t": RATES["models"]["resnet10t"]}}, 1, 1)


def test_cli_prints_the_plan_from_a_throughput_file_or_a_probe(tmp_path, monkeypatch, capsys):
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (tmp_path / "rates.json").write_text(json.dumps(RATES))
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--throughput", "rates.json", "--nodes", "2", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert (
        "2 node(s) x 4 GPU(s), throughputs from test-gpu" in out
        and "| infer@gen1 | resnet10t | 1,000 |" in out
        and "| **total** |" in out
    )
    measured = plan.probe(
        {"resnet10t"}, parse_params(PARAMS), steps=1, batch=8
    )  # real training and inference steps here
    assert measured["models"]["resnet10t"]["train_img_s"] > 0 and measured["models"]["resnet10t"]["infer_img_s"] > 0
    assert main(["plan", "--throughput", "rates.json", "--nodes", "0"]) == 2
    assert "--nodes and --gpus-per-node must be at least 1" in capsys.readouterr().err
