"""train-mpl on tiny real data: a checkpoint of another run is not resumed; distill and Noisy Student refuse
missing inputs. (Killed mid-training and resumed in a new process: test_k8s_runner's eviction test.)"""
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import write_tiny_params
from selftrain import stages
from selftrain.mpl import MplState
from selftrain.mpl_train import _load_resume, _save_resume
from selftrain.params import load_params

STEPS, EVERY = 30, 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, None]:
    root = tmp_path_factory.mktemp("mpl")
    params_path = write_tiny_params(root / "params.yaml")
    params = load_params(params_path, {"mpl.steps": STEPS, "mpl.checkpoint_every": EVERY})
    stages.prepare(params, out=str(root / "data"))
    stages.train_teacher(params, data=str(root / "data"), out=str(root / "teacher"), promoted=str(root / "gen0.json"))
    return root, None


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    uri = str(tmp_path / "resume")
    nets = {"student": nn.Linear(3, 2), "teacher": nn.Linear(3, 2)}
    opts = {f"{k}_opt": torch.optim.AdamW(m.parameters()) for k, m in nets.items()}
    _save_resume(uri, "run-a", 7, MplState(7, 0.25), nets, opts, [{"step": 7}])
    blob = _load_resume(uri, "run-a")
    assert blob["step"] == 7 and blob["baseline"] == 0.25 and torch.equal(blob["student"]["weight"], nets["student"].weight)
    assert _load_resume(uri, "run-b") is None  # other params, teacher or data: start afresh
    (tmp_path / "resume").write_bytes(b"torn")
    assert _load_resume(uri, "run-a") is None


def test_distill_needs_the_logit_store_and_noisy_student_the_pseudo_labels(setup):
    root, _ = setup
    params = load_params(root / "params.yaml", {"generations.gen1.method": "distill", "student.loss": "soft_ce"})
    with pytest.raises(ValueError, match="gen1 is method distill: give --logits-store"):
        stages.train_student(params, generation="gen1", data=str(root / "data"), teacher=str(root / "gen0.json"), out=str(root / "d"),
                             pseudo=str(root / "pseudo"))
    with pytest.raises(ValueError, match="gen2 is method mpl: give --pseudo"):
        stages.train_student(params, generation="gen2", data=str(root / "data"), teacher=str(root / "gen0.json"), out=str(root / "d"))
    assert not (root / "d").exists()
