"""A stage killed (SIGKILL) at any point while it writes leaves the previous output as it was, and no partial
output is ever visible where the output goes. (A pickled checkpoint is refused: test_artifacts.)"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, S3_BUCKET, tool_env, write_tiny_params
from selftrain import artifacts, logits, stages
from selftrain.layout import Generation
from selftrain.params import load_params


@pytest.mark.slow
def test_infer_killed_mid_write_leaves_the_previous_store_intact(tmp_path):
    path = write_tiny_params(tmp_path / "params.yaml")
    params = load_params(path, {"teacher.epochs": 1})
    g = Generation(str(tmp_path / "run"), "gen0")
    stages.prepare.run(params, out=g.data)
    stages.train_teacher.run(params, data=g.data, out=g.teacher, promoted=g.promoted)
    out = tmp_path / "logits"
    stages.infer.run(params, teacher=g.promoted, data=g.data, out=str(out))
    old = artifacts.content_hash(str(out))
    # the rewrite: another store (top-3, one row per shard file: many files to be caught writing)
    cmd = [
        "selftrain",
        "infer",
        "--params",
        str(path),
        "--set",
        "teacher.epochs=1",
        "--set",
        "infer.topk=3",
        "--set",
        "infer.shard_size=1",
        "--teacher",
        g.promoted,
        "--data",
        g.data,
        "--out",
        str(out),
    ]
    caught = 0
    for delay in (0.0, 0.1, 0.3, 0.6):
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        while proc.poll() is None and not any(p.name.startswith(".logits.tmp-") for p in tmp_path.iterdir()):
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            caught += 1
        proc.wait()
        # whatever the moment: the old store, complete, or (had it finished) the new one, complete; never a mix
        now = artifacts.content_hash(str(out))
        store = logits.read_store(str(out))
        assert now == old or (proc.returncode == 0 and store.header["k"] == 3)
        if proc.returncode != 0:
            assert now == old and store.header["k"] is None
    assert caught >= 2, "the writes finished before they could be interrupted"
    # the staging copies a kill leaves behind are hidden siblings, never the output; the next run lands and
    # removes them (their writers are dead), leaving a live writer's staging alone
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".logits.tmp-")]
    live = tmp_path / f".logits.tmp-{socket.gethostname()}-{os.getpid()}-0123456789ab"
    live.mkdir()
    subprocess.run(cmd, cwd=ROOT, env=tool_env(), check=True, capture_output=True)
    assert logits.read_store(str(out)).header["k"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".logits.")] == [live.name]


WRITER = """
import sys, time
from selftrain import artifacts
with artifacts.atomic_dir(sys.argv[1]) as staging:
    artifacts.write_bytes(artifacts.join(staging, "part.npy"), b"half of an artifact")
    print("staged", flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_mid_commit_on_s3_leaves_staging_that_a_later_write_removes(s3_server, monkeypatch):
    """S3 keeps no pid: staging in which nothing was written for STALE_STAGING_S is a dead writer's, and the next
    write of that artifact removes it; younger staging (a live writer's, maybe) is left alone."""
    import s3fs

    out = f"s3://{S3_BUCKET}/killed/data"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, out], env=tool_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fs = s3fs.S3FileSystem()
    left = [p for p in fs.ls(f"{S3_BUCKET}/killed", refresh=True) if p.rsplit("/", 1)[-1].startswith(".data.tmp-")]
    assert len(left) == 1
    with artifacts.atomic_dir(out) as staging:  # a day has not passed: it stays
        artifacts.write_bytes(artifacts.join(staging, "a.npy"), b"complete")
    assert left[0] in fs.ls(f"{S3_BUCKET}/killed", refresh=True)
    time.sleep(1.5)
    young = f"{S3_BUCKET}/killed/.data.tmp-0123456789ab"
    fs.pipe_file(f"{young}/x.npy", b"a writer at work")
    # a day, shortened: the killed writer's staging is older
    monkeypatch.setattr(artifacts.directories, "STALE_STAGING_S", 1.0)
    with artifacts.atomic_dir(out) as staging:
        artifacts.write_bytes(artifacts.join(staging, "a.npy"), b"complete again")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{S3_BUCKET}/killed", refresh=True))
    assert names == [".data.tmp-0123456789ab", "data"]
    assert artifacts.read_bytes(f"{out}/a.npy") == b"complete again"
