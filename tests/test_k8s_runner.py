"""Stages as Kubernetes Jobs, against a Kubernetes API on loopback (kmock) whose controllers run the pods here
(tests/fake_cluster.py): the Job a stage becomes, its failure reasons, cancel, eviction and resume, and
sharded inference as an Indexed Job."""

import csv
import io
import json
import logging
import threading
import time
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
import torch
from fake_cluster import NAMESPACE, FakeCluster
from fault_proxy import ONE_TRY, FaultProxy, first
from kubernetes.client import ApiException
from prefect import flow, get_client
from prefect.states import Cancelling
from test_k8s_manifests import K8S_VERSION

from conftest import ROOT, S3_BUCKET, write_tiny_params
from selftrain import artifacts, logits, stages
from selftrain.layout import Generation
from selftrain.params import load_params
from tasks import stages as tasks
from tasks.job_manifests import job_manifest, resources_for, service_manifest
from tasks.kubernetes import run_stage_job
from tasks.pod_status import JobFailed, StageJobError, explain_failure

K8S = {"kubernetes.enabled": True, "kubernetes.poll_s": 0.2, "prefect.cache": False, "prefect.retries": 0}


@pytest.fixture(scope="module")
def gen0(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k8s")
    path = write_tiny_params(tmp / "params.yaml")
    params = load_params(path, {"teacher.epochs": 1})
    g = Generation(str(tmp / "run"), "gen0")
    stages.prepare.run(params, out=g.data)
    stages.train_teacher.run(params, data=g.data, out=g.teacher, promoted=g.promoted)
    return path, g


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    c = FakeCluster(tmp_path / "cluster")
    monkeypatch.setenv("KUBECONFIG", str(c.kubeconfig))
    yield c
    c.close()


@flow
def one_stage(params_path: str, overrides: dict, root: str, stage: str, kwargs: dict) -> dict:
    """The flow's way of running a stage (tasks.for_params), alone."""
    params = load_params(params_path, {"teacher.epochs": 1, **overrides})
    return getattr(tasks.for_params(params, root), stage.replace("-", "_"))(params, **kwargs)


def test_a_stage_runs_as_a_job_with_its_resources_and_its_log_reaches_the_flow(gen0, cluster, tmp_path, caplog):
    path, g = gen0
    res = {"infer": {"gpu": 1, "node_pool": "a100", "memory": "3Gi", "cpu": "1"}}
    out = str(tmp_path / "logits")
    with caplog.at_level(logging.INFO, logger="selftrain.kubernetes"):
        summary = one_stage(
            str(path),
            {**K8S, "resources": res},
            str(tmp_path),
            "infer",
            {"teacher": g.promoted, "data": g.data, "out": out},
        )
    [job] = cluster.jobs()
    kubernetes_validate.validate(job | {"status": {}}, K8S_VERSION, strict=True)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "3Gi"}
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "3Gi"}
    assert pod["nodeSelector"] == {"selftrain.io/pool": "a100"}
    assert {t["key"] for t in pod["tolerations"]} == {"nvidia.com/gpu", "selftrain.io/pool"}
    assert (
        spec["backoffLimit"] == 2
        and spec["activeDeadlineSeconds"] == 2 * 86400
        and spec["ttlSecondsAfterFinished"] == 86400
    )
    assert [(r["action"], r.get("onExitCodes", {}).get("operator")) for r in spec["podFailurePolicy"]["rules"]] == [
        ("Ignore", None),
        ("Count", "In"),
        ("FailJob", "NotIn"),
    ]  # disruptions replaced, transient I/O (75) counted, the rest fails
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "selftrain" and labels["selftrain.io/stage"] == "infer"
    assert labels["selftrain.io/generation"] == "all" and labels["selftrain.io/flow-run"]
    assert container["command"] == ["selftrain"] and container["args"][0] == "infer"
    # the pod's output is what the stage writes in-process, and its summary is the task's result
    stages.infer.run(
        load_params(path, {"teacher.epochs": 1}), teacher=g.promoted, data=g.data, out=str(tmp_path / "here")
    )
    a, b = logits.read_store(out), logits.read_store(str(tmp_path / "here"))
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.values, b.values)
    assert summary == {"images": 400, "shards": 1, "k": None}
    assert any("infer: {'images': 400" in r.getMessage() for r in caplog.records), (
        "the pod's log did not reach the flow's log"
    )
    # torch in the pod runs as many threads as the pod requested cores (the downward API), not the node's core count
    assert {
        "name": "OMP_NUM_THREADS",
        "valueFrom": {"resourceFieldRef": {"containerName": "stage", "resource": "requests.cpu", "divisor": "1"}},
    } in container["env"]
    assert "device cpu, torch threads 1" in (cluster.workdir / "logs" / f"{cluster.created_pods[0]}.log").read_text()
    # a retry of the same call in the same flow run (Prefect retries transient API errors) waits on that Job,
    # starts none
    again = run_stage_job(
        load_params(path, {"teacher.epochs": 1, **K8S, "resources": res}),
        "infer",
        {"teacher": g.promoted, "data": g.data, "out": out},
        root=str(tmp_path),
        flow_run_id=labels["selftrain.io/flow-run"],
    )
    assert again == summary and len(cluster.jobs()) == 1 and len(cluster.created_pods) == 1


def test_an_oomkilled_pod_fails_the_flow_with_the_reason_and_what_to_change(gen0, cluster, tmp_path):
    path, g = gen0
    cluster.fail_pods("infer", "OOMKilled")
    with pytest.raises(
        StageJobError,
        match=r"ran out of memory: the container was OOMKilled at its 2Gi limit; raise resources\.infer\.memory",
    ):
        one_stage(
            str(path),
            {**K8S, "resources": {"infer": {"memory": "2Gi"}}},
            str(tmp_path),
            "infer",
            {"teacher": g.promoted, "data": g.data, "out": str(tmp_path / "logits")},
        )
    [job] = cluster.jobs()  # kept for kubectl until its TTL
    assert not artifacts.exists(str(tmp_path / "logits"))


def test_cancelling_the_flow_deletes_the_job_and_its_pods(gen0, cluster, tmp_path, caplog):
    path, g = gen0
    cluster.fail_pods("infer", "Unschedulable")  # the pod waits for a node that never comes
    outcome: dict = {}

    def run() -> None:
        try:
            one_stage(
                str(path),
                {**K8S, "resources": {"infer": {"gpu": 1, "node_pool": "a100"}}},
                str(tmp_path),
                "infer",
                {"teacher": g.promoted, "data": g.data, "out": str(tmp_path / "logits")},
            )
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome["error"] = e

    with caplog.at_level(logging.INFO, logger="selftrain.kubernetes"):
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while not (cluster.jobs() and cluster.pods()) and time.monotonic() < deadline:
            time.sleep(0.1)
        [job] = cluster.jobs()
        time.sleep(1)  # a few polls of a pending pod
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(job["metadata"]["labels"]["selftrain.io/flow-run"], Cancelling(), force=True)
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert "the flow run was cancelled" in str(outcome.get("error"))
    assert cluster.jobs() == []
    deadline = time.monotonic() + 10
    while cluster.pods() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.pods() == []
    assert any("is waiting for a node" in r.getMessage() for r in caplog.records)


def test_a_pod_pending_too_long_or_without_its_image_fails_in_plain_words_and_the_job_goes(gen0, cluster, tmp_path):
    path, g = gen0
    kwargs = {"teacher": g.promoted, "data": g.data, "out": str(tmp_path / "logits")}
    cluster.fail_pods("infer", "Unschedulable")
    with pytest.raises(
        StageJobError,
        match=r"Unschedulable for \d+ s \(kubernetes.pending_timeout_s = 1\): 0/3 nodes .* selftrain.io/pool=a100",
    ):
        one_stage(
            str(path),
            {**K8S, "kubernetes.pending_timeout_s": 1, "resources": {"infer": {"node_pool": "a100"}}},
            str(tmp_path),
            "infer",
            kwargs,
        )
    assert cluster.jobs() == []
    cluster.fail_pods("infer", "ImagePullBackOff")
    with pytest.raises(
        StageJobError,
        match=r"cannot start \(ImagePullBackOff.*check kubernetes.image \('registry.example/selftrain:nope'\)",
    ):
        one_stage(
            str(path),
            {
                **K8S,
                "kubernetes.image_pull_timeout_s": 1,
                "kubernetes.image": "registry.example/selftrain:nope",
                "resources": {"infer": {}},
            },
            str(tmp_path),
            "infer",
            kwargs,
        )
    assert cluster.jobs() == []
    cluster.faults.clear()
    missing = {
        "kubernetes.image_pull_timeout_s": 1,
        "kubernetes.secret_env": {"HF_TOKEN": {"secret": "nope", "key": "token"}},
        "resources": {"infer": {}},
    }
    with pytest.raises(
        StageJobError,
        match=r'cannot start \(CreateContainerConfigError: secret "nope" not found\); check that the Secrets',
    ):
        one_stage(str(path), {**K8S, **missing}, str(tmp_path), "infer", kwargs)


def test_a_job_past_its_deadline_is_reported_as_such(gen0):
    path, _ = gen0
    params = load_params(path, {**K8S, "resources": {"train-student": {"memory": "4Gi"}}})
    job = {
        "metadata": {"name": "st-train-student-gen1-0"},
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                }
            ]
        },
    }
    assert "ran longer than its deadline, 172800 s (kubernetes.deadline_s)" in explain_failure(
        "train-mpl", params, job, []
    )
    # train-mpl has no entry of its own: it runs with train-student's resources, like its DVC stage
    assert resources_for(params, "train-mpl").memory == "4Gi" and resources_for(params, "infer") is None


def _checkpoint_step(path: Path) -> int | None:
    try:
        return torch.load(io.BytesIO(path.read_bytes()), weights_only=True)["step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


@pytest.mark.slow
def test_an_evicted_training_pod_gets_one_replacement_that_resumes_to_the_uninterrupted_result(
    gen0, cluster, tmp_path, caplog
):
    path, g = gen0
    mpl = {"methods.mpl.steps": 20, "methods.mpl.checkpoint_every": 10}
    out = tmp_path / "student"
    resume = Path(f"{out}.resume")
    cluster.evict_when("train-mpl", lambda: (_checkpoint_step(resume) or 0) >= 10)
    kwargs = {"generation": "gen2", "data": g.data, "teacher": g.promoted}
    with caplog.at_level(logging.INFO, logger="selftrain.kubernetes"):
        one_stage(
            str(path),
            {**K8S, **mpl, "resources": {"train-student": {"memory": "4Gi", "cpu": "1"}}},
            str(tmp_path),
            "train-mpl",
            {**kwargs, "out": str(out)},
        )
    [job] = cluster.jobs()
    assert (
        job["spec"]["template"]["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    )
    assert len(cluster.evicted) == 1 and len(cluster.created_pods) == 2  # the evicted pod and exactly one replacement
    assert [p["metadata"]["name"] for p in cluster.pods()] == [cluster.created_pods[1]]  # the preempted pod was deleted
    replacement = (cluster.workdir / "logs" / f"{cluster.created_pods[1]}.log").read_text()
    step = int(replacement.split("resuming from the checkpoint at step ")[1].split()[0])
    assert 10 <= step < 20
    # seen while it terminated, with the scheduler's reason, or only found gone at the next poll
    assert any(
        "was disrupted (PreemptionByScheduler" in r.getMessage()
        or f"pod {cluster.evicted[0]} is gone" in r.getMessage()
        for r in caplog.records
    )
    whole = tmp_path / "whole"
    # its controller threads poll the API in this process: the training below ran 1.5x slower beside them (GIL)
    cluster.close()
    stages.train_mpl.run(load_params(path, {"teacher.epochs": 1, **mpl}), **kwargs, out=str(whole))
    for name in ("model.safetensors", "mpl_teacher.safetensors"):  # bitwise on CPU with the same seed
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert [r["step"] for r in csv.DictReader((out / "mpl_log.csv").read_text().splitlines())] == ["10", "20"]
    assert not resume.exists()  # removed once the stage finished


def test_fixmatch_runs_as_a_job_from_the_flow_and_gives_the_in_process_model(gen0, cluster, tmp_path):
    """A method added through the registry runs like the others: the flow's task for its stage, a Job in the cluster."""
    path, g = gen0
    fm = {
        "generations.gen1.method": "fixmatch",
        "methods.fixmatch.threshold": "freematch",
        "methods.fixmatch.dist_align": True,
    }
    kwargs = {"generation": "gen1", "data": g.data, "teacher": g.promoted}
    out = tmp_path / "student"
    summary = one_stage(
        str(path),
        {**K8S, **fm, "resources": {"train-student": {"memory": "4Gi", "cpu": "1"}}},
        str(tmp_path),
        "train-student",
        {**kwargs, "out": str(out)},
    )
    [job] = cluster.jobs()
    assert (
        job["spec"]["template"]["spec"]["containers"][0]["args"][0] == "train-student"
        and summary["method"] == "fixmatch"
    )
    cluster.close()  # its controller threads would share this process's GIL with the training below
    here = stages.train_student.run(
        load_params(path, {"teacher.epochs": 1, **fm}), **kwargs, out=str(tmp_path / "here")
    )
    assert (out / "model.safetensors").read_bytes() == (
        tmp_path / "here/model.safetensors"
    ).read_bytes()  # bitwise on CPU
    assert summary["val_top1"] == here["val_top1"]


def test_sharded_infer_is_one_indexed_job_whose_parts_give_the_unsharded_logits(gen0, cluster, tmp_path):
    path, g = gen0
    parts = {"infer.parts": 3, "infer.shard_size": 150, "infer.batch_size": 64}
    out = str(tmp_path / "logits")
    kwargs = {"teacher": g.promoted, "data": g.data, "out": out}
    summary = one_stage(
        str(path),
        {**K8S, **parts, "resources": {"infer": {"parallelism": 2, "cpu": "1"}}},
        str(tmp_path),
        "infer",
        kwargs,
    )
    [job] = cluster.jobs()
    kubernetes_validate.validate(job | {"status": {}}, K8S_VERSION, strict=True)
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 3, 2)
    pods = cluster.pods(job["metadata"]["name"])
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == [
        "0",
        "1",
        "2",
    ]
    unsharded = str(tmp_path / "unsharded")
    stages.infer.run(load_params(path, {"teacher.epochs": 1, "infer.batch_size": 64}), **{**kwargs, "out": unsharded})
    a, b = logits.read_store(out), logits.read_store(unsharded)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.values, b.values) and summary["images"] == 400
    assert not artifacts.exists(f"{out}.parts")


@pytest.mark.slow
def test_a_part_that_fails_once_is_replaced_alone_and_the_store_is_still_bitwise_the_unsharded_one(
    gen0, cluster, tmp_path, s3_server
):
    """Part 1's first write to S3 gets a 500: its pod exits 75, the Job controller replaces that index only (Count,
    within backoffLimit), and the joined store equals one process's bit for bit."""
    path, g = gen0
    parts = {"infer.parts": 3, "infer.shard_size": 150, "infer.batch_size": 64, "kubernetes.backoff_limit": 1}
    out = f"s3://{S3_BUCKET}/k8s-part/logits"
    kwargs = {"teacher": g.promoted, "data": g.data, "out": out}
    with FaultProxy(s3_server["AWS_ENDPOINT_URL"], first(1, "500", "PUT", "part-00001-of-00003")) as proxy:
        overrides = {
            **K8S,
            **parts,
            **_pod_s3(cluster, s3_server, proxy.url),
            "resources": {"infer": {"parallelism": 3, "cpu": "1"}},
        }
        one_stage(str(path), overrides, str(tmp_path), "infer", kwargs)
    assert [f[0] for f in proxy.faults] == ["500"] and "part-00001-of-00003" in proxy.faults[0][2]
    [job] = cluster.jobs()
    by_index: dict[str, list[int]] = {}
    for p in sorted(cluster.pods(job["metadata"]["name"]), key=lambda p: p["metadata"]["name"]):
        code = p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
        by_index.setdefault(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"], []).append(code)
    assert by_index == {"0": [0], "1": [75, 0], "2": [0]}
    unsharded = str(tmp_path / "unsharded")
    stages.infer.run(load_params(path, {"teacher.epochs": 1, "infer.batch_size": 64}), **{**kwargs, "out": unsharded})
    a, b = logits.read_store(out), logits.read_store(unsharded)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.values, b.values)


def test_a_partial_set_of_parts_is_refused(gen0, tmp_path):
    path, g = gen0
    params = load_params(path, {"teacher.epochs": 1, "infer.parts": 3})
    out = str(tmp_path / "logits")
    for part in (0, 2):
        stages.infer.run(params, teacher=g.promoted, data=g.data, out=out, part=part)
    with pytest.raises(logits.LogitStoreError, match="exists only as parts"):
        stages.filter_balance.run(params, logits_store=out, data=g.data, out=str(tmp_path / "pseudo"))
    with pytest.raises(
        logits.LogitStoreError, match=r"1 of 3 parts are missing, incomplete or from another teacher \(parts 1\)"
    ):
        stages.join_logit_parts(params, teacher=g.promoted, data=g.data, out=out)
    # without --part, infer does only the missing part, then joins
    assert stages.infer.run(params, teacher=g.promoted, data=g.data, out=out)["images"] == 400
    assert logits.read_store(out).ids.shape == (400,)


def test_a_training_job_validates_with_its_priority_class(gen0):
    path, _ = gen0
    params = load_params(path, {**K8S, "resources": {"train-teacher": {"gpu": 2, "node_pool": "a100"}}})
    job = job_manifest(
        params,
        "train-teacher",
        "st-train-teacher-all-0",
        ["train-teacher", "--out", "s3://b/x"],
        resources_for(params, "train-teacher"),
    )
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["metadata"]["namespace"] == NAMESPACE
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "selftrain-training"


def test_a_multi_node_student_is_an_indexed_torchrun_job_with_a_headless_service(gen0):
    path, _ = gen0
    params = load_params(
        path, {**K8S, "resources": {"train-student": {"gpu": 8, "nodes": 4, "node_pool": "a100", "memory": "64Gi"}}}
    )
    res = resources_for(params, "train-student")
    name = "st-train-student-gen2-0a1b2c3d"
    job = job_manifest(params, "train-student", name, ["train-student", "--out", "s3://b/gen2/student"], res)
    service = service_manifest(params, name)
    for doc in (job, service):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert pod["subdomain"] == name == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": name}
    container = pod["containers"][0]
    assert container["command"] == ["selftrain-torchrun"] and container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    args = container["args"]
    assert args[args.index("--nnodes") + 1] == "4" and args[args.index("--nproc-per-node") + 1] == "8"
    assert args[args.index("--rdzv-endpoint") + 1] == f"{name}-0.{name}:29500"
    assert "OMP_NUM_THREADS" not in {
        e["name"] for e in container["env"]
    }  # eight processes a pod: torchrun gives each one thread
    one_gpu = {"resources": {"train-student": {"gpu": 1, "nodes": 2, "cpu": "6"}}}
    job = job_manifest(
        load_params(path, {**K8S, **one_gpu}),
        "train-student",
        name,
        ["train-student"],
        resources_for(load_params(path, {**K8S, **one_gpu}), "train-student"),
    )
    [omp] = [e for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "OMP_NUM_THREADS"]
    assert (
        omp["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    )  # one process a pod: torchrun sets nothing
    assert args[args.index("-m") + 1 :] == ["selftrain.cli", "train-student", "--out", "s3://b/gen2/student"]
    # MPL, which takes train-student's entry, is data-parallel too; an MPL entry of one GPU runs without torchrun
    mpl = resources_for(params, "train-mpl")
    assert (mpl.gpu, mpl.nodes) == (8, 4)
    assert job_manifest(params, "train-mpl", "st-train-mpl-gen2-0", ["train-mpl"], mpl)["spec"]["template"]["spec"][
        "containers"
    ][0]["command"] == ["selftrain-torchrun"]
    one = load_params(path, {**K8S, "resources": {"train-student": {"gpu": 8}, "train-mpl": {"gpu": 1}}})
    job = job_manifest(one, "train-mpl", "st-train-mpl-gen2-0", ["train-mpl"], resources_for(one, "train-mpl"))
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["selftrain"]


def _pod_s3(cluster: FakeCluster, s3_env: dict, endpoint: str) -> dict:
    """The params overrides that let a pod reach the test's S3 (a real cluster gives the service account a role
    instead): the secret key in a Secret, read through secretKeyRef, the rest in kubernetes.env, with one try per
    request in s3fs and botocore, so that a failed request reaches the stage."""
    if cluster.read_secret("s3") is None:
        cluster.create_secret("s3", {"secret-key": s3_env["AWS_SECRET_ACCESS_KEY"]})
    env = {k: v for k, v in s3_env.items() if k not in ("AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY")}
    return {
        "kubernetes.env": {**env, "AWS_ENDPOINT_URL": endpoint, "FSSPEC_S3": json.dumps(ONE_TRY)},
        "kubernetes.secret_env": {"AWS_SECRET_ACCESS_KEY": {"secret": "s3", "key": "secret-key"}},
    }


def _exit_codes(cluster: FakeCluster, job: str) -> list[int]:
    return [
        p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
        for p in sorted(cluster.pods(job), key=lambda p: p["metadata"]["name"])
    ]


@pytest.mark.slow
def test_transient_io_in_a_pod_exits_75_and_the_job_replaces_the_pod(gen0, cluster, tmp_path, s3_server):
    path, _ = gen0
    out = f"s3://{S3_BUCKET}/k8s-transient/data"
    # the pod's first write to S3 gets a 500 (InternalError): s3fs raises OSError(EREMOTEIO) once its tries are spent
    with FaultProxy(s3_server["AWS_ENDPOINT_URL"], first(1, "500", "PUT", "/k8s-transient/")) as proxy:
        summary = one_stage(
            str(path),
            {
                **K8S,
                "kubernetes.backoff_limit": 1,
                **_pod_s3(cluster, s3_server, proxy.url),
                "resources": {"prepare": {}},
            },
            str(tmp_path),
            "prepare",
            {"out": out},
        )
    assert proxy.faults == [("500", "PUT", proxy.faults[0][2])]
    [job] = cluster.jobs()
    assert _exit_codes(cluster, job["metadata"]["name"]) == [
        75,
        0,
    ]  # transient: counted against backoffLimit 1, replaced
    stages.prepare.run(load_params(path), out=str(tmp_path / "local"))
    assert (
        artifacts.content_hash(out) == artifacts.content_hash(str(tmp_path / "local"))
        and summary["sizes"]["labeled"] == 100
    )


@pytest.mark.slow
def test_a_job_out_of_pods_on_transient_io_is_retried_by_the_flow_as_a_new_job(
    gen0, cluster, tmp_path, s3_server, caplog
):
    path, _ = gen0
    out = f"s3://{S3_BUCKET}/k8s-retried/data"
    overrides = {
        **K8S,
        "prefect.retries": 1,
        "prefect.retry_backoff_s": 0,
        "kubernetes.backoff_limit": 0,
        "resources": {"prepare": {}},
    }
    with (
        FaultProxy(s3_server["AWS_ENDPOINT_URL"], first(1, "500", "PUT", "/k8s-retried/")) as proxy,
        caplog.at_level(logging.INFO, logger="selftrain.kubernetes"),
    ):
        one_stage(
            str(path), {**overrides, **_pod_s3(cluster, s3_server, proxy.url)}, str(tmp_path), "prepare", {"out": out}
        )
    jobs = {j["metadata"]["name"]: j for j in cluster.jobs()}
    [failed] = [n for n, j in jobs.items() if any(c["type"] == "Failed" for c in j["status"].get("conditions") or [])]
    [done] = [n for n in jobs if n != failed]
    # the failed Job ran out of pods on transient I/O and is kept for kubectl; the retried task did not adopt it
    assert jobs[failed]["status"]["conditions"][0]["reason"] == "BackoffLimitExceeded" and _exit_codes(
        cluster, failed
    ) == [75]
    assert done == f"{failed}-r2" and _exit_codes(cluster, done) == [0]
    assert any(f"Job {failed} failed before" in r.getMessage() for r in caplog.records)
    assert artifacts.exists(f"{out}/MANIFEST.json")


@pytest.mark.slow
def test_bad_input_in_a_pod_fails_the_job_at_once_and_a_later_try_is_a_new_job(gen0, cluster, tmp_path, s3_server):
    path, _ = gen0
    out = f"s3://{S3_BUCKET}/k8s-bad/data"
    # the pod has its own environment: the test process's AWS credentials do not leak into it
    overrides = {
        **K8S,
        "kubernetes.backoff_limit": 2,
        "kubernetes.env": {"AWS_ENDPOINT_URL": s3_server["AWS_ENDPOINT_URL"]},
        "resources": {"prepare": {}},
    }
    params = load_params(path, overrides)
    with pytest.raises(
        JobFailed, match=r"(?s)exited with code 2 .*no S3 credentials for 's3://selftrain/k8s-bad/data'"
    ):
        run_stage_job(params, "prepare", {"out": out}, root=str(tmp_path), flow_run_id="run-1")
    [job] = cluster.jobs()
    assert (
        job["status"]["conditions"][0]["reason"] == "PodFailurePolicy"
    )  # FailJob: not retried, whatever backoffLimit allows
    assert "failed with exit code 2 matching FailJob rule at index 2" in job["status"]["conditions"][0]["message"]
    assert _exit_codes(cluster, job["metadata"]["name"]) == [2]
    # the same call again (the UI's "Retry" of the flow run) does not re-raise the failed Job's error: it starts a
    # new one
    fixed = load_params(path, {**overrides, **_pod_s3(cluster, s3_server, s3_server["AWS_ENDPOINT_URL"])})
    assert (
        run_stage_job(fixed, "prepare", {"out": out}, root=str(tmp_path), flow_run_id="run-1")["sizes"]["labeled"]
        == 100
    )
    assert sorted(j["metadata"]["name"] for j in cluster.jobs()) == [
        job["metadata"]["name"],
        job["metadata"]["name"] + "-r2",
    ]


def test_the_fake_api_server_refuses_a_pod_failure_policy_without_restart_policy_never(gen0, cluster):
    """As the API server does: the runner's Jobs pass only because they say Never (a mutation to OnFailure passed
    26 tests when the fake stored anything)."""
    path, _ = gen0
    params = load_params(path, {**K8S, "resources": {"prepare": {}}})
    job = job_manifest(
        params, "prepare", "st-refused", ["prepare", "--out", "/nowhere"], resources_for(params, "prepare")
    )
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["podFailurePolicy"]
    job["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    with pytest.raises(ApiException) as err:
        cluster.batch.create_namespaced_job(NAMESPACE, job)
    assert (
        err.value.status == 422
        and 'only "Never" is supported when podFailurePolicy is specified' in json.loads(err.value.body)["message"]
    )
    assert cluster.jobs() == []


def test_pods_run_the_checkout_under_test_and_read_secrets_as_the_kubelet_does(cluster, tmp_path):
    """A pod imports this checkout's selftrain (not whatever tree the venv's editable install names), and its
    environment takes secretKeyRef and envFrom from Secrets; a missing Secret keeps it Pending with
    CreateContainerConfigError."""
    cluster.create_secret("s3", {"secret-key": "from-the-secret"})
    cluster.create_secret("extra", {"EXTRA_A": "a"})
    script = (
        "import os, selftrain; "
        "print(selftrain.__file__, os.getcwd(), os.environ['AWS_SECRET_ACCESS_KEY'], os.environ['EXTRA_A'])"
    )
    container = {
        "name": "stage",
        "image": "selftrain:cpu",
        "command": ["python", "-c", script],
        "args": [],
        "env": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret-key"}}}],
        "envFrom": [{"secretRef": {"name": "extra"}}],
    }
    spec = {"restartPolicy": "Never", "containers": [container]}
    for name, c in (("reads", container), ("missing", {**container, "envFrom": [{"secretRef": {"name": "nowhere"}}]})):
        cluster.batch.create_namespaced_job(
            NAMESPACE,
            {
                "metadata": {"name": name},
                "spec": {"backoffLimit": 0, "template": {"spec": {**spec, "containers": [c]}}},
            },
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        c["type"] == "Complete" for c in (cluster.jobs()[0].get("status") or {}).get("conditions") or []
    ):
        time.sleep(0.2)
    log = (cluster.workdir / "logs" / f"{cluster.pods('reads')[0]['metadata']['name']}.log").read_text().split()
    assert log == [str(ROOT / "selftrain" / "__init__.py"), str(ROOT), "from-the-secret", "a"]
    [pending] = cluster.pods("missing")
    state = pending["status"]["containerStatuses"][0]["state"]["waiting"]
    assert pending["status"]["phase"] == "Pending" and state == {
        "reason": "CreateContainerConfigError",
        "message": 'secret "nowhere" not found',
    }
