"""Data-parallel training under torchrun: each process gets a disjoint share of the very batches one process
would take, and two CPU processes (Gloo) train the teacher about as well as one, rank 0 alone writing."""
import subprocess
from pathlib import Path

import pytest

from conftest import tool_env, write_tiny_params
from selftrain import artifacts, stages
from selftrain.distributed import World
from selftrain.params import load_params
from selftrain.train import StepBatches


def test_each_process_takes_a_disjoint_share_of_the_single_process_batch():
    one = iter(StepBatches(103, 20, seed=4, stream=0, start=7))
    shares = [iter(StepBatches(103, 20, seed=4, stream=0, start=7, world=World(rank, 3))) for rank in range(3)]
    for _ in range(12):  # across a pass boundary (5 batches per pass)
        batch, parts = next(one), [next(s) for s in shares]
        assert sorted(sum(parts, [])) == sorted(batch) and len(set(sum(parts, []))) == len(batch)
        assert [len(p) for p in parts] == [7, 7, 6]


@pytest.mark.slow
def test_torchrun_with_two_processes_trains_the_teacher_like_one(tmp_path):
    path = write_tiny_params(tmp_path / "params.yaml")
    params = load_params(path, {"teacher.epochs": 10})
    stages.prepare(params, out=str(tmp_path / "data"))
    one = stages.train_teacher(params, data=str(tmp_path / "data"), out=str(tmp_path / "one"), promoted=str(tmp_path / "one.json"))
    proc = subprocess.run(
        ["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "selftrain.cli", "train-teacher", "--params", str(path),
         "--set", "teacher.epochs=10", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "two"), "--promoted", str(tmp_path / "two.json")],
        cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"checkpoint"') == 2  # both processes trained and finished
    two = artifacts.read_json(str(tmp_path / "two.json"))
    assert two["sha256"] == artifacts.content_hash(str(tmp_path / "two" / "model.safetensors"))
    rows = (tmp_path / "two" / "log.csv").read_text().splitlines()
    assert len(rows) == 11 and not Path(f"{tmp_path / 'two'}.resume").exists()
    val_two = float(rows[-1].split(",")[-1])
    assert val_two > 0.4 and abs(val_two - one["val_top1"]) <= 0.15, (val_two, one["val_top1"])
