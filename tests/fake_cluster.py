"""A Kubernetes cluster small enough for a test: kmock's API emulator on loopback, plus the job controller and a
kubelet, played here.

No real API server can run on these machines (STACK.md). kmock stores and serves objects over HTTP the way
the API server does, and the official client talks to it through a kubeconfig, but it runs no controllers.
So this module plays them, simply and in the open, as the Kubernetes documentation describes them ("Jobs",
"Handling retriable and non-retriable pod failures with Pod failure policy", "Pod Lifecycle"):
- the job controller makes pods for each Job (one per completion index of an Indexed Job, up to
  parallelism) and judges each failed pod by the Job's podFailurePolicy, rules in order, the first that
  matches deciding: Ignore (replaced, not counted), Count, FailJob (the Job fails at once, reason
  PodFailurePolicy); a pod no rule matches is counted. More counted failures than backoffLimit (default 6)
  fail the Job with reason BackoffLimitExceeded; activeDeadlineSeconds with DeadlineExceeded. Its pods carry
  its tracking finalizer: each finished pod is counted once, then the finalizer is removed, so a pod that was
  deleted meanwhile (preempted) disappears, its count kept. It deletes the pods of a deleted Job and writes
  the Job's status;
- the kubelet runs each pod's container (`command` + `args`, `$(VAR)` expanded from its env) as a local
  process, since the project's image is this checkout, with the container's environment only (plus the
  image's PATH, HOME and PYTHONUNBUFFERED): nothing of the test process's, AWS credentials included. It serves
  its log (`follow` too) and writes the pod's status. A preempted pod gets the DisruptionTarget condition, then is
  deleted: SIGTERM, SIGKILL after its
  terminationGracePeriodSeconds (30 by default), phase Failed, and gone once the job controller has counted it.
With `image=`, the kubelet runs each container in the project's built image instead (`ImageRuntime`), with
the pod's security context applied. Tests make the cluster misbehave on purpose: `fail_pods(stage, how)` (OOMKilled,
ImagePullBackOff,
Unschedulable), `evict_when(stage, condition)` (a preemption).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import math
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal import enums as kmock_enums  # the request's action; kmock exports no public name for it
from kubernetes import client, config
from kubernetes.utils import parse_quantity

from conftest import BIN, ROOT

NAMESPACE = "selftrain"
TRACKING = (
    "batch.kubernetes.io/job-tracking"  # the Job controller's finalizer: a pod is not removed before it is counted
)
DEFAULT_BACKOFF_LIMIT = 6  # the Job API's default
DEFAULT_GRACE_S = 30  # the Pod API's terminationGracePeriodSeconds default


class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, plus the equality label selectors of a list (the API server filters; kmock lists all), and the
    API server's validation of a Job's podFailurePolicy, which needs restartPolicy Never (kmock stores anything)."""

    async def _handle(self, request: Any) -> Any:
        data = request.data if isinstance(getattr(request, "data", None), dict) else {}
        if getattr(request.resource, "plural", None) == "jobs" and request.action == kmock_enums.action.CREATE:
            policy = (data.get("spec") or {}).get("podFailurePolicy")
            restart = ((data.get("spec") or {}).get("template") or {}).get("spec", {}).get("restartPolicy")
            if policy is not None and restart != "Never":
                name = (data.get("metadata") or {}).get("name")
                message = (
                    f'Job.batch "{name}" is invalid: spec.template.spec.restartPolicy: Invalid value: "{restart}": '
                    'only "Never" is supported when podFailurePolicy is specified'
                )
                status = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": message,
                    "reason": "Invalid",
                    "code": 422,
                }
                return aiohttp.web.json_response(status, status=422)
        return await super()._handle(request)

    async def _serve_list(self, request: Any) -> Any:
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            want = dict(part.split("=", 1) for part in selector.split(","))
            result["items"] = [
                o for o in result["items"] if want.items() <= ((o.get("metadata") or {}).get("labels") or {}).items()
            ]
        return result


def _pod_failure_action(policy: dict[str, Any] | None, pod: dict[str, Any]) -> tuple[str, str]:
    """(action, message) for a failed pod: the first podFailurePolicy rule that matches it, else Count."""
    codes = [
        (cs["name"], cs["state"]["terminated"]["exitCode"])
        for cs in (pod.get("status") or {}).get("containerStatuses") or []
        if (cs.get("state") or {}).get("terminated")
    ]
    conditions = {(c.get("type"), c.get("status")) for c in (pod.get("status") or {}).get("conditions") or []}
    for i, rule in enumerate((policy or {}).get("rules") or []):
        if "onPodConditions" in rule:
            matched = any((c["type"], c.get("status", "True")) in conditions for c in rule["onPodConditions"])
            message = (
                f"Pod {NAMESPACE}/{pod['metadata']['name']} has condition matching {rule['action']} rule at index {i}"
            )
        else:
            req = rule["onExitCodes"]
            # containers that exited 0 are left out of the check
            mine = [(c, code) for c, code in codes if code != 0 and req.get("containerName") in (None, c)]
            hit = [(c, code) for c, code in mine if (code in req["values"]) == (req["operator"] == "In")]
            matched = bool(hit)
            message = (
                (
                    f"Container {hit[0][0]} for pod {NAMESPACE}/{pod['metadata']['name']} failed with exit code "
                    f"{hit[0][1]} "
                    f"matching {rule['action']} rule at index {i}"
                )
                if hit
                else ""
            )
        if matched:
            return rule["action"], message
    return "Count", ""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(obj: dict[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in (obj.get("status") or {}).get("conditions") or []
    )


class ImageRuntime:
    """The kubelet's container runtime for an image built with buildah (`make image`): each container runs in
    the image's root filesystem with the pod's volumes and security context, as a CRI runtime would set them
    up, from util-linux on the host: a private mount namespace, the image's root bind-mounted (read-only with
    readOnlyRootFilesystem), emptyDirs on their mount paths (tmpfs for medium Memory, sized by sizeLimit),
    /proc, /sys, /dev and the host's /etc/hosts and resolv.conf; then chroot, and setpriv to the pod's uid and
    gid with no_new_privs (allowPrivilegeEscalation: false) and no capabilities (drop ALL).

    Why not a real runtime: crun and runc refuse these machines' hybrid cgroup layout, and `buildah run` has no
    read-only root or user-namespace-free uid switch. What this still does not do: a network namespace (pods
    share the host's, so they reach a moto endpoint on loopback), a PID namespace (the stage is not PID 1),
    cgroup limits (memory, CPU), and the seccomp RuntimeDefault profile (nothing here loads one)."""

    def __init__(self, image: str) -> None:
        self.image = image
        config_ = image_config(image)
        self.env = dict(e.split("=", 1) for e in config_.get("Env") or [])
        self.workdir = config_.get("WorkingDir") or "/"
        self.user = config_.get("User") or "0"
        self.container = _buildah("from", "--pull-never", "--quiet", image).strip()
        self.rootfs = _buildah("mount", self.container).strip()

    def command(
        self, spec: dict[str, Any], container: dict[str, Any], argv: list[str], env: dict[str, str], poddir: Path
    ) -> list[str]:
        """The host command that runs `argv` as `container` of the pod with `spec`, in the image."""
        psc, sc = spec.get("securityContext") or {}, container.get("securityContext") or {}
        uid = sc.get("runAsUser", psc.get("runAsUser", int(self.user.split(":")[0])))
        gid = sc.get("runAsGroup", psc.get("runAsGroup", 0))
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) and uid == 0:
            raise ValueError(
                "container has runAsNonRoot and image will run as root"
            )  # the kubelet's CreateContainerConfigError
        root = shlex.quote(self.rootfs)
        lines = [
            "set -e",
            f"mount --bind {root} {root}",
            f"mount --rbind /proc {root}/proc",
            f"mount --rbind /sys {root}/sys",
            f"mount --rbind /dev {root}/dev",
        ]
        for f in ("/etc/hosts", "/etc/resolv.conf"):
            lines += [f"[ -e {root}{f} ] || touch {root}{f}", f"mount --bind {f} {root}{f}"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            volume = volumes[m["name"]]
            target = shlex.quote(self.rootfs + m["mountPath"])
            lines.append(f"mkdir -p {target}")
            empty = volume.get("emptyDir")
            if "hostPath" in volume:  # a test's own folder (no pod of the runner has one: 'restricted' forbids it)
                lines.append(f"mount --bind {shlex.quote(volume['hostPath']['path'])} {target}")
                if m.get("readOnly"):
                    lines.append(f"mount -o remount,bind,ro {target}")
            elif empty.get("medium") == "Memory":
                size = int(parse_quantity(empty.get("sizeLimit", "64Mi")))
                lines.append(f"mount -t tmpfs -o size={size},mode=1777 tmpfs {target}")
            else:
                host = poddir / m["name"]
                host.mkdir(parents=True, exist_ok=True)
                host.chmod(0o777)  # as the kubelet makes an emptyDir
                if "fsGroup" in psc:
                    os.chown(host, -1, psc["fsGroup"])
                lines.append(f"mount --bind {shlex.quote(str(host))} {target}")
        if sc.get("readOnlyRootFilesystem"):
            lines.append(f"mount -o remount,bind,ro {root}")
        priv = ["setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups"]
        if sc.get("allowPrivilegeEscalation") is False:
            priv.append("--no-new-privs")
        if "ALL" in (sc.get("capabilities") or {}).get("drop", []):
            priv += ["--inh-caps=-all", "--bounding-set=-all"]
        inner = [
            *priv,
            "env",
            "-i",
            "-C",
            container.get("workingDir", self.workdir),
            *(f"{k}={v}" for k, v in {**self.env, **env}.items()),
            *argv,
        ]
        lines.append(f"exec chroot {root} {shlex.join(inner)}")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)]

    def close(self) -> None:
        _buildah("rm", self.container)


def image_config(image: str) -> dict[str, Any]:
    """The image's OCI config: Env, WorkingDir, User, Entrypoint, ..."""
    return json.loads(_buildah("inspect", "--type", "image", image))["OCIv1"]["config"]


def _buildah(*args: str) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


class FakeCluster:
    def __init__(self, workdir: Path, image: str | None = None) -> None:
        self.workdir = workdir
        self.runtime = ImageRuntime(image) if image else None
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.faults: dict[str, str] = {}  # stage -> OOMKilled | ImagePullBackOff | Unschedulable
        self.evictions: list[tuple[str, Callable[[], bool]]] = []
        self.evicted: list[str] = []
        self.created_pods: list[str] = []
        self._started: dict[str, float] = {}
        self._tally: dict[str, dict[str, tuple[int, str, str]]] = {}  # job -> finished pod -> (index, action, message)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._halt = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._server = threading.Thread(target=self._serve, daemon=True)
        self._server.start()
        if not self._ready.wait(30):
            raise RuntimeError("kmock did not start")
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}
                    ],
                }
            )
        )
        api = config.new_client_from_config(str(self.kubeconfig))
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self._controller = threading.Thread(target=self._control, daemon=True)
        self._controller.start()

    # --- the API server (kmock), in its own event loop thread
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        async with _Emulator() as handler, kmock.Server(handler) as server:
            handler.resources["batch/v1/jobs"] = kmock.ResourceInfo(
                kind="Job", namespaced=True, subresources={"status"}
            )
            handler.resources["v1/pods"] = kmock.ResourceInfo(
                kind="Pod", namespaced=True, subresources={"status", "log"}
            )
            handler.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", namespaced=True)
            handler["get", kmock.resource("v1/pods"), kmock.subresource("log")] << self._log
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.05)

    def _log(self, request: Any) -> Any:
        path = self.workdir / "logs" / f"{request.name}.log"

        async def follow() -> Any:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read()
                    if chunk:
                        yield chunk
                        continue
                    proc = self.procs.get(request.name)
                    if proc is None or proc.poll() is not None:
                        rest = f.read()
                        if rest:
                            yield rest
                        return
                    await asyncio.sleep(0.05)

        if not path.exists():
            return kmock.Response(headers={"Content-Type": "text/plain"}, payload=b"")
        if request.params.get("follow") == "true":
            return kmock.Response(headers={"Content-Type": "text/plain"}, payload=follow())
        return kmock.Response(headers={"Content-Type": "text/plain"}, payload=path.read_bytes())

    # --- what tests do to the cluster
    def fail_pods(self, stage: str, how: str) -> None:
        """Pods of `stage` from now on: OOMKilled (exit 137), ImagePullBackOff or Unschedulable (stay Pending)."""
        self.faults[stage] = how

    def evict_when(self, stage: str, condition: Callable[[], bool]) -> None:
        """Preempt the running pod of `stage` once `condition()` holds (once)."""
        self.evictions.append((stage, condition))

    def jobs(self) -> list[dict[str, Any]]:
        return [self._dict(j) for j in self.batch.list_namespaced_job(NAMESPACE).items]

    def pods(self, job: str | None = None) -> list[dict[str, Any]]:
        sel = f"job-name={job}" if job else None
        return [self._dict(p) for p in self.core.list_namespaced_pod(NAMESPACE, label_selector=sel).items]

    def close(self) -> None:
        self._halt.set()  # the controllers first: a tick against a stopped API server would fail in their thread
        self._controller.join(timeout=30)
        self._stop.set()
        self._server.join(
            timeout=10
        )  # kmock patches aiohttp's resolver: the next cluster must not start before it is undone
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.runtime:
            self.runtime.close()

    def _dict(self, obj: Any) -> dict[str, Any]:
        return self.batch.api_client.sanitize_for_serialization(obj)

    # --- the job controller and the kubelet
    def _control(self) -> None:
        while not self._halt.is_set():
            try:
                self._tick()
            except client.ApiException as e:
                if e.status != 404:  # a Job deleted under our feet is the test's business
                    raise
            time.sleep(0.2)

    def _tick(self) -> None:
        jobs = {j["metadata"]["name"]: j for j in self.jobs()}
        for pod in self.pods():
            name, job = pod["metadata"]["name"], pod["metadata"]["labels"]["job-name"]
            if job not in jobs:  # the Job was deleted: garbage-collect its pods
                self._kill(name)
                if TRACKING in (pod["metadata"].get("finalizers") or []):
                    self.core.patch_namespaced_pod(name, NAMESPACE, {"metadata": {"finalizers": []}})
                with contextlib.suppress(client.ApiException):  # removed with its finalizer already
                    self.core.delete_namespaced_pod(name, NAMESPACE)
                continue
            self._kubelet(pod)
        for job in jobs.values():
            if not (_cond(job, "Complete") or _cond(job, "Failed")):
                self._job_controller(job)

    def _job_controller(self, job: dict[str, Any]) -> None:
        name, spec = job["metadata"]["name"], job["spec"]
        started = self._started.setdefault(name, time.monotonic())
        completions, parallelism = spec.get("completions") or 1, spec.get("parallelism") or 1
        pods = self.pods(name)

        def index(p: dict) -> int:
            return int(p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index", "0"))

        def phase(p: dict) -> str:
            return (p.get("status") or {}).get("phase", "Pending")

        # each finished pod is counted once, by podFailurePolicy, and then its tracking finalizer is removed: a pod
        # that was deleted (preempted, evicted) is gone from then on, its count kept in the Job's tally
        tally = self._tally.setdefault(name, {})
        for p in sorted((p for p in pods if phase(p) in ("Succeeded", "Failed")), key=lambda p: p["metadata"]["name"]):
            pod_name = p["metadata"]["name"]
            if pod_name not in tally:
                action, message = (
                    ("Succeeded", "")
                    if phase(p) == "Succeeded"
                    else _pod_failure_action(spec.get("podFailurePolicy"), p)
                )
                tally[pod_name] = (index(p), action, message)
            if TRACKING in (p["metadata"].get("finalizers") or []):
                self.core.patch_namespaced_pod(pod_name, NAMESPACE, {"metadata": {"finalizers": []}})
        done = {i for i, action, _ in tally.values() if action == "Succeeded"}
        active = [p for p in pods if phase(p) in ("Pending", "Running")]
        counted = sum(action == "Count" for _, action, _ in tally.values())
        fail_job = next((message for _, action, message in sorted(tally.values()) if action == "FailJob"), None)
        status: dict[str, Any] = {"active": len(active), "succeeded": len(done), "failed": counted}
        deadline, backoff_limit = spec.get("activeDeadlineSeconds"), spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT)
        failure = None
        if deadline and time.monotonic() - started > deadline:
            failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        elif fail_job:
            failure = ("PodFailurePolicy", fail_job)
        elif counted > backoff_limit:
            failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if failure:
            for p in active:
                self._kill(p["metadata"]["name"])
            status["conditions"] = [{"type": "Failed", "status": "True", "reason": failure[0], "message": failure[1]}]
        elif len(done) == completions:
            status["conditions"] = [{"type": "Complete", "status": "True"}]
        else:
            busy = {index(p) for p in active}
            for i in [i for i in range(completions) if i not in done and i not in busy][
                : max(0, parallelism - len(active))
            ]:
                self._create_pod(
                    job, i, sum(1 for j, _, _ in tally.values() if j == i) + sum(1 for p in active if index(p) == i)
                )
        if any((job.get("status") or {}).get(key) != value for key, value in status.items()):
            self.batch.patch_namespaced_job_status(name, NAMESPACE, {"status": status})

    def _create_pod(self, job: dict[str, Any], i: int, attempt: int) -> None:
        template = job["spec"]["template"]
        meta = template.get("metadata") or {}
        name = f"{job['metadata']['name']}-{i}-{attempt}"
        labels = {
            **(meta.get("labels") or {}),
            "job-name": job["metadata"]["name"],
            "batch.kubernetes.io/job-name": job["metadata"]["name"],
        }
        annotations = {**(meta.get("annotations") or {}), "batch.kubernetes.io/job-completion-index": str(i)}
        self.core.create_namespaced_pod(
            NAMESPACE,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "labels": labels,
                    "annotations": annotations,
                    "creationTimestamp": _now(),
                    "finalizers": [TRACKING],
                },
                "spec": template["spec"],
                "status": {"phase": "Pending"},
            },
        )
        self.created_pods.append(name)

    def _set_status(self, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(name, NAMESPACE, {"status": status})

    def _kubelet(self, pod: dict[str, Any]) -> None:
        name, phase = pod["metadata"]["name"], (pod.get("status") or {}).get("phase", "Pending")
        stage = pod["metadata"]["labels"].get("selftrain.io/stage", "")
        fault = self.faults.get(stage)
        if phase == "Pending" and name not in self.procs:
            if fault in ("Unschedulable", "ImagePullBackOff") and (pod.get("status") or {}).get(
                "conditions" if fault == "Unschedulable" else "containerStatuses"
            ):
                return  # already reported
            if fault == "Unschedulable":
                self._set_status(
                    name,
                    {
                        "conditions": [
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node "
                                "affinity/selector",
                            }
                        ]
                    },
                )
            elif fault == "ImagePullBackOff":
                self._set_status(
                    name,
                    {
                        "containerStatuses": [
                            {
                                "name": "stage",
                                "ready": False,
                                "restartCount": 0,
                                "image": "x",
                                "imageID": "",
                                "state": {
                                    "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
                                },
                            }
                        ]
                    },
                )
            elif fault == "OOMKilled":  # the next tick sees the pod Failed, so this happens once
                self._terminated(name, "Failed", 137, "OOMKilled")
            else:
                self._start(pod)
            return
        proc = self.procs.get(name)
        if phase != "Running" or proc is None:
            return
        for k, (evict_stage, condition) in enumerate(self.evictions):
            if evict_stage == stage and condition():
                del self.evictions[k]
                # the scheduler marks the victim, then deletes it: it stays, terminating, until its finalizer goes
                disrupted = [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "PreemptionByScheduler",
                        "message": "preempted by a higher-priority pod",
                    }
                ]
                self._set_status(name, {"conditions": disrupted})
                self.core.delete_namespaced_pod(name, NAMESPACE)
                code = self._terminate(name, pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
                self.evicted.append(name)
                self._terminated(name, "Failed", code, "Error", disrupted)
                return
        if proc.poll() is not None:
            code = (
                128 - proc.returncode if proc.returncode < 0 else proc.returncode
            )  # killed by signal N: 128 + N, as a container runtime reports it
            self._terminated(name, "Succeeded" if code == 0 else "Failed", code, "Completed" if code == 0 else "Error")

    def create_secret(self, name: str, data: dict[str, str]) -> None:
        """A Secret in the namespace, its values base64-encoded in `data` as the API server stores them."""
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        self.core.create_namespaced_secret(
            NAMESPACE,
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": encoded},
        )

    def read_secret(self, name: str) -> dict[str, str] | None:
        try:
            found = self._dict(self.core.read_namespaced_secret(name, NAMESPACE))
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}

    def _environment(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str] | str:
        """The container's environment as the kubelet builds it (envFrom first, then env), or why it cannot start:
        a Secret or key that is not there is CreateContainerConfigError, and the pod waits (Pending) for it."""
        annotations = pod["metadata"].get("annotations") or {}
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            secret = self.read_secret(source["secretRef"]["name"])
            if secret is None:
                return f'secret "{source["secretRef"]["name"]}" not found'
            env.update(secret)
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "resourceFieldRef" in e["valueFrom"]:
                env[e["name"]] = _resource_field(container, e["valueFrom"]["resourceFieldRef"])
            elif "secretKeyRef" in e["valueFrom"]:
                ref = e["valueFrom"]["secretKeyRef"]
                secret = self.read_secret(ref["name"])
                if secret is None or ref["key"] not in secret:
                    return (
                        f'secret "{ref["name"]}" not found'
                        if secret is None
                        else f"couldn't find key {ref['key']} in Secret {NAMESPACE}/{ref['name']}"
                    )
                env[e["name"]] = secret[ref["key"]]
            else:  # only the fieldRef to an annotation that Indexed Jobs use
                key = re.search(r"annotations\['([^']+)'\]", e["valueFrom"]["fieldRef"]["fieldPath"]).group(1)
                env[e["name"]] = annotations[key]
        return env

    def _start(self, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        name = pod["metadata"]["name"]
        env = self._environment(pod, container)
        if isinstance(env, str):
            waiting = {"reason": "CreateContainerConfigError", "message": env}
            self._set_status(
                name,
                {
                    "phase": "Pending",
                    "containerStatuses": [
                        {
                            "name": container["name"],
                            "ready": False,
                            "restartCount": 0,
                            "image": container["image"],
                            "imageID": "",
                            "state": {"waiting": waiting},
                        }
                    ],
                },
            )
            return
        argv = [
            re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            for a in container["command"] + container["args"]
        ]
        cwd = self.workdir
        if self.runtime:
            argv, env = (
                self.runtime.command(pod["spec"], container, argv, env, self.workdir / "pods" / name),
                {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        else:
            # "the image" is this checkout: its code first on the path and as the working directory (the image's
            # WORKDIR /app holds the code), whatever tree the venv's editable install points to
            home = self.workdir / "home"
            home.mkdir(exist_ok=True)
            path = f"{BIN}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin"
            env = {"PATH": path, "HOME": str(home), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **env}
            cwd = ROOT
        with open(self.workdir / "logs" / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._set_status(
            name,
            {
                "phase": "Running",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": "stage",
                        "ready": True,
                        "restartCount": 0,
                        "image": container["image"],
                        "imageID": "",
                        "state": {"running": {"startedAt": _now()}},
                    }
                ],
            },
        )

    def _terminated(
        self, name: str, phase: str, code: int, reason: str, conditions: list[dict[str, Any]] | None = None
    ) -> None:
        status: dict[str, Any] = {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": "stage",
                    "ready": False,
                    "restartCount": 0,
                    "image": "x",
                    "imageID": "",
                    "state": {"terminated": {"exitCode": code, "reason": reason, "finishedAt": _now()}},
                }
            ],
        }
        if conditions:
            status["conditions"] = conditions
        self._set_status(name, status)

    def _terminate(self, name: str, grace_s: float) -> int:
        """What the kubelet does to a pod it stops: SIGTERM, up to `grace_s` to exit, then SIGKILL; the exit code."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return 128 - proc.returncode if proc.returncode < 0 else proc.returncode

    def _kill(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _resource_field(container: dict[str, Any], ref: dict[str, Any]) -> str:
    """The downward API's value of a container's resource (requests.cpu, limits.memory, ...), as the kubelet
    computes it: the quantity divided by `divisor` (default 1) and rounded up to a whole number (Kubernetes'
    ExtractContainerResourceValue). Only set quantities: an unset limit would be the node's allocatable."""
    kind, resource = ref["resource"].split(".", 1)
    quantity = parse_quantity(container["resources"][kind][resource])
    return str(math.ceil(quantity / parse_quantity(ref.get("divisor", "1"))))
