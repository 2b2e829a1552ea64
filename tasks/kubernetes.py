"""Run one stage as a Kubernetes Job: what the flow does for a stage listed in params `resources` when
`kubernetes.enabled`.

The pod runs the stage's CLI, `selftrain <stage> --params <snapshot> --out ...`, the same command
dvc.yaml runs, in the project's image. The Job is made with the official client rather than through a
Prefect work pool because a stage is a step *inside* a flow run: the flow keeps its own state, caching
and retries, and waits on the Job the way it waits on an in-process stage (k8s/README.md says more).

- One stage call = one Job, named from the flow run and the stage's outputs: a task that Prefect
  retries (say, after an API timeout) finds its Job and waits on it instead of starting a second one,
  as long as that Job is running or succeeded. A failed Job is never adopted: the retry (or the UI's
  "Retry" of the flow run) starts a new attempt, `<name>-r2`, ..., and the failed one stays for kubectl.
- Exit codes (selftrain.failures): transient I/O (75) replaces the pod, up to `kubernetes.backoff_limit`
  times; any other failure (bad input 2, a gate 3, a bug 1, OOMKilled 137) fails the Job at once
  (podFailurePolicy FailJob). A Job that ran out of pods on transient I/O fails the task with
  JobFailedTransiently, which Prefect's retries take up.
- A pod that cannot be scheduled is waited for (a node pool scaling up) up to
  `kubernetes.pending_timeout_s`; an image that cannot be pulled, up to `image_pull_timeout_s`.
- The pod's log is streamed into the flow's log (the `selftrain.kubernetes` logger).
- A failure is reported in plain words: OOMKilled, ImagePullBackOff, Unschedulable, DeadlineExceeded,
  or the stage's own error (the last lines of its log).
- An evicted or preempted pod does not fail the Job (podFailurePolicy ignores DisruptionTarget): the
  Job controller starts one replacement, which resumes from the stage's checkpoint.
- The Job is deleted when the flow run is cancelled, or when the flow stops waiting for any other
  reason (a task timeout, Ctrl-C, a pending pod given up on); a failed Job is kept for `kubectl`
  until its TTL.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
import yaml
from kubernetes import client, config

from selftrain import artifacts, methods
from selftrain.failures import EXIT_TRANSIENT
from selftrain.params import Params, StageResources

log = logging.getLogger("selftrain.kubernetes")

RENDEZVOUS_PORT = 29500  # torchrun's c10d rendezvous on pod 0 of a multi-node Job
APP = {
    "app.kubernetes.io/name": "selftrain",
    "app.kubernetes.io/part-of": "selftrain",
    "app.kubernetes.io/managed-by": "selftrain-flow",
}


class StageJobError(RuntimeError):
    """A stage's Job failed, or its pod could not start; the message says why and what to change."""


class JobFailed(StageJobError):
    """The Job itself failed (its pod's error, OOMKilled, its deadline): it is kept for `kubectl` until its TTL."""


class JobFailedTransiently(JobFailed):
    """Every pod the Job was allowed failed with transient I/O (exit 75): worth a new attempt later."""


class StageCancelled(RuntimeError):
    """The flow run was cancelled while its stage ran as a Job; the Job has been deleted."""


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
        # 2 cores beside one busy process ran 3-4x slower than alone; BENCHMARKS.md "Threads"). The downward API
        # gives the request, rounded up to whole cores. A pod of several processes (one per GPU) is left to
        # torchrun, which sets 1 per process, but only when it starts more than one (so a one-GPU pod of a
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
        command, argv = (
            ["torchrun"],
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


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term
    return None


def _waiting_reason(pod: dict[str, Any]) -> tuple[str, str] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") in (
            "ImagePullBackOff",
            "ErrImagePull",
            "InvalidImageName",
            "CreateContainerConfigError",
        ):
            return waiting["reason"], waiting.get("message", "")
    return None


def unschedulable(pod: dict[str, Any]) -> str | None:
    """The scheduler's message when the pod has no node to go to, else None."""
    c = next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if c and c.get("status") == "False" and c.get("reason") == "Unschedulable":
        return c.get("message") or "no node fits the pod"
    return None


def evicted(pod: dict[str, Any]) -> str | None:
    """Why a pod was disrupted (preemption, eviction, node drain), else None. The condition comes first, while the pod
    is still terminating: once the Job controller has counted it, Kubernetes deletes it."""
    c = _condition(pod, "DisruptionTarget")
    if c:
        return f"{c.get('reason', 'disrupted')}: {c.get('message', '')}".rstrip(": ")
    return None


def failed_transiently(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """The Job ran out of pods (BackoffLimitExceeded) and the last one failed with transient I/O (exit 75)."""
    if (_condition(job, "Failed") or {}).get("reason") != "BackoffLimitExceeded":
        return False
    counted = [p for p in pods if _terminated(p) and not evicted(p)]
    last = max(counted, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)
    return last is not None and (_terminated(last) or {}).get("exitCode") == EXIT_TRANSIENT


def explain_failure(
    stage: str, params: Params, job: dict[str, Any], pods: list[dict[str, Any]], log_tails: dict[str, str] | None = None
) -> str:
    """Plain words for why a stage's Job failed, and what to change; `log_tails`: the last log lines by pod name."""
    k, res = params.kubernetes, resources_for(params, stage)
    where = f"stage {stage} (Job {job['metadata']['name']} in namespace {k.namespace})"
    cond = _condition(job, "Failed") or {}
    if cond.get("reason") == "DeadlineExceeded":
        return (
            f"{where} ran longer than its deadline, {k.deadline_s} s (kubernetes.deadline_s): raise it, or give the "
            "stage faster GPUs (resources)"
        )
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
        term = _terminated(pod)
        if term is None or evicted(pod):
            continue
        if term.get("reason") == "OOMKilled":
            memory = res.memory if res else "?"
            return (
                f"{where} ran out of memory: the container was OOMKilled at its {memory} limit; raise "
                f"resources.{stage}.memory in params.yaml (or lower the batch size)"
            )
        code, tail = term.get("exitCode"), (log_tails or {}).get(pod["metadata"]["name"])
        tail = f"; its log ends:\n{tail}" if tail else ""
        return f"{where} failed: the container exited with code {code} ({term.get('reason') or 'Error'}){tail}"
    return f"{where} failed: {cond.get('reason', 'unknown reason')}: {cond.get('message', '')}"


class _LogFollower(threading.Thread):
    """Follows one pod's log into a queue (the flow logs the lines from its own thread, inside its run)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, pod: str, lines: queue.Queue[tuple[str, str]]) -> None:
        super().__init__(daemon=True, name=f"log-{pod}")
        self.core = core
        self.namespace = namespace
        self.pod = pod
        self.lines = lines
        self.tail: list[str] = []

    def run(self) -> None:
        try:
            resp = self.core.read_namespaced_pod_log(self.pod, self.namespace, follow=True, _preload_content=False)
            buf = b""
            for chunk in resp.stream(4096):
                buf += chunk
                *done, buf = buf.split(b"\n")
                for raw in done:
                    self._line(raw)
            if buf:
                self._line(buf)
        except Exception as e:  # a log we cannot read must not fail the stage: the Job's status decides
            self.lines.put((self.pod, f"(log stream ended: {e})"))

    def _line(self, raw: bytes) -> None:
        # tqdm redraws with carriage returns: keep the last state of each line
        text = raw.decode(errors="replace").rsplit("\r", 1)[-1].rstrip()
        if text:
            self.tail = [*self.tail[-19:], text]
            self.lines.put((self.pod, text))


def api_clients() -> tuple[client.BatchV1Api, client.CoreV1Api]:
    """Clients for the cluster: the pod's service account inside one, else KUBECONFIG / ~/.kube/config."""
    try:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        api = client.ApiClient(configuration)
    except config.ConfigException:
        # the client reads KUBECONFIG once, at import; read it now
        api = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    return client.BatchV1Api(api), client.CoreV1Api(api)


def run_stage_job(
    params: Params,
    stage: str,
    kwargs: dict[str, Any],
    *,
    root: str,
    flow_run_id: str,
    cancelled: Callable[[], bool] = lambda: False,
    parts: int | None = None,
) -> dict[str, Any]:
    """Run `stage(params, **kwargs)` as a Job and return its summary (what the stage returns)."""
    res = resources_for(params, stage)
    if res is None:
        raise ValueError(f"stage {stage} has no resources.{stage} entry (or kubernetes.enabled is false)")
    outputs = [v for key, v in kwargs.items() if key in ("out", "promoted") and v]
    base = job_name(stage, kwargs.get("generation"), flow_run_id, outputs)
    run_dir = artifacts.join(root, ".kubernetes", base)
    params_uri, result_uri = artifacts.join(run_dir, "params.yaml"), artifacts.join(run_dir, "result.json")
    artifacts.write_bytes(params_uri, yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False).encode())
    argv = stage_argv(stage, params_uri, result_uri, kwargs)
    batch, core = api_clients()
    ns = params.kubernetes.namespace
    for attempt in itertools.count(1):
        name = attempt_name(base, attempt)
        if res.nodes > 1:
            with contextlib.suppress(FileExistsError):  # a retry: the Service is there with its Job
                _create(lambda: core.create_namespaced_service(ns, service_manifest(params, name)))
        manifest = job_manifest(
            params, stage, name, argv, res, generation=kwargs.get("generation"), flow_run_id=flow_run_id, parts=parts
        )
        try:
            _create(lambda: batch.create_namespaced_job(ns, manifest))
            log.info(
                "%s: started Job %s in namespace %s (kubectl -n %s logs -f -l job-name=%s)", stage, name, ns, ns, name
            )
            break
        except FileExistsError:
            if not _condition(_to_dict(batch, batch.read_namespaced_job(name, ns)), "Failed"):
                log.info("%s: Job %s already exists (this is a retry): waiting on it", stage, name)
                break
            # a failed attempt stays for kubectl until its TTL; this call is a new attempt
            log.info(
                "%s: Job %s failed before (kept for kubectl -n %s describe job %s): starting the next attempt",
                stage,
                name,
                ns,
                name,
            )
    try:
        _wait(batch, core, params, stage, name, cancelled)
    except JobFailed:
        raise
    except BaseException:
        _delete(batch, ns, name)  # nobody waits on it any more: a pod left running would duplicate the next attempt
        raise
    finally:
        if res.nodes > 1:
            _delete_service(core, ns, name)
    return artifacts.read_json(result_uri) if not parts else {"parts": parts, "job": name}


def _create(call: Callable[[], Any]) -> None:
    """Create an object; FileExistsError when it is there already (a retried task: the same name)."""
    try:
        call()
    except client.ApiException as e:
        if e.status == 409:
            raise FileExistsError from None
        raise


def _delete_service(core: client.CoreV1Api, namespace: str, name: str) -> None:
    try:
        core.delete_namespaced_service(name, namespace)
    except client.ApiException as e:
        if e.status != 404:
            log.warning(
                "could not delete Service %s: %s; delete it with kubectl -n %s delete service %s",
                name,
                e.reason,
                namespace,
                name,
            )


def _delete(batch: client.BatchV1Api, namespace: str, name: str) -> None:
    try:
        batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        log.info("deleted Job %s (and its pods)", name)
    except client.ApiException as e:
        if e.status != 404:
            log.warning(
                "could not delete Job %s: %s; delete it with kubectl -n %s delete job %s",
                name,
                e.reason,
                namespace,
                name,
            )


def _to_dict(batch: client.BatchV1Api, obj: Any) -> dict[str, Any]:
    return batch.api_client.sanitize_for_serialization(obj)


def _wait(
    batch: client.BatchV1Api,
    core: client.CoreV1Api,
    params: Params,
    stage: str,
    name: str,
    cancelled: Callable[[], bool],
) -> None:
    k = params.kubernetes
    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    followers: dict[str, _LogFollower] = {}
    pending_since: dict[str, float] = {}
    reported: set[str] = set()

    def drain() -> None:
        while not lines.empty():
            pod, text = lines.get()
            log.info("[%s] %s", pod, text)

    while True:
        if cancelled():
            raise StageCancelled(f"stage {stage}: the flow run was cancelled; Job {name} deleted")
        try:
            job = _to_dict(batch, batch.read_namespaced_job(name, k.namespace))
            pods = [
                _to_dict(batch, p)
                for p in core.list_namespaced_pod(k.namespace, label_selector=f"job-name={name}").items
            ]
        except (client.ApiException, urllib3.exceptions.HTTPError) as e:
            if isinstance(e, client.ApiException) and e.status not in (0, 429) and e.status < 500:
                raise
            # the API server busy or out of reach for a moment must not end a days-long Job: ask again
            log.warning("%s: could not read Job %s (%s); trying again in %.0f s", stage, name, e, k.poll_s)
            time.sleep(k.poll_s)
            continue
        now = time.monotonic()
        for gone in sorted(set(followers) - {p["metadata"]["name"] for p in pods} - reported):
            # deleted before this poll saw it end: a disrupted pod is removed once the Job controller counted it
            reported.add(gone)
            log.warning(
                "%s: pod %s is gone (deleted: preempted, evicted or its node lost); the Job replaces it if it did not "
                "finish",
                stage,
                gone,
            )
        for pod in pods:
            pod_name, phase = pod["metadata"]["name"], (pod.get("status") or {}).get("phase")
            if phase in ("Running", "Succeeded", "Failed") and pod_name not in followers and not evicted(pod):
                followers[pod_name] = _LogFollower(core, k.namespace, pod_name, lines)
                followers[pod_name].start()
            why = evicted(pod)
            if why and pod_name not in reported:
                reported.add(pod_name)
                log.warning(
                    "%s: pod %s was disrupted (%s); the Job starts a replacement, which resumes from the last "
                    "checkpoint",
                    stage,
                    pod_name,
                    why,
                )
            waiting = unschedulable(pod) if phase == "Pending" else None
            pulling = _waiting_reason(pod) if phase == "Pending" else None
            if not (waiting or pulling):
                pending_since.pop(pod_name, None)
                continue
            since = pending_since.setdefault(pod_name, now)
            if waiting and now - since > k.pending_timeout_s:
                raise StageJobError(
                    f"stage {stage}: pod {pod_name} was Unschedulable for {now - since:.0f} s "
                    "(kubernetes.pending_timeout_s = "
                    f"{k.pending_timeout_s:.0f}): {waiting}. Check that a node pool with label {k.node_pool_label}="
                    f"{(resources_for(params, stage) or StageResources()).node_pool} has room for the request, and "
                    "that the "
                    "cluster autoscaler can add nodes to it (k8s/README.md)"
                )
            if waiting and since == now:
                log.info(
                    "%s: pod %s is waiting for a node (%s); waiting up to %.0f s while the node pool scales up",
                    stage,
                    pod_name,
                    waiting,
                    k.pending_timeout_s,
                )
            if pulling and now - since > k.image_pull_timeout_s:
                fix = (
                    "check that the Secrets named in kubernetes.secret_env and env_from_secrets exist in namespace "
                    + k.namespace
                    if pulling[0] == "CreateContainerConfigError"
                    else f"check kubernetes.image ('{k.image}'), that it was pushed, and the pull secret"
                )
                raise StageJobError(f"stage {stage}: pod {pod_name} cannot start ({pulling[0]}: {pulling[1]}); {fix}")
        drain()
        if _condition(job, "Complete"):
            for f in followers.values():
                f.join(timeout=10)
            drain()
            log.info("%s: Job %s complete", stage, name)
            return
        if _condition(job, "Failed"):
            for f in followers.values():
                f.join(timeout=10)
            drain()
            tails = {pod: "\n".join(f.tail[-10:]) for pod, f in followers.items()}
            why = explain_failure(stage, params, job, pods, tails)
            if failed_transiently(job, pods):
                raise JobFailedTransiently(
                    f"{why}\n(transient I/O in each of its {k.backoff_limit + 1} pods, kubernetes.backoff_limit = "
                    f"{k.backoff_limit}: the flow's task retries start a new Job)"
                )
            raise JobFailed(why)
        time.sleep(k.poll_s)
