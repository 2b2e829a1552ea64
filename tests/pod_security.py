"""The Kubernetes Pod Security Standards, "baseline" and "restricted" (policy version latest), as checks on a
pod spec: what the PodSecurity admission controller of a namespace labelled
`pod-security.kubernetes.io/enforce: restricted` refuses.

Written here from the standard's published table (kubernetes.io/docs/concepts/security/pod-security-standards)
because its one implementation, k8s.io/pod-security-admission, is a Go library with no Python binding and no
API server runs on these machines (STACK.md). Each rule keeps the table's name, so a refusal reads like the
controller's.
"""

from __future__ import annotations

from typing import Any

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for key in ("containers", "initContainers", "ephemeralContainers") for c in pod.get(key) or []]


def violations(pod: dict[str, Any], annotations: dict[str, str] | None = None, level: str = "restricted") -> list[str]:
    """Every rule of `level` ("baseline" or "restricted") the pod spec breaks, as "rule: where"."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = _containers(pod)

    def each(rule: str, bad: bool, where: str) -> None:
        if bad:
            out.append(f"{rule}: {where}")

    # --- baseline
    each("HostProcess", bool((psc.get("windowsOptions") or {}).get("hostProcess")), "spec.securityContext")
    for ns in ("hostNetwork", "hostPID", "hostIPC"):
        each("Host Namespaces", bool(pod.get(ns)), f"spec.{ns}")
    each("HostPath Volumes", any("hostPath" in v for v in pod.get("volumes") or []), "spec.volumes")
    each(
        "Sysctls",
        any(s.get("name") not in SAFE_SYSCTLS for s in psc.get("sysctls") or []),
        "spec.securityContext.sysctls",
    )
    for where, sc in [("spec.securityContext", psc)] + [
        (f"container {c['name']}", c.get("securityContext") or {}) for c in containers
    ]:
        each(
            "AppArmor",
            (sc.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"),
            where,
        )
        se = sc.get("seLinuxOptions") or {}
        each("SELinux", se.get("type", "") not in SELINUX_TYPES or "user" in se or "role" in se, where)
        each("Seccomp", (sc.get("seccompProfile") or {}).get("type") == "Unconfined", where)
    for key, value in (annotations or {}).items():
        each(
            "AppArmor",
            key.startswith("container.apparmor.security.beta.kubernetes.io/")
            and value != "runtime/default"
            and not value.startswith("localhost/"),
            key,
        )
    for c in containers:
        sc, where = c.get("securityContext") or {}, f"container {c['name']}"
        each("HostProcess", bool((sc.get("windowsOptions") or {}).get("hostProcess")), where)
        each("Privileged Containers", bool(sc.get("privileged")), where)
        each("Capabilities", not set((sc.get("capabilities") or {}).get("add") or []) <= BASELINE_CAPABILITIES, where)
        each("Host Ports", any(p.get("hostPort") for p in c.get("ports") or []), where)
        each("/proc Mount Type", sc.get("procMount", "Default") != "Default", where)
    if level == "baseline":
        return out

    # --- restricted
    for v in pod.get("volumes") or []:
        each("Volume Types", not (set(v) - {"name"}) <= RESTRICTED_VOLUMES, f"volume {v.get('name')}")
    each("Running as Non-root user", psc.get("runAsUser") == 0, "spec.securityContext")
    for c in containers:
        sc, where = c.get("securityContext") or {}, f"container {c['name']}"
        each("Privilege Escalation", sc.get("allowPrivilegeEscalation") is not False, where)
        # runAsNonRoot: the pod's true unless the container says otherwise; or the container's own true
        each("Running as Non-root", sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True, where)
        each("Running as Non-root user", sc.get("runAsUser") == 0, where)
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        each("Seccomp", seccomp not in ("RuntimeDefault", "Localhost"), where)
        caps = sc.get("capabilities") or {}
        each(
            "Capabilities",
            "ALL" not in (caps.get("drop") or []) or not set(caps.get("add") or []) <= {"NET_BIND_SERVICE"},
            where,
        )
    return out
