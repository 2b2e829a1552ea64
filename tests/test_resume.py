"""Resumable training: a resume file of another run is not resumed; the augmentations' random state survives a
round trip; train-student killed with SIGKILL mid-run and started again in a new process resumes from its last
checkpoint (by step count) and ends bitwise where an uninterrupted run ends (CPU, same seed)."""

import csv
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
from fault_proxy import FaultProxy, first

from conftest import S3_BUCKET, tool_env, write_tiny_params
from selftrain import artifacts, failures, noise, resume, stages
from selftrain.layout import Generation
from selftrain.params import load_params

# a noised student with an EMA: every piece of state a resume must carry (data order, RandAugment, flips and
# crops, dropout, stochastic depth, optimiser, schedule, EMA, the epoch's running sums)
STUDENT = {"teacher.epochs": 1, "student.epochs": 3, "student.ema_decay": 0.9, "runtime.checkpoint_every": 5}


def test_a_resume_file_of_another_run_is_not_resumed_and_one_that_does_not_load_fails_the_stage(tmp_path):
    uri = str(tmp_path / "resume")
    assert resume.load(uri, "run-a", "test") is None  # none yet: start afresh
    net = torch.nn.Linear(3, 2)
    resume.save(uri, "run-a", 7, {"model": net.state_dict(), "log": [{"step": 7}], "baseline": 0.25})
    blob = resume.load(uri, "run-a", "test")
    assert blob["step"] == 7 and blob["baseline"] == 0.25 and torch.equal(blob["model"]["weight"], net.weight)
    assert resume.load(uri, "run-b", "test") is None  # other params or inputs: start afresh
    (tmp_path / "resume").write_bytes(b"damaged")
    with pytest.raises(
        artifacts.ArtifactError, match="checkpoint '.*resume' is there but does not load .* delete it to start"
    ):
        resume.load(uri, "run-a", "test")
    assert (tmp_path / "resume").read_bytes() == b"damaged"  # left for the user to restore or delete


@pytest.fixture
def one_try_s3(one_try_s3, monkeypatch):
    monkeypatch.setattr(resume, "READ_BACKOFF_S", 0.05)
    return one_try_s3


def test_a_checkpoint_that_cannot_be_read_for_a_moment_is_read_again_and_never_thrown_away(
    one_try_s3, monkeypatch, caplog
):
    import s3fs

    uri = f"s3://{S3_BUCKET}/resume-faults/student.resume"
    resume.save(uri, "run-a", 40, {"log": [{"step": 40}]})
    saved = artifacts.read_bytes(uri)
    for action in ("drop", "stall", "500"):  # ConnectionClosedError, ReadTimeoutError, OSError(EREMOTEIO)
        with FaultProxy(
            one_try_s3["AWS_ENDPOINT_URL"], first(2, action, "GET", "/resume-faults/"), stall_s=2.5
        ) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            s3fs.S3FileSystem.clear_instance_cache()
            assert resume.load(uri, "run-a", "test")["step"] == 40, action  # read again after the failed tries
            assert [f[0] for f in proxy.faults] == [action] * 2
        # a store that keeps failing: the error is raised (the stage exits 75 and is retried), never "start from step 0"
        with FaultProxy(
            one_try_s3["AWS_ENDPOINT_URL"], first(99, action, "GET", "/resume-faults/"), stall_s=2.5
        ) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            s3fs.S3FileSystem.clear_instance_cache()
            caplog.clear()
            with pytest.raises(Exception) as failed:
                resume.load(uri, "run-a", "test")
            assert failures.is_transient(failed.value), repr(failed.value)
            assert caplog.text.count("could not read the test checkpoint") == resume.READ_ATTEMPTS - 1
    monkeypatch.setenv("AWS_ENDPOINT_URL", one_try_s3["AWS_ENDPOINT_URL"])
    s3fs.S3FileSystem.clear_instance_cache()
    assert artifacts.read_bytes(uri) == saved


def test_the_augmentations_random_state_round_trips(tmp_path):
    noise.seed_augmentation(5)
    noise._AUGMENT_RNG.random()
    resume.save(str(tmp_path / "r"), "x", 1, {})  # through torch.save / weights_only load
    first = (noise._AUGMENT_RNG.random(), noise._OP_CHOICE_RNG.integers(1 << 30), torch.rand(1).item())
    resume.set_rng_state(resume.load(str(tmp_path / "r"), "x", "test"))
    assert (noise._AUGMENT_RNG.random(), noise._OP_CHOICE_RNG.integers(1 << 30), torch.rand(1).item()) == first


@pytest.fixture(scope="module")
def student_inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    path = write_tiny_params(tmp / "params.yaml")
    params = load_params(path, STUDENT)
    g, g1 = Generation(str(tmp / "run"), "gen0"), Generation(str(tmp / "run"), "gen1")
    stages.prepare.run(params, out=g.data)
    stages.train_teacher.run(params, data=g.data, out=g.teacher, promoted=g.promoted)
    stages.infer.run(params, teacher=g.promoted, data=g.data, out=g1.logits)
    stages.filter_balance.run(params, logits_store=g1.logits, data=g.data, out=g1.pseudo)
    args = [
        "--params",
        str(path),
        *[a for k, v in STUDENT.items() for a in ("--set", f"{k}={v}")],
        "--generation",
        "gen1",
        "--data",
        g.data,
        "--teacher",
        g.promoted,
        "--pseudo",
        g1.pseudo,
    ]
    return tmp, params, g, g1, args


def _checkpoint_step(path: Path) -> int | None:
    try:
        return torch.load(io.BytesIO(path.read_bytes()), weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def _train_student(args: list[str], out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "selftrain.cli", "train-student", *args, "--out", str(out)]
    return subprocess.Popen(
        cmd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


@pytest.mark.slow
def test_train_student_killed_mid_run_resumes_in_a_new_process_to_the_uninterrupted_result(student_inputs):
    tmp, params, g, g1, args = student_inputs
    whole = tmp / "whole"
    summary = stages.train_student.run(
        params, generation="gen1", data=g.data, teacher=g.promoted, pseudo=g1.pseudo, out=str(whole)
    )
    assert summary["resumed_from_step"] == 0 and not Path(f"{whole}.resume").exists()

    out = tmp / "killed"
    state = Path(f"{out}.resume")
    proc = _train_student(args, out)
    while proc.poll() is None and (_checkpoint_step(state) or 0) < 10:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before its checkpoints: nothing was killed"
    assert not out.exists()  # nothing half-written where the output goes
    last = _checkpoint_step(state)

    proc = _train_student(args, out)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    resumed = json.loads(stdout)
    total = int(stderr.split("resuming from the checkpoint at step ")[1].split()[2])
    assert resumed["resumed_from_step"] == last and 10 <= last < total, (last, total)
    assert (out / "model.safetensors").read_bytes() == (
        whole / "model.safetensors"
    ).read_bytes()  # the EMA kept, bitwise

    def cols(p):  # all but speed and val
        return [
            {k: v for k, v in r.items() if k not in ("images_per_s", "steps_per_s", "val_top1")}
            for r in csv.DictReader((p / "log.csv").open())
        ]

    assert cols(out) == cols(whole) and resumed["val_top1"] == summary["val_top1"]
    assert not state.exists()
