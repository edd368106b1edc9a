"""`mlinfra train`: start a job, follow it, then register and gate what it made.

The same steps as the local pipeline after training: the artifact is registered with its
metrics in the model group the job names, the group's approval gate is applied, and the
version and its status are returned. Ctrl-C while waiting stops the job (on Kubernetes the
Job is deleted), so nothing is left running by accident; `--no-wait` leaves it running.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workloads.jobs.base import JobBackend, JobError, JobRequest, JobStatus, get_backend
from workloads.platform import DESCRIPTOR_ENV, PlatformDescriptor, first_problem, load_descriptor


@dataclass
class Registered:
    model_group: str
    version: int
    status: str  # Approved / PendingManualApproval / Rejected
    why: str


@dataclass
class TrainResult:
    backend: str
    job_id: str
    status: JobStatus | None  # None with --no-wait
    registered: Registered | None = None


def apply_gate(
    registry: Any, descriptor: PlatformDescriptor, group: str, version: int, metrics: dict
) -> tuple[str, str]:
    """Approve `version` if its metrics pass the group's gate; (status, why)."""
    current = registry.get(group, version)
    if current.status != "PendingManualApproval":
        return current.status, "decided before"
    gate = descriptor.registry.model_groups[group].gate
    by_hand = f"mlinfra approve {group} {version} --stack {descriptor.stack}"
    if gate is None:
        return current.status, f"the model group has no gate: approve by hand ({by_hand})"
    value = metrics.get(gate.metric)
    sign = ">=" if gate.mode == "max" else "<="
    rule = f"{gate.metric} {sign} {gate.threshold}"
    if value is None:
        return current.status, f"metric {gate.metric!r} missing from {sorted(metrics)}"
    if registry.passes_gate(group, metrics):
        registry.approve(group, version, reason=f"gate {rule}: {value:.4f}")
        return "Approved", f"{gate.metric} {value:.4f} passes {rule}"
    return current.status, f"{gate.metric} {value:.4f} fails {rule}; left pending ({by_hand})"


def register_result(
    descriptor: PlatformDescriptor,
    status: JobStatus,
    group: str,
    serve_image_tag: str | None,
    registry: Any = None,
) -> Registered:
    from workloads.registry.store import registry_from_descriptor

    assert status.artifact_uri is not None
    registry = registry or registry_from_descriptor(descriptor, serve_image_tag=serve_image_tag)
    version = registry.register(
        group,
        status.artifact_uri,
        status.metrics,
        description=f"{status.backend} job {status.id}",
    ).version
    state, why = apply_gate(registry, descriptor, group, version, status.metrics)
    return Registered(group, version, state, why)


def train(
    descriptor: PlatformDescriptor,
    request: JobRequest,
    *,
    on: str | None = None,
    wait: bool = True,
    on_line: Callable[[str], None] | None = None,
    on_submit: Callable[[str, str], None] | None = None,
    serve_image_tag: str | None = None,
    backend: JobBackend | None = None,
    registry: Any = None,
) -> TrainResult:
    """Submit; with `wait`, stream the log, then register and gate a completed job."""
    jobs = backend or get_backend(descriptor, on)
    handle = jobs.submit(request)
    if on_submit is not None:
        on_submit(handle.backend, handle.id)
    if not wait:
        return TrainResult(handle.backend, handle.id, None)
    try:
        final = jobs.wait(handle.id, on_line=on_line)
    except KeyboardInterrupt:
        jobs.cancel(handle.id)
        raise
    result = TrainResult(handle.backend, handle.id, final)
    if final.state == "Completed" and request.model_group:
        result.registered = register_result(
            descriptor,
            final,
            request.model_group,
            serve_image_tag or request.image_tag,
            registry=registry,
        )
    return result


def stack_descriptor(
    stack: str, state_dir: str | Path | None = None, platform: str | Path | None = None
) -> PlatformDescriptor:
    """The descriptor of `stack`: `--platform`, else `$MLINFRA_PLATFORM`, else the local
    environment's `platform.json`. A descriptor of another stack is refused."""
    from workloads.local.env import StackPaths

    source = platform or os.environ.get(DESCRIPTOR_ENV)
    if not source:
        local = StackPaths.of(stack, state_dir).descriptor
        if not local.is_file():
            raise JobError(
                f"no platform descriptor for stack {stack!r}: for the local stack run "
                f"`mlinfra up --stack {stack}`; for a cloud stack pass --platform FILE from "
                f"`pulumi stack output platform --json -s {stack}` (or set {DESCRIPTOR_ENV})"
            )
        source = local
    try:
        descriptor = load_descriptor(source)
    except OSError as exc:  # --platform names no file, or one that cannot be read
        raise JobError(
            f"platform descriptor {source}: cannot be read ({exc.strerror or exc}); pass the "
            f"file from `pulumi stack output platform --json -s {stack}`"
        ) from None
    except ValueError as exc:  # not JSON, or not a descriptor
        raise JobError(
            f"platform descriptor {source}: not a platform descriptor: {first_problem(exc)}"
        ) from None
    if descriptor.stack != stack:
        raise JobError(
            f"the platform descriptor is stack {descriptor.stack!r}, not {stack!r} "
            f"(from {'--platform' if platform else DESCRIPTOR_ENV})"
        )
    return descriptor


def parse_pairs(values: list[str], option: str) -> dict[str, str]:
    """`KEY=VALUE` options (`--channel train=s3://...`, `--hp epochs=5`) as a dict."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key.strip() or not item:
            raise JobError(f"{option} {value!r}: expected KEY=VALUE")
        if key.strip() in out:
            raise JobError(f"{option} {key.strip()!r} given twice")
        out[key.strip()] = item
    return out


def default_job_name(model_group: str | None, now: float | None = None) -> str:
    stamp = time.strftime("%m%d-%H%M%S", time.gmtime(now))
    return f"{model_group or 'train'}-{stamp}"


def job_request(
    *,
    name: str | None,
    channels: list[str],
    hyperparameters: list[str],
    model_group: str | None,
    **fields: Any,
) -> JobRequest:
    return JobRequest(
        name=name or default_job_name(model_group),
        channels=parse_pairs(channels, "--channel"),
        hyperparameters=parse_pairs(hyperparameters, "--hp"),
        model_group=model_group,
        **fields,
    )


def describe_lines(status: JobStatus) -> Mapping[str, str]:
    """What `mlinfra jobs describe` shows, in order."""
    rows = {
        "job": status.id,
        "backend": status.backend,
        "state": status.state,
        "reason": status.reason or "-",
        "created": status.created or "-",
        "image": status.image or "-",
        "artifact": status.artifact_uri or "-",
        "model group": status.model_group or "-",
    }
    for name, uri in status.channels.items():
        rows[f"channel {name}"] = uri
    for key, value in status.hyperparameters.items():
        rows[f"hp {key}"] = value
    for key, value in status.metrics.items():
        rows[f"metric {key}"] = f"{value:.6g}"
    return rows
