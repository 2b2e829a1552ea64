"""k8s/: every manifest, and the Job the work pool's base job template renders to, validate against the
Kubernetes schemas (kubernetes-validate, strict: an unknown or misspelt field is an error); every pod the
runner or the template makes meets the Pod Security Standard "restricted" the namespace enforces."""

import copy
import json

import kubernetes_validate
import pytest
import yaml
from pod_security import violations
from prefect.utilities.templating import apply_values

from conftest import ROOT
from selftrain.params import ParamsError, load_params
from tasks.job_manifests import job_manifest, resources_for

K8S_VERSION = "1.31.0"  # the oldest minor the manifests must work on (podFailurePolicy is GA from 1.31)
CRDS = {"kueue.x-k8s.io/v1beta1"}  # optional add-ons: no schema ships with kubernetes-validate


def manifests() -> list[tuple[str, dict]]:
    return [
        (f"{p.name}#{i}", doc)
        for p in sorted((ROOT / "k8s/manifests").glob("*.yaml"))
        for i, doc in enumerate(yaml.safe_load_all(p.read_text()))
        if doc
    ]


@pytest.mark.parametrize("name,doc", manifests(), ids=[n for n, _ in manifests()])
def test_manifest_validates_strictly(name, doc):
    if doc["apiVersion"] in CRDS:
        assert doc["metadata"]["name"] and doc["spec"], name
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def rendered_job(**variables) -> dict:
    """The Job a flow run becomes: the template's defaults plus what the worker fills in."""
    template = json.loads((ROOT / "k8s/base-job-template.json").read_text())
    values = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    values.update(
        name="self-training-gen1",
        command="prefect flow-run execute",
        env={"PREFECT_API_URL": "http://prefect:4200/api"},
        labels={"app.kubernetes.io/name": "selftrain"},
        **variables,
    )
    config = apply_values(template["job_configuration"], values)
    job = config["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    # what the worker does with these two: a command string becomes args, an env mapping becomes a list
    container["args"] = container["args"].split()
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    return job


def test_the_base_job_template_renders_a_valid_gpu_job():
    job = rendered_job()
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and container["resources"]["requests"]["memory"]
    assert pod["nodeSelector"] == {"selftrain.io/pool": "gpu"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    # the image's entrypoint is `selftrain`: the flow run's own command must replace it, not follow it
    assert container["command"] == ["/usr/bin/env"] and container["args"][:2] == ["prefect", "flow-run"]


def test_a_misspelt_field_is_caught():
    job = rendered_job()
    job["spec"]["template"]["spec"]["nodeSelecter"] = job["spec"]["template"]["spec"].pop("nodeSelector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def runner_jobs() -> dict[str, dict]:
    """One Job of each shape the runner makes: a GPU stage, an Indexed infer, a multi-node torchrun student."""
    params = load_params(
        ROOT / "params.yaml",
        {
            "kubernetes.enabled": True,
            "infer.parts": 4,
            "resources": {
                "train-teacher": {"gpu": 1, "node_pool": "gpu"},
                "infer": {"gpu": 1, "parallelism": 2},
                "train-student": {"gpu": 8, "nodes": 2, "node_pool": "a100"},
                "evaluate": {"cpu": "2"},
            },
        },
    )
    shapes = {"train-teacher": {}, "infer": {"parts": 4}, "train-student": {}, "evaluate": {}}
    return {
        stage: job_manifest(
            params,
            stage,
            f"st-{stage}-gen1-0",
            [stage, "--out", "s3://b/x"],
            resources_for(params, stage),
            generation="gen1",
            **kw,
        )
        for stage, kw in shapes.items()
    }


def test_every_pod_the_runner_and_the_template_make_meets_pod_security_restricted():
    jobs = {**runner_jobs(), "prefect flow run (base job template)": rendered_job()}
    for name, job in jobs.items():
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        template = job["spec"]["template"]
        assert violations(template["spec"], (template.get("metadata") or {}).get("annotations")) == [], name
        pod, container = template["spec"], template["spec"]["containers"][0]
        # the image's uid, and a read-only root with writable /tmp and /dev/shm (the image writes nowhere else)
        assert (
            pod["securityContext"]["runAsUser"] == 10001
            and container["securityContext"]["readOnlyRootFilesystem"] is True
        ), name
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert (
            "emptyDir" in volumes[mounts["/tmp"]] and volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        ), name


@pytest.mark.parametrize(
    "change,rule",
    [
        (lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"), "Privilege Escalation"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "Capabilities"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "Capabilities"),
        (lambda p: p["securityContext"].pop("runAsNonRoot"), "Running as Non-root"),
        (lambda p: p["securityContext"].update(runAsUser=0), "Running as Non-root user"),
        (lambda p: p["securityContext"].pop("seccompProfile"), "Seccomp"),
        (lambda p: p["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}), "Seccomp"),
        (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/data"}}), "HostPath Volumes"),
        (lambda p: p.update(hostNetwork=True), "Host Namespaces"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "Privileged Containers"),
        (lambda p: p["containers"][0].update(ports=[{"containerPort": 29500, "hostPort": 29500}]), "Host Ports"),
    ],
)
def test_the_pod_security_check_refuses_what_restricted_refuses(change, rule):
    pod = copy.deepcopy(runner_jobs()["train-teacher"]["spec"]["template"]["spec"])
    change(pod)
    assert any(v.startswith(rule + ":") for v in violations(pod)), (rule, violations(pod))


def test_the_namespace_enforces_pod_security_restricted():
    ns = yaml.safe_load((ROOT / "k8s/manifests/namespace.yaml").read_text())
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert ns["metadata"]["name"] == load_params(ROOT / "params.yaml").kubernetes.namespace


def test_stage_pods_get_no_api_token_and_secrets_come_from_secrets_never_from_params():
    """The `selftrain` account may create and delete Jobs: a stage pod does not mount its token. A secret-looking
    key in kubernetes.env (clear text in the Job and in the params snapshot on the bucket) is refused; Secrets are
    named instead (secretKeyRef, envFrom), and their values never pass through the flow."""
    for key in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "db_password", "AWS_SESSION_TOKEN"):
        with pytest.raises(ParamsError, match=rf"kubernetes.env: \['{key}'\] look like secrets") as err:
            load_params(
                ROOT / "params.yaml", {"kubernetes.env": {key: "s3cr3t", "AWS_ENDPOINT_URL": "http://minio:9000"}}
            )
        assert "s3cr3t" not in str(err.value)  # the error does not print the value either
    params = load_params(
        ROOT / "params.yaml",
        {
            "kubernetes.enabled": True,
            "kubernetes.env": {"AWS_ENDPOINT_URL": "http://minio:9000"},
            "kubernetes.secret_env": {"AWS_SECRET_ACCESS_KEY": {"secret": "minio", "key": "secret-key"}},
            "kubernetes.env_from_secrets": ["wandb"],
            "resources": {"train-student": {"gpu": 1, "queue": "selftrain"}, "evaluate": {"cpu": "2"}},
        },
    )
    for stage in ("train-student", "evaluate"):
        job = job_manifest(params, stage, f"st-{stage}", [stage], resources_for(params, stage))
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "selftrain"
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"] == {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "minio", "key": "secret-key"}},
        }
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000" and container["envFrom"] == [
            {"secretRef": {"name": "wandb"}}
        ]
        # Kueue: the Job (not its pods) carries the queue label; Kueue suspends it until the queue admits it
        assert job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == (
            "selftrain" if stage == "train-student" else None
        )
    # the flow pod (the worker's base job template) keeps its token: it creates the stage Jobs
    assert rendered_job()["spec"]["template"]["spec"].get("automountServiceAccountToken", True) is not False


def test_the_kueue_example_names_a_queue_params_accept():
    queue = next(
        d for d in yaml.safe_load_all((ROOT / "k8s/manifests/kueue.yaml").read_text()) if d["kind"] == "LocalQueue"
    )
    params = load_params(
        ROOT / "params.yaml", {"resources": {"train-student": {"gpu": 1, "queue": queue["metadata"]["name"]}}}
    )
    assert (
        params.resources["train-student"].queue == queue["metadata"]["name"]
        and queue["metadata"]["namespace"] == params.kubernetes.namespace
    )
