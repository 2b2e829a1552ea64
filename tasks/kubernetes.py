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

from selftrain import artifacts
from selftrain.orchestration_params import StageResources
from selftrain.params import Params
from tasks.job_manifests import (
    attempt_name,
    job_manifest,
    job_name,
    resources_for,
    service_manifest,
    stage_argv,
)
from tasks.pod_status import (
    JobFailed,
    JobFailedTransiently,
    StageCancelled,
    StageJobError,
    condition,
    evicted,
    explain_failure,
    failed_transiently,
    unschedulable,
    waiting_reason,
)

log = logging.getLogger("selftrain.kubernetes")


log = logging.getLogger("selftrain.kubernetes")


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
            if not condition(_to_dict(batch, batch.read_namespaced_job(name, ns)), "Failed"):
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
            pulling = waiting_reason(pod) if phase == "Pending" else None
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
        if condition(job, "Complete"):
            for f in followers.values():
                f.join(timeout=10)
            drain()
            log.info("%s: Job %s complete", stage, name)
            return
        if condition(job, "Failed"):
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
