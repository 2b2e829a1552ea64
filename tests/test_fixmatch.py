"""FixMatch's step on tiny real data: its views (weak = flip + crop; strong = RandAugment, flip + crop, Cutout), the
mask in the log, the threshold rule's and the alignment's state carried through a resume, and the stage's refusals."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_params
from selftrain import distributed, noise, stages
from selftrain.data import load_split
from selftrain.methods.fixmatch import thresholds
from selftrain.methods.fixmatch.step import FixMatchStep
from selftrain.params import load_params
from selftrain.steps import views


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fixmatch")
    stages.prepare.run(load_params(write_tiny_params(root / "params.yaml")), out=str(root / "data"))
    return root


def params(root: Path, **overrides):
    return load_params(root / "params.yaml", {"generations.gen1.method": "fixmatch", **overrides})


def test_cutout_blanks_one_square_per_image_from_its_generator():
    x = torch.ones(64, 1, 28, 28)
    out = noise.cutout(x, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(
        out, noise.cutout(x, 0.5, torch.Generator().manual_seed(0))
    )  # the step's generator, nothing global
    for img in out[:, 0]:
        hole = (img == 0).nonzero()
        if len(hole):
            rows, cols = hole[:, 0], hole[:, 1]
            h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
            assert h * w == len(hole) and max(h, w) <= 14  # one filled rectangle (a square, clipped at the border)
    assert (out == 0).sum() > 0 and (out == 1).sum() > 0.75 * out.numel()


def test_the_weak_view_is_only_flipped_and_cropped_and_the_strong_view_is_more(tiny):
    p = params(tiny)
    labeled, unlabeled = load_split(str(tiny / "data"), "labeled"), load_split(str(tiny / "data"), "unlabeled")
    images = views.StepImages(labeled, unlabeled.images, 20, 2, p.student, seed=0, world=distributed.World())
    item = images[3]
    rows = item["rows_u"].numpy()
    assert len(rows) == 40 and np.array_equal(
        item["x_uw"].permute(0, 2, 3, 1).numpy(), unlabeled.images[rows]
    )  # no per-image noise
    assert not np.array_equal(item["x_us"].permute(0, 2, 3, 1).numpy(), unlabeled.images[rows])  # RandAugment
    _, _, x_uw, x_us = views.on_device(item, p.student, torch.device("cpu"), cutout_frac=0.5)
    gen = torch.Generator().manual_seed(item["flip_seed"])
    noise.train_batch(item["x_l"], "s1", gen)  # the labeled batch draws first from the step's generator
    assert torch.equal(x_uw, noise.train_batch(item["x_uw"], "s1", gen))


def test_fixmatch_trains_and_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny, monkeypatch):
    # FreeMatch's running means with a short memory and its fairness term, and alignment: the state must carry over
    p = params(
        tiny,
        **{
            "methods.fixmatch.threshold": "freematch",
            "methods.fixmatch.ema_p": 0.5,
            "methods.fixmatch.dist_align": True,
        },
    )
    data = str(tiny / "data")
    whole = stages.train_student.run(p, generation="gen1", data=data, teacher=None, out=str(tiny / "whole"))
    log = list(csv.DictReader((tiny / "whole/log.csv").open()))
    assert (
        [int(r["step"]) for r in log] == [5, 10] and whole["method"] == "fixmatch" and whole["threshold"] == "freematch"
    )
    assert all(0 <= float(r["mask_rate"]) <= 1 for r in log) and float(log[0]["loss_unlabeled"]) >= 0

    calls, real = [], FixMatchStep.__call__

    def dies_at_step_8(self, batch):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt  # a killed pod: the checkpoint at step 5 stays
        return real(self, batch)

    monkeypatch.setattr(FixMatchStep, "__call__", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        stages.train_student.run(p, generation="gen1", data=data, teacher=None, out=str(tiny / "resumed"))
    monkeypatch.setattr(FixMatchStep, "__call__", real)
    resumed = stages.train_student.run(p, generation="gen1", data=data, teacher=None, out=str(tiny / "resumed"))
    assert resumed["resumed_from_step"] == 5
    assert (tiny / "resumed/model.safetensors").read_bytes() == (tiny / "whole/model.safetensors").read_bytes()


def test_the_threshold_state_is_what_a_resume_restores(tiny):
    """FlexMatch's record of each image's confident class is in the step's state (a resume without it would restart
    the curriculum), and the EMA of alignment with it."""
    p = params(tiny, **{"methods.fixmatch.threshold": "flexmatch", "methods.fixmatch.dist_align": True})
    labeled, unlabeled = load_split(str(tiny / "data"), "labeled"), load_split(str(tiny / "data"), "unlabeled")
    from selftrain.models import ModelSpec, create
    from selftrain.train import Context

    net = create(ModelSpec("resnet10t", 10, 1, 28, labeled.classes), 0.0, 0.0)
    step = FixMatchStep(net, p.methods.fixmatch, p.student, labeled, unlabeled.images, Context(torch.device("cpu")), 0)
    step.labeller.rule.selected[:3] = torch.tensor([4, 4, 1])
    step.labeller.align.p_model = torch.full((10,), 0.1)
    state = json.loads(json.dumps({k: v.tolist() for k, v in step.state_dict()["threshold"].items()}))
    assert state["selected"][:4] == [4, 4, 1, -1]
    fresh = FixMatchStep(net, p.methods.fixmatch, p.student, labeled, unlabeled.images, Context(torch.device("cpu")), 0)
    fresh.load_state_dict(step.state_dict())
    assert torch.equal(fresh.labeller.rule.selected, step.labeller.rule.selected) and torch.equal(
        fresh.labeller.align.p_model, step.labeller.align.p_model
    )


def _run_steps(tiny: Path, n: int, **overrides) -> tuple[FixMatchStep, list[dict[str, float]]]:
    """`n` FixMatch steps of a fresh resnet10t (same seed, same init) under `overrides`; the step and its logs."""
    from selftrain.models import ModelSpec, create
    from selftrain.train import Context

    p = params(tiny, **overrides)
    labeled, unlabeled = load_split(str(tiny / "data"), "labeled"), load_split(str(tiny / "data"), "unlabeled")
    torch.manual_seed(0)
    net = create(ModelSpec("resnet10t", 10, 1, 28, labeled.classes), 0.0, 0.0)
    step = FixMatchStep(net, p.methods.fixmatch, p.student, labeled, unlabeled.images, Context(torch.device("cpu")), 0)
    batches = step.batches(0)
    return step, [step(next(batches)) for _ in range(n)]


def test_each_threshold_rule_is_the_one_the_step_trains_with(tiny):
    """`fixmatch.threshold` and `dist_align` reach the step: the rule in use, its state moving, FreeMatch's fairness
    term in the loss (at USB's weight 0.001), and a model that differs from the fixed rule's on the same seed."""
    assert params(tiny).methods.fixmatch.fairness_weight == 0.001  # USB's value in all its FreeMatch configs
    fixed, fixed_logs = _run_steps(tiny, 3)
    assert type(fixed.labeller.rule) is thresholds.FixedThreshold and fixed.labeller.align is None
    assert all(r["loss_fairness"] == 0 for r in fixed_logs)

    free, free_logs = _run_steps(
        tiny,
        3,
        **{
            "methods.fixmatch.threshold": "freematch",
            "methods.fixmatch.ema_p": 0.5,
            "methods.fixmatch.dist_align": True,
        },
    )
    rule = free.labeller.rule
    assert type(rule) is thresholds.FreeMatchThreshold and free.labeller.align is not None
    assert (
        rule.tau_t.item() != pytest.approx(0.1) and free.labeller.align.p_model is not None
    )  # both moved from their start
    assert all(r["loss_fairness"] != 0 for r in free_logs)
    # freematch's adaptive threshold (about tau_t, well under 0.95) lets far more images count than the fixed rule
    assert sum(r["mask_rate"] for r in free_logs) > sum(r["mask_rate"] for r in fixed_logs)
    weights = [dict(s.model.state_dict()) for s in (fixed, free)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    flex, _ = _run_steps(tiny, 3, **{"methods.fixmatch.threshold": "flexmatch"})
    assert type(flex.labeller.rule) is thresholds.FlexMatchThreshold


def _two_process_targets(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from selftrain.methods.fixmatch.thresholds import DistributionAlignment, FreeMatchThreshold, PseudoLabeller

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)

    def pickled(*args: object, **kwargs: object) -> None:  # every step's sync is a tensor collective, never pickles
        raise AssertionError("the threshold rule's state was synchronised through a pickled object collective")

    dist.all_gather_object = pickled
    dist.gather_object = pickled
    logits, rows = torch.randn(10, 3, generator=torch.Generator().manual_seed(0)), torch.arange(10)
    share = slice(rank, None, 2)  # StepImages' split of a step's batch: every world.size-th image
    rule, align = FreeMatchThreshold(3, momentum=0.5), DistributionAlignment(torch.ones(3), momentum=0.5)
    mine = PseudoLabeller(rule, align)(logits[share], rows[share], distributed.World(rank, 2))
    torch.save({"mine": mine, "tau": rule.tau_t, "p_model": align.p_model}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_under_two_processes_each_keeps_its_share_of_the_whole_batchs_targets_and_the_same_state(tmp_path):
    """The threshold rule and alignment see the whole step's batch in every process (gathered with tensor
    collectives, no pickling), as one process does."""
    from selftrain.methods.fixmatch.thresholds import DistributionAlignment, FreeMatchThreshold, pseudo_targets

    torch.multiprocessing.spawn(_two_process_targets, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    got = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in (0, 1)]
    logits, rows = torch.randn(10, 3, generator=torch.Generator().manual_seed(0)), torch.arange(10)
    order = torch.cat([torch.arange(0, 10, 2), torch.arange(1, 10, 2)])  # the gathered batch: rank 0's share, then 1's
    rule, align = FreeMatchThreshold(3, momentum=0.5), DistributionAlignment(torch.ones(3), momentum=0.5)
    one = pseudo_targets(logits[order], rows[order], rule, align)
    for rank, g in enumerate(got):
        assert all(torch.equal(a, b[5 * rank : 5 * rank + 5]) for a, b in zip(g["mine"], one))
        assert torch.equal(g["tau"], rule.tau_t) and torch.equal(g["p_model"], align.p_model)
