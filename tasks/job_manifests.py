"""What a stage's Kubernetes Job is: its name, the CLI argv its pods run, the resources it asks for, the Job and
the headless Service of a multi-node run, as plain manifests (no API call here; tasks/kubernetes.py submits them)."""

from __future__ import annotations

import hashlib
from typing import Any

from selftrain import methods
from selftrain.failures import EXIT_TRANSIENT
from selftrain.orchestration_params import StageResources
from selftrain.params import Params

RENDEZVOUS_PORT = 29500  # torchrun's c10d rendezvous on pod 0 of a multi-node Job


APP = {
    "app.kubernetes.io/name": "selftrain",
    "app.kubernetes.io/part-of": "selftrain",
    "app.kubernetes.io/managed-by": "selftrain-flow",
}


def resources_for(params: Params, stage: str) -> StageResources | None:
    """The pod resources of `stage`, or None when it runs in the flow's process. A method's stage without its own
    entry takes dvc.yaml's train-student's (selftrain.methods), on one GPU and one node if the method is not
    data-parallel."""
    if not params.kubernetes.enabled:
        return None
    if stage in params.resources:
        return params.resources[stage]
    res = params.resources.get(methods.dvc_stage(stage)) if stage != methods.dvc_stage(stage) else None
    if res is not None and stage not in methods.data_parallel_stages():
        res = res.model_copy(update={"gpu": min(res.gpu, 1), "nodes": 1})
    return res


def data_parallel(res: StageResources) -> bool:
    """The stage runs under torchrun: several GPUs in its pod, or several pods."""
    return res.gpu > 1 or res.nodes > 1


def job_name(stage: str, generation: str | None, flow_run_id: str, outputs: list[str]) -> str:
    """A name that is the same for every retry of one stage call in one flow run, and new in the next run."""
    digest = hashlib.sha256("\n".join([flow_run_id, stage, *outputs]).encode()).hexdigest()[:8]
    # 48 characters at most: `-rN` for a later attempt, then the Job controller's index and suffix (pod names: 63)
    return f"st-{stage}-{generation or 'all'}-{digest}"[:48].rstrip("-")


def attempt_name(base: str, attempt: int) -> str:
    """The Job of a stage call's `attempt`-th try: the base name, then `<base>-r2`, `<base>-r3`, ..."""
    return base if attempt == 1 else f"{base}-r{attempt}"


def stage_argv(stage: str, params_uri: str, result_uri: str, kwargs: dict[str, Any]) -> list[str]:
    """The CLI arguments that run `stage` on `kwargs` (the stage's keyword arguments)."""
    argv = [stage, "--params", params_uri, "--result", result_uri]
    for key, value in kwargs.items():
        if value is not None:
            argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


# Pod Security Standard "restricted" (k8s/manifests/namespace.yaml enforces it): non-root as the image's uid,
# no privilege escalation, no capabilities, the runtime's default seccomp profile. The root filesystem is
# read-only too; the image writes only under /tmp (an emptyDir) and /dev/shm.
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}


def pod_security(uid: int) -> dict[str, Any]:
    """The pod-level securityContext every selftrain pod runs with."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def job_manifest(
    params: Params,
    stage: str,
    name: str,
    argv: list[str],
    res: StageResources,
    *,
    generation: str | None = None,
    flow_run_id: str = "",
    parts: int | None = None,
) -> dict[str, Any]:
    """The Job for one stage call. With `parts`, an Indexed Job: pod i runs `argv --part i` (its completion index)."""
    k = params.kubernetes
    labels = {
        **APP,
        "app.kubernetes.io/component": stage,
        "app.kubernetes.io/instance": name,
        "selftrain.io/stage": stage,
        "selftrain.io/generation": generation or "all",
    }
    if flow_run_id:
        labels["selftrain.io/flow-run"] = flow_run_id
    limits = {"memory": res.memory}
    if res.gpu:
        limits["nvidia.com/gpu"] = str(res.gpu)
    tolerations = []
    if res.gpu:
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    if res.node_pool:
        tolerations.append(
            {"key": k.node_pool_label, "operator": "Equal", "value": res.node_pool, "effect": "NoSchedule"}
        )
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in sorted(k.env.items())]
    env += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
        for key, ref in sorted(k.secret_env.items())
    ]
    if "OMP_NUM_THREADS" not in k.env and res.gpu <= 1:
        # torch sizes its thread pool by the node's cores, not the pod's share: on a busy 64-core node a pod that
        # requested 8 would run 64 threads on 8 cores' worth of time (measured here: a torch process of 2 threads on
        # 2 cores beside one busy process ran 3-4x slower than alone; docs/experiments/log.md "Threads"). The
        # downward API gives the request, rounded up to whole cores. A pod of several processes (one per GPU) is left
        # to torchrun, which sets 1 per process, but only when it starts more than one (so a one-GPU pod of a
        # multi-node run gets the request too).
        env.append(
            {
                "name": "OMP_NUM_THREADS",
                "valueFrom": {
                    "resourceFieldRef": {"containerName": "stage", "resource": "requests.cpu", "divisor": "1"}
                },
            }
        )
    if parts:
        # the controller sets this annotation on each pod of an Indexed Job; $(JOB_COMPLETION_INDEX) in args reads it
        env.append(
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
                },
            }
        )
        argv = [*argv, "--part", "$(JOB_COMPLETION_INDEX)"]
    command = ["selftrain"]
    if data_parallel(res):
        # one process per GPU; several pods find each other through the headless Service of the same name
        # (`service_manifest`) and torchrun's c10d rendezvous on pod 0, which also lets a replaced pod rejoin
        rendezvous = (
            ["--standalone"]
            if res.nodes == 1
            else [
                "--nnodes",
                str(res.nodes),
                "--rdzv-backend",
                "c10d",
                "--rdzv-id",
                name,
                "--rdzv-endpoint",
                f"{name}-0.{name}:{RENDEZVOUS_PORT}",
                "--max-restarts",
                "3",
            ]
        )
        # selftrain-torchrun (selftrain/launch.py): torchrun, exiting with the failed rank's own code (75, 2, 3)
        command, argv = (
            ["selftrain-torchrun"],
            [*rendezvous, "--nproc-per-node", str(max(res.gpu, 1)), "-m", "selftrain.cli", *argv],
        )
    annotations = {}
    if stage in methods.training_stages():
        # the cluster autoscaler must not drain a node under a long training pod to save money
        annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] = "false"
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": k.service_account,  # for the bucket (IRSA, workload identity), not the API:
        "automountServiceAccountToken": False,  # the account may create and delete Jobs; a stage needs neither
        "containers": [
            {
                "name": "stage",
                "image": k.image,
                "imagePullPolicy": k.image_pull_policy,
                "command": command,
                "args": argv,
                "env": env,
                **(
                    {"envFrom": [{"secretRef": {"name": name}} for name in k.env_from_secrets]}
                    if k.env_from_secrets
                    else {}
                ),
                "resources": {"requests": {"cpu": res.cpu, "memory": res.memory}, "limits": limits},
                "securityContext": CONTAINER_SECURITY,
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "securityContext": pod_security(k.run_as_user),
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k.shm_size}},
            {"name": "tmp", "emptyDir": {}},
        ],
        "tolerations": tolerations,
    }
    if res.node_pool:
        pod_spec["nodeSelector"] = {k.node_pool_label: res.node_pool}
    if k.priority_class:
        pod_spec["priorityClassName"] = k.priority_class
    spec: dict[str, Any] = {
        "backoffLimit": k.backoff_limit,
        "activeDeadlineSeconds": k.deadline_s,
        "ttlSecondsAfterFinished": k.ttl_s,
        # checked in order: a preempted or evicted pod is replaced without counting; transient I/O counts against
        # backoffLimit (and is replaced); any other exit fails the Job at once, since another pod would fail
        # the same way
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {
                    "action": "Count",
                    "onExitCodes": {"containerName": "stage", "operator": "In", "values": [EXIT_TRANSIENT]},
                },
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": "stage", "operator": "NotIn", "values": [EXIT_TRANSIENT]},
                },
            ]
        },
        "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
    }
    if parts:
        spec |= {"completionMode": "Indexed", "completions": parts, "parallelism": min(res.parallelism, parts)}
    if res.nodes > 1:  # every pod at once, each with a stable hostname <name>-<index>.<name>
        spec |= {"completionMode": "Indexed", "completions": res.nodes, "parallelism": res.nodes}
        pod_spec["subdomain"] = name
        pod_spec["containers"][0]["ports"] = [{"containerPort": RENDEZVOUS_PORT, "name": "rendezvous"}]
    job_labels = (
        {**labels, "kueue.x-k8s.io/queue-name": res.queue} if res.queue else labels
    )  # Kueue admits it (suspended until then)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": k.namespace, "labels": job_labels},
        "spec": spec,
    }


def service_manifest(params: Params, name: str) -> dict[str, Any]:
    """The headless Service through which a multi-node Job's pods reach pod 0 (torchrun's rendezvous)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": params.kubernetes.namespace,
            "labels": {**APP, "app.kubernetes.io/instance": name},
        },
        "spec": {
            "clusterIP": "None",
            "selector": {"job-name": name},
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }
