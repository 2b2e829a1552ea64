"""The project's image, built (`make image`) and run as the cluster would run it: opt-in, `pytest -m image`.

Building the image takes minutes the first time (torch and its NVIDIA libraries: about 6 GB) and needs
buildah (`apt-get install buildah debootstrap`) or a docker daemon, so these tests are not in the default
suite. SELFTRAIN_TEST_IMAGE names an image already built; otherwise the cuda variant is built (the cpu
variant needs PyTorch's own index, which these machines do not reach; the cuda one runs on CPU too).

Each container runs through the fake cluster's `ImageRuntime`: the image's root filesystem, read-only,
as its non-root user, with no capabilities and no privilege escalation, as the pods the runner makes."""

import json
import os
import subprocess

import pytest
import yaml
from fake_cluster import FakeCluster, ImageRuntime, image_config
from test_k8s_runner import _pod_s3

from conftest import ROOT, S3_BUCKET, write_image, write_tiny_params
from flows.self_training import self_training
from selftrain import artifacts
from selftrain.layout import Generation
from selftrain.params import load_params
from tasks.job_manifests import job_manifest, resources_for

pytestmark = [pytest.mark.image, pytest.mark.slow]


@pytest.fixture(scope="module")
def image() -> str:
    if os.environ.get("SELFTRAIN_TEST_IMAGE"):
        return os.environ["SELFTRAIN_TEST_IMAGE"]
    tag = "localhost/selftrain:cuda"
    proc = subprocess.run(
        ["scripts/image.sh"],
        cwd=ROOT,
        env={**os.environ, "VARIANT": "cuda", "TAG": tag},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"make image VARIANT=cuda failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return tag


@pytest.fixture(scope="module")
def runtime(image):
    rt = ImageRuntime(image)
    yield rt
    rt.close()


def run_in_pod(
    runtime: ImageRuntime, tmp_path, argv: list[str], mounts: dict[str, tuple[str, bool]], *, docker_run: bool = False
) -> subprocess.CompletedProcess:
    """`argv` in the container of a runner's pod (its security context and volumes), plus host folders. With
    `docker_run`, as plain `docker run --user 10001` runs it instead: no emptyDir over /tmp, a writable root."""
    params = load_params(ROOT / "params.yaml", {"kubernetes.enabled": True, "resources": {"prepare": {}}})
    spec = job_manifest(params, "prepare", "smoke", argv[1:], resources_for(params, "prepare"))["spec"]["template"][
        "spec"
    ]
    container = spec["containers"][0]
    container["command"] = argv[:1]
    if docker_run:
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] != "/tmp"]
        container["securityContext"] = {**container["securityContext"], "readOnlyRootFilesystem": False}
    for name, (path, read_only) in mounts.items():
        spec["volumes"].append({"name": name, "hostPath": {"path": str(path)}})
        container["volumeMounts"].append({"name": name, "mountPath": f"/data/{name}", "readOnly": read_only})
    cmd = runtime.command(spec, container, [*container["command"], *container["args"]], {}, tmp_path / "pod")
    return subprocess.run(cmd, capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def test_the_image_runs_the_cli_the_flow_and_a_stage_as_its_user_on_a_read_only_root(runtime, tmp_path):
    folders = tmp_path / "in"
    for s, (split, n) in enumerate((("labeled", 4), ("val", 3), ("test", 3))):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(n):
                write_image(folders / split / cls / f"{i}.png", 40 + 150 * c + 10 * s + i)  # no image in two splits
    for i in range(6):
        write_image(folders / "unlabeled" / f"u{i}.png", 30 * i + 5)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {
        "source": "folders",
        "folders": {s: f"/data/in/{s}" for s in ("labeled", "unlabeled", "val", "test")},
        "image_size": 16,
    }
    (folders / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    mounts = {"in": (folders, True), "out": (out, False)}

    proc = run_in_pod(
        runtime,
        tmp_path,
        [
            "sh",
            "-c",
            "id -u; touch /app/x; selftrain --help >/dev/null && python -c 'import flows.self_training' && echo ok",
        ],
        mounts,
    )
    lines = proc.stdout.split()
    assert lines[0] == "10001" and lines[-1] == "ok", proc.stdout + proc.stderr
    assert "Read-only file system" in proc.stderr

    proc = run_in_pod(
        runtime,
        tmp_path,
        ["selftrain", "prepare", "--params", "/data/in/params.yaml", "--out", "/data/out/data"],
        mounts,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "data" / "MANIFEST.json").read_text())
    assert (out / "data").stat().st_uid == 10001
    assert set(manifest["files"]) >= {"labeled.npz", "unlabeled.npz", "val.npz", "test.npz"}
    summary = json.loads((out / "data" / "summary.json").read_text())
    assert summary["classes"] == ["cat", "dog"] and summary["sizes"]["unlabeled"] == 6


def test_the_image_leaves_nothing_in_tmp_and_runs_as_its_user_without_an_emptydir(runtime, tmp_path):
    """The build's smoke check ran as root with PREFECT_HOME under /tmp and left /tmp/prefect (mode 700, root's) in the
    image: as uid 10001 with no volume over /tmp, importing the flow failed with PermissionError on profiles.toml."""
    assert os.listdir(os.path.join(runtime.rootfs, "tmp")) == []
    proc = run_in_pod(
        runtime,
        tmp_path,
        ["sh", "-c", "id -u; selftrain --help >/dev/null && python -c 'import flows.self_training' && echo ok"],
        {},
        docker_run=True,
    )
    lines = proc.stdout.split()
    assert proc.returncode == 0 and lines[0] == "10001" and lines[-1] == "ok", proc.stdout + proc.stderr


def test_one_generation_runs_as_jobs_in_the_image_with_the_in_process_flows_metrics(
    image, tmp_path, s3_server, monkeypatch
):
    cluster = FakeCluster(tmp_path / "cluster", image=image)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    path = str(write_tiny_params(tmp_path / "params.yaml"))
    small = {"memory": "2Gi", "cpu": "1"}
    overrides = {
        "kubernetes.enabled": True,
        "kubernetes.image": image,
        "kubernetes.poll_s": 0.5,
        "kubernetes.priority_class": None,
        **_pod_s3(cluster, s3_server, s3_server["AWS_ENDPOINT_URL"]),
        "resources": {s: small for s in ("train-teacher", "infer", "train-student", "evaluate", "record-lineage")}
        | {"infer": {**small, "parallelism": 2}},
        "infer.parts": 2,
        "prefect.cache": False,
    }
    root = f"s3://{S3_BUCKET}/image-generation"
    try:
        in_pods = self_training(path, root, generations=1, overrides=overrides)
        ran = {p["metadata"]["labels"]["selftrain.io/stage"] for p in cluster.pods()}
    finally:
        cluster.close()
    here = self_training(path, str(tmp_path / "here"), generations=1, overrides={"prefect.cache": False})
    assert ran == {"train-teacher", "infer", "train-student", "evaluate", "record-lineage"}
    assert in_pods["table"] == here["table"]
    # the same figures and the same models bitwise (checkpoint_sha256): the image's torch is the one the venv
    # here pins; only the checkpoints' locations differ (json: a tiny run's NaN figures compare equal as text)
    figures = [
        json.dumps(_without("checkpoint", artifacts.read_json(Generation(r, "gen1").metrics)), sort_keys=True)
        for r in (root, str(tmp_path / "here"))
    ]
    assert figures[0] == figures[1] and '"checkpoint_sha256"' in figures[0]
    [expected] = [e.split("=", 1)[1] for e in image_config(image)["Env"] if e.startswith("SELFTRAIN_GIT_COMMIT=")]
    assert artifacts.read_json(Generation(root, "gen1").lineage)["git"]["commit"] == expected


def _without(key: str, obj):
    if isinstance(obj, dict):
        return {k: _without(key, v) for k, v in obj.items() if k != key}
    return [_without(key, v) for v in obj] if isinstance(obj, list) else obj
