import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# One torch thread in the test process and everything it starts (stages, flows, torchrun; the fake cluster's pods
# get theirs from their CPU request). The suite runs servers, stages and pods side by side, and on 2 cores a torch
# process of two threads beside one busy process ran a training step 3-4x slower than alone, one thread not at all
# (docs/experiments/log.md, "Threads"). The bitwise comparisons between runners also need one thread count. Set before
# torch
# is imported.
os.environ["OMP_NUM_THREADS"] = "1"
if "torch" in sys.modules:  # a plugin imported it first
    sys.modules["torch"].set_num_threads(1)
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one pytest-xdist worker per core
    # Each worker's temporary Prefect server gets a database of its own: two servers on one SQLite file lock it.
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"prefect-{os.environ['PYTEST_XDIST_WORKER']}-")

# The modules that take longest, first: `--dist loadfile --no-loadscope-reorder` hands out whole modules in this
# order, so the workers finish together rather than one starting the slowest module when the other is nearly done.
SLOWEST_FIRST = (
    "test_pipeline.py",
    "test_k8s_runner.py",
    "test_distributed.py",
    "test_mpl.py",
    "test_generation_stages.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order within a module kept


# Small enough for a 2-core CI machine, large enough that every stage does real work.
TINY = {
    "seed": 3,
    "data": {"labeled_per_class": 10, "val_per_class": 10, "unlabeled": 400, "test": 200, "holdout": 300},
    "teacher": {"epochs": 3, "batch_size": 20},
    "pseudo_labels": {"threshold": 0.0},
    "student": {
        "epochs": 1,
        "batch_size": 20,
        "unlabeled_ratio": 2,
        "init": "scratch",
    },  # scratch: the test grows gen2 to resnet14t
    # three generations so "generation 2 onwards" has an onwards, one per method the pipeline picks a stage
    # for; always promote, so the chain never stops
    "generations": {
        f"gen{k}": {"model": "resnet10t", "teacher": f"gen{k - 1}", "method": method}
        for k, method in ((1, "noisy_student"), (2, "mpl"), (3, "reduced_mpl"))
    },
    "methods": {
        "mpl": {
            "steps": 20,
            "batch_size": 10,
            "unlabeled_ratio": 2,
            "uda_ramp_steps": 10,
            "finetune_epochs": 1,
            "checkpoint_every": 10,
        },
        "fixmatch": {"steps": 10, "batch_size": 20, "unlabeled_ratio": 2, "checkpoint_every": 5},
    },
    "twomoons": {"seeds": [0], "steps": 100},
    "robustness": {"corruption_images": 40, "perturbation_images": 8, "hard_images": 30},
    "promote": {"rules": [{"metric": "val_top1", "min_gain": -1.0}]},
}


def write_tiny_params(path: Path) -> Path:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        if section == "methods":
            for name, options in values.items():
                base[section][name].update(options)
        elif isinstance(values, dict) and section != "generations":
            base[section].update(values)
        else:
            base[section] = values
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


# A cold temporary Prefect server (fresh database) can take over 20 s to start on 2 busy cores;
# telemetry would only fail without a network.
PREFECT_ENV = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this venv's tools first on PATH."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **PREFECT_ENV, **extra)
    return env


def run(cmd: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(**extra), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def write_image(path: Path, value: int, size: int = 12, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size) if mode == "L" else (size, size, 3), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """A valid user data layout: two classes, labeled/val/test trees and a nested unlabeled folder."""
    root = tmp_path / "images"
    for split, n, offset in (("labeled", 3, 0), ("val", 2, 10), ("test", 2, 20)):
        for cls, value in (("cat", 30), ("dog", 200)):
            for i in range(n):
                write_image(root / split / cls / f"{i}.png", value + offset + i)  # no image in two splits
    for i in range(4):
        write_image(root / "unlabeled" / ("sub" if i % 2 else "") / f"u{i}.jpg", 100 + i, size=20, mode="RGB")
    return root


def copy_project(dest: Path) -> None:
    """The files a DVC pipeline run needs, as a fresh clone would have them."""
    shutil.copytree(ROOT / "selftrain", dest / "selftrain", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)


# Credentials of the loopback S3 server: they reach s3fs and DVC through the standard AWS environment only,
# and no file the project writes may contain them (tests grep for the secret).
S3_SECRET = "selftrain-test-secret-5f0c2e"
S3_BUCKET = "selftrain"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible endpoint on loopback (moto's server, its writes committed as S3 commits them:
    tests/moto_s3.py), a bucket in it, and the AWS environment that reaches it; yields that environment (a dict)
    after setting it in os.environ for this process too."""
    import time
    import urllib.request

    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "moto_s3.py"), str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
    env = {
        "AWS_ACCESS_KEY_ID": "selftrain-test-key",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec
    import s3fs

    fsspec.config.conf.pop("s3", None)
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(S3_BUCKET)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3fs.S3FileSystem.clear_instance_cache()
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A `prefect server start` of its own on loopback (own PREFECT_HOME, so its own SQLite database), as `make
    server` runs it; yields the environment of its CLI (PREFECT_HOME, PREFECT_API_URL), also set for this process."""
    import time
    import urllib.request

    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=tool_env(**env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}"
                    ) from None
                time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: url}):
            yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def deployed(prefect_server):
    """The README's set-up on that server: both work pools, then `prefect deploy --all` from the project root."""
    run(["prefect", "work-pool", "create", "process", "--type", "process"], ROOT, **prefect_server)
    run(
        [
            "prefect",
            "work-pool",
            "create",
            "kubernetes",
            "--type",
            "kubernetes",
            "--base-job-template",
            "k8s/base-job-template.json",
        ],
        ROOT,
        **prefect_server,
    )
    run(["prefect", "--no-prompt", "deploy", "--all"], ROOT, **prefect_server)
    return prefect_server


@pytest.fixture
def one_try_s3(s3_server, monkeypatch):
    """The loopback S3 endpoint, with s3fs and botocore making one try per request (fault_proxy.ONE_TRY), so that a
    request failed on purpose reaches selftrain's code; point AWS_ENDPOINT_URL at a FaultProxy and clear s3fs's
    instance cache to go through it."""
    import fsspec
    import s3fs
    from fault_proxy import ONE_TRY

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    monkeypatch.setitem(fsspec.config.conf, "s3", ONE_TRY)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()


def pytest_sessionfinish(session, exitstatus):
    """Stop Prefect's temporary server while pytest's captured stderr is still open.

    Prefect stops it in an atexit hook that logs "Stopping temporary server" through its console handler,
    whose stream is pytest's capture file by then closed (a "Logging error ... I/O operation on closed
    file" traceback after every run); and its log worker would then send the last lines to a stopped server
    ("Error logging to API"). Prefect keeps its servers in a private registry; nothing public lists them."""
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    APILogWorker.drain_all(timeout=5)  # the runs' last log lines, while their server still answers
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
