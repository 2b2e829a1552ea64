"""train-mpl on tiny real data: kill -9 mid-training, restart, and it resumes from its last checkpoint to the
same result as an uninterrupted run; a checkpoint of another run is not resumed."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tool_env, write_tiny_params
from selftrain import stages
from selftrain.mpl import MplState
from selftrain.mpl_train import _load_resume, _save_resume
from selftrain.params import load_params

STEPS, EVERY = 30, 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("mpl")
    params_path = write_tiny_params(root / "params.yaml")
    params = load_params(params_path, {"mpl.steps": STEPS, "mpl.checkpoint_every": EVERY})
    stages.prepare(params, out=str(root / "data"))
    stages.train_teacher(params, data=str(root / "data"), out=str(root / "teacher"), promoted=str(root / "gen0.json"))
    args = ["--params", str(params_path), "--set", f"mpl.steps={STEPS}", "--set", f"mpl.checkpoint_every={EVERY}",
            "--generation", "gen2", "--data", str(root / "data"), "--teacher", str(root / "gen0.json")]
    return root, args


def _train_mpl(args: list[str], out: Path, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "selftrain.cli", "train-mpl", *args, "--out", str(out)]
    return subprocess.Popen(cmd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _finish(proc: subprocess.Popen) -> tuple[dict, str]:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout), stderr


def _checkpoint_step(path: Path) -> int | None:
    try:
        return torch.load(io.BytesIO(path.read_bytes()), weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


@pytest.mark.slow
def test_kill_9_mid_training_then_restart_resumes_from_the_last_checkpoint_to_the_same_result(setup):
    root, args = setup
    whole, _ = _finish(_train_mpl(args, root / "whole"))
    assert whole["resumed_from_step"] == 0

    out = root / "killed"
    resume = Path(f"{out}.resume")
    proc = _train_mpl(args, out)
    step = None
    while proc.poll() is None:
        step = _checkpoint_step(resume)
        if step is not None:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before its first checkpoint: nothing was killed"
    assert not out.exists()  # nothing half-written where the output goes
    last = _checkpoint_step(resume)  # at most one checkpoint may have landed between reading and the kill

    resumed, stderr = _finish(_train_mpl(args, out))
    assert resumed["resumed_from_step"] == last and EVERY <= last < STEPS
    assert f"resuming from the checkpoint at step {last} of {STEPS}" in stderr
    for name in ("model.safetensors", "mpl_teacher.safetensors"):  # both models, bitwise (CPU, same seed)
        assert (out / name).read_bytes() == (root / "whole" / name).read_bytes(), name
    assert [r.split(",")[0] for r in (out / "mpl_log.csv").read_text().splitlines()] == ["step", "10", "20", "30"]
    assert not resume.exists()


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
