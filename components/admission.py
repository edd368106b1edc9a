"""What the team namespace admits, as the Kubernetes API server decides it for a pod.

Three admission steps, written down once so that the platform renders only pods that pass
them and the tests can prove it for every pod template:

- resource **quantities** (`500m`, `16Gi`) as numbers, with Kubernetes' own bounds;
- the namespace's **LimitRange** defaulting (requests from limits, then the range's
  defaults), the request <= limit rule, and the **ResourceQuota** arithmetic (a pod counts
  the larger of its containers' sum and its largest init container, per resource; a
  quota on `limits.*` refuses a pod that has no limit for it);
- the **restricted Pod Security Standard** checks (pod-security.kubernetes.io/enforce).

Pure Python, no Pulumi: the spec checks endpoints against the quota with it, the tenancy
component renders the LimitRange and the ResourceQuota from it, and the tests run every
rendered pod through `admit`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"

# --- quantities ------------------------------------------------------------------------------

_SUFFIXES: dict[str, Fraction] = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    **{suffix: Fraction(10 ** (3 * i)) for i, suffix in enumerate("kMGTPE", 1)},
    **{f"{suffix}i": Fraction(2 ** (10 * i)) for i, suffix in enumerate("KMGTPE", 1)},
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")
# "No quantity may represent a number greater than 2^63-1 in magnitude" (apimachinery).
MAX_QUANTITY = Fraction(2**63 - 1)


def quantity(value: str | int | float) -> Fraction:
    """A Kubernetes quantity as an exact number (`"500m"` -> 1/2, `"2Gi"` -> 2147483648)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    text = str(value)
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (such as 4, 500m or 16Gi)")
    number = Fraction(match[1]) * _SUFFIXES[match[2]]
    if number > MAX_QUANTITY:
        raise ValueError(f"{text!r} is larger than Kubernetes allows (2^63-1)")
    return number


def fmt_quantity(value: Fraction, resource: str) -> str:
    """A readable quantity: whole CPUs or millicores; memory in Gi, Mi or bytes."""
    if resource == "cpu":
        return str(int(value)) if value.denominator == 1 else f"{int(value * 1000)}m"
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20)):
        if value % size == 0:
            return f"{int(value / size)}{suffix}"
    return str(int(value))


# --- the namespace's LimitRange and ResourceQuota ----------------------------------------------

# Containers that say nothing get these; every pod the platform renders sets its own.
DEFAULT_REQUEST = {"cpu": "250m", "memory": "512Mi"}
DEFAULT_LIMIT = {"cpu": "1", "memory": "2Gi"}


def limit_range_spec() -> dict[str, Any]:
    """The team namespace's LimitRange: defaults, so no pod dodges the quota."""
    return {
        "limits": [
            {
                "type": "Container",
                "defaultRequest": dict(DEFAULT_REQUEST),
                "default": dict(DEFAULT_LIMIT),
            }
        ]
    }


# The init container that fetches a Kubernetes endpoint's model before the server starts.
FETCH_MODEL_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}

# The resources a pod's usage is counted in (what `ResourceQuota.spec.hard` may name).
COMPUTE = ("cpu", "memory", GPU_RESOURCE)


@dataclass(frozen=True)
class PodUsage:
    """What one pod charges to the quota."""

    requests: dict[str, Fraction]
    limits: dict[str, Fraction]

    def scaled(self, count: int) -> PodUsage:
        return PodUsage(
            {k: v * count for k, v in self.requests.items()},
            {k: v * count for k, v in self.limits.items()},
        )

    def __add__(self, other: PodUsage) -> PodUsage:
        return PodUsage(
            _merge(self.requests, other.requests, sum), _merge(self.limits, other.limits, sum)
        )

    def at_least(self, other: PodUsage) -> PodUsage:
        return PodUsage(
            _merge(self.requests, other.requests, max), _merge(self.limits, other.limits, max)
        )


def _merge(a: dict[str, Fraction], b: dict[str, Fraction], how: Any) -> dict[str, Fraction]:
    return {k: how((a.get(k, Fraction(0)), b.get(k, Fraction(0)))) for k in set(a) | set(b)}


@dataclass
class Admission:
    """The verdict on one pod: what it charges, and why it would be refused (if it would)."""

    usage: PodUsage
    problems: list[str] = field(default_factory=list)

    @property
    def admitted(self) -> bool:
        return not self.problems


def defaulted_resources(
    container: Mapping[str, Any], limit_range: Mapping[str, Any]
) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    """A container's requests and limits after API defaulting and the LimitRange.

    The API server first copies a limit into a missing request; the LimitRanger then adds
    the range's `default` limits and `defaultRequest` requests where still missing.
    """
    resources = container.get("resources") or {}
    limits = {k: quantity(v) for k, v in (resources.get("limits") or {}).items()}
    requests = {k: quantity(v) for k, v in (resources.get("requests") or {}).items()}
    for key, value in limits.items():
        requests.setdefault(key, value)
    for item in limit_range.get("limits", []):
        if item.get("type") != "Container":
            continue
        for key, value in (item.get("default") or {}).items():
            limits.setdefault(key, quantity(value))
        for key, value in (item.get("defaultRequest") or {}).items():
            requests.setdefault(key, quantity(value))
    return requests, limits


def admit(
    pod_spec: Mapping[str, Any],
    limit_range: Mapping[str, Any],
    quota_hard: Mapping[str, Any],
    *,
    replicas: int = 1,
    used: PodUsage | None = None,
) -> Admission:
    """Whether `replicas` copies of a pod fit the LimitRange and the quota (after `used`)."""
    problems: list[str] = []
    sums = PodUsage({}, {})
    init = PodUsage({}, {})
    containers = [(c, False) for c in pod_spec.get("containers") or []]
    containers += [(c, True) for c in pod_spec.get("initContainers") or []]
    for container, is_init in containers:
        name = container.get("name", "?")
        requests, limits = defaulted_resources(container, limit_range)
        for key, request in requests.items():
            if key in limits and request > limits[key]:
                problems.append(
                    f"container {name}: {key} request {fmt_quantity(request, key)} is above "
                    f"its limit {fmt_quantity(limits[key], key)}"
                )
            if "/" in key and key in limits and request != limits[key]:
                problems.append(f"container {name}: {key} request must equal its limit")
        for item in limit_range.get("limits", []):
            for key, ceiling in (item.get("max") or {}).items():
                if limits.get(key, Fraction(0)) > quantity(ceiling):
                    problems.append(f"container {name}: {key} limit is above the range's max")
        if is_init:
            init = init.at_least(PodUsage(requests, limits))
        else:
            sums = sums + PodUsage(requests, limits)
    # Init containers run one at a time, before the others: the pod needs the larger.
    pod = sums.at_least(init)
    for key in quota_hard:
        kind, _, resource = key.partition(".")
        tracked = kind == "limits" and resource in COMPUTE and resource != GPU_RESOURCE
        if tracked and resource not in pod.limits:
            problems.append(f"the quota tracks {key}: every container must have a {resource} limit")
    if "pods" in quota_hard and replicas > int(quota_hard["pods"]):
        problems.append(f"{replicas} pod(s) exceed the quota of {quota_hard['pods']} pods")
    total = pod.scaled(replicas) + (used or PodUsage({}, {}))
    problems += over_quota(total, quota_hard, f"for {replicas} pod(s) ")
    return Admission(pod, problems)


def over_quota(usage: PodUsage, quota_hard: Mapping[str, Any], what: str = "") -> list[str]:
    """The compute quotas (`requests.*`, `limits.*`) that `usage` exceeds."""
    problems = []
    for key, hard in quota_hard.items():
        kind, _, resource = key.partition(".")
        if kind not in ("requests", "limits") or resource not in COMPUTE:
            continue
        charged = (usage.limits if kind == "limits" else usage.requests).get(resource, Fraction(0))
        if charged > quantity(hard):
            problems.append(
                f"{key}: {fmt_quantity(charged, resource)} {what}exceeds the quota of {hard}"
            )
    return problems


# --- the restricted Pod Security Standard ------------------------------------------------------

# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted, v1.25+)
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_VOLUME_META = {"name"}
BASELINE_CAPABILITIES = frozenset(
    {
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
)
SAFE_SYSCTLS = frozenset(
    {
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
)


def _containers(pod_spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod_spec.get(key) or []


def restricted_violations(pod_spec: Mapping[str, Any]) -> list[str]:
    """Why the `restricted` Pod Security level would refuse this pod (empty: admitted).

    Baseline controls first (host namespaces, privileged, capabilities, hostPath, host
    ports, AppArmor, SELinux, /proc mount, seccomp, sysctls), then the restricted ones
    (volume types, privilege escalation, non-root, seccomp profile, drop ALL).
    """
    out: list[str] = []
    pod_sc = pod_spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            out.append(f"{key} is true")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("windowsOptions.hostProcess is true")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - _VOLUME_META
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            kind = sorted(kinds - RESTRICTED_VOLUME_TYPES)
            out.append(f"volume {volume.get('name')} is of type {kind}")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_sc.get("runAsUser") == 0:
        out.append("pod runAsUser is 0")
    if pod_seccomp == "Unconfined":
        out.append("pod seccompProfile is Unconfined")
    for c in _containers(pod_spec):
        name = c.get("name", "?")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"container {name} is privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"container {name} windowsOptions.hostProcess is true")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"container {name} uses hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"container {name} procMount is {sc['procMount']}")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"container {name} appArmorProfile is Unconfined")
        se_type = (sc.get("seLinuxOptions") or {}).get("type")
        if se_type not in (None, "", "container_t", "container_init_t", "container_kvm_t"):
            out.append(f"container {name} seLinuxOptions.type is {se_type}")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"container {name} must set allowPrivilegeEscalation: false")
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            out.append(f"container {name} must run as non-root (runAsNonRoot: true)")
        if sc.get("runAsUser") == 0:
            out.append(f"container {name} runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"container {name} needs seccompProfile RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"container {name} must drop ALL capabilities")
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            out.append(f"container {name} adds capabilities {sorted(added)}")
    return out
