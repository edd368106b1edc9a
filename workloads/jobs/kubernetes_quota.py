"""How many copies of a Job the team namespace's ResourceQuotas admit at once.

A Job's pods charge the quota what their containers request and limit (after the API
server copies a limit into a missing request), once per pod (`parallelism` pods); a quota
on `pods` or `count/jobs.batch` counts them. Each compute key of `spec.hard` that the pod
charges gives a ceiling, `hard // charge`; the lowest wins. Extended resources such as
`nvidia.com/gpu` are quota'd on `requests.` only (requests equal limits for them).
`status.used` says what the namespace runs now, for the message: a quota is shared with
the team's other work, so trials past what is free wait in Pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from components.admission import COMPUTE, GPU_RESOURCE, defaulted_resources, fmt_quantity, quantity

COUNTS = {"pods", "count/pods", "count/jobs.batch"}


@dataclass(frozen=True)
class Ceiling:
    quota: str  # the ResourceQuota's name
    key: str  # the `spec.hard` key
    hard: str
    charge: Fraction  # what one Job charges to `key`
    slots: int  # how many such Jobs fit
    used: str | None = None  # `status.used[key]` when something uses it now

    def describe(self) -> str:
        resource = self.key.partition(".")[2] or self.key
        if resource in ("cpu", "memory"):
            each = fmt_quantity(self.charge, resource)
        else:
            each = str(int(self.charge)) if self.charge.denominator == 1 else str(self.charge)
        return f"ResourceQuota {self.quota}: {self.key}={self.hard}, each trial asks for {each}"


@dataclass
class QuotaFit:
    """The quotas' verdict: `slots` (None: no quota limits these Jobs) and the ceilings
    from the lowest up."""

    namespace: str
    ceilings: list[Ceiling] = field(default_factory=list)

    @property
    def slots(self) -> int | None:
        return min((c.slots for c in self.ceilings), default=None)

    @property
    def binding(self) -> Ceiling | None:
        return self.ceilings[0] if self.ceilings else None

    def gpu(self) -> Ceiling | None:
        return next((c for c in self.ceilings if c.key == f"requests.{GPU_RESOURCE}"), None)


def job_charge(job: dict[str, Any]) -> dict[str, Fraction]:
    """What one Job manifest charges to each quota key while all its pods run."""
    spec = job["spec"]
    pods = int(spec.get("parallelism", 1))
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    for container in spec["template"]["spec"].get("containers") or []:
        req, lim = defaulted_resources(container, {})
        for key, value in req.items():
            requests[key] = requests.get(key, Fraction(0)) + value
        for key, value in lim.items():
            limits[key] = limits.get(key, Fraction(0)) + value
    charge = {f"requests.{k}": v * pods for k, v in requests.items()}
    charge |= {f"limits.{k}": v * pods for k, v in limits.items()}
    charge |= {k: charge[f"requests.{k}"] for k in ("cpu", "memory") if f"requests.{k}" in charge}
    charge |= {"pods": Fraction(pods), "count/pods": Fraction(pods)}
    charge["count/jobs.batch"] = Fraction(1)
    return charge


def fit(job: dict[str, Any], quotas: list[Any], namespace: str) -> QuotaFit:
    """How many copies of `job` the namespace's quotas (official-client objects) admit."""
    charge = job_charge(job)
    out = QuotaFit(namespace)
    for q in quotas:
        hard = dict((q.spec.hard if q.spec else None) or {})
        used = dict((q.status.used if q.status else None) or {})
        for key, value in hard.items():
            kind, _, resource = key.partition(".")
            counted = key in COUNTS or (kind in ("requests", "limits") and resource in COMPUTE)
            counted = counted or key in ("cpu", "memory")
            if not counted or not charge.get(key):
                continue
            slots = int(quantity(value) // charge[key])
            out.ceilings.append(
                Ceiling(q.metadata.name, key, str(value), charge[key], slots, used.get(key))
            )
    out.ceilings.sort(key=lambda c: (c.slots, c.key != f"requests.{GPU_RESOURCE}"))
    return out


def read_fit(core: Any, namespace: str, job: dict[str, Any]) -> QuotaFit:
    """`fit` against the namespace's ResourceQuotas, read with `core` (a CoreV1Api)."""
    quotas = core.list_namespaced_resource_quota(namespace).items
    return fit(job, list(quotas), namespace)
