"""Reading a Job's and its pods' states: unschedulable, evicted, failed on transient I/O, and a failure explained in
plain words (OOMKilled, ImagePullBackOff, DeadlineExceeded, or the stage's own error). Plain functions of the API's
objects as dicts; tasks/kubernetes.py polls for them."""

from __future__ import annotations

from typing import Any

from selftrain.failures import EXIT_TRANSIENT
from selftrain.params import Params
from tasks.job_manifests import resources_for


class StageJobError(RuntimeError):
    """A stage's Job failed, or its pod could not start; the message says why and what to change."""


class JobFailed(StageJobError):
    """The Job itself failed (its pod's error, OOMKilled, its deadline): it is kept for `kubectl` until its TTL."""


class JobFailedTransiently(JobFailed):
    """Every pod the Job was allowed failed with transient I/O (exit 75): worth a new attempt later."""


class StageCancelled(RuntimeError):
    """The flow run was cancelled while its stage ran as a Job; the Job has been deleted."""


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
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


def waiting_reason(pod: dict[str, Any]) -> tuple[str, str] | None:
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
    c = condition(pod, "DisruptionTarget")
    if c:
        return f"{c.get('reason', 'disrupted')}: {c.get('message', '')}".rstrip(": ")
    return None


def failed_transiently(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """The Job ran out of pods (BackoffLimitExceeded) and the last one failed with transient I/O (exit 75)."""
    if (condition(job, "Failed") or {}).get("reason") != "BackoffLimitExceeded":
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
    cond = condition(job, "Failed") or {}
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
