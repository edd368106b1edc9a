"""Rollout: serve an approved model version on an endpoint (`mlinfra deploy`).

One interface, one backend per endpoint kind, side by side: `sagemaker.py` (a new Model and
EndpointConfig, then a blue/green UpdateEndpoint with auto-rollback on the endpoint's
alarms, or CreateEndpoint plus autoscaling on a first deploy), `kubernetes.py` (the
Deployment's model annotation, scaled up from zero on a first deploy, undone when the
rollout does not become ready) and `local.py` (the local environment's endpoint process).

`deploy` checks everything before it creates anything: the endpoint is declared, the stack
does not pin its version (prod and pinned endpoints change through a pull request), the
version exists and is Approved, and the backend's own checks (the image exists in ECR, the
alarms exist). A refusal is one `RolloutError` naming what is wrong.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from workloads.platform import EndpointRef, NotDeclaredError, PlatformDescriptor
from workloads.registry.store import ModelVersion, RegistryError


class RolloutError(RuntimeError):
    """A rollout refused before it started, or one that failed; the message says why."""


class UnknownEndpointError(NotDeclaredError):
    kind = "endpoint"


@dataclass
class DeployResult:
    endpoint: str  # the spec's endpoint name
    physical: str  # the endpoint (or Deployment) name in the cloud
    version: int
    outcome: str  # "deployed", "created", "already serving"
    messages: list[str] = field(default_factory=list)


def approved_version(registry: Any, group: str, version: int | None) -> ModelVersion:
    """The version to serve: the one asked for, which must be Approved, or the newest
    approved one. An undeclared group raises the registry's UnknownGroupError."""
    if version is None:
        latest = registry.latest_approved(group)
        if latest is None:
            raise RolloutError(
                f"model group {group!r} has no approved version to deploy; approve one "
                f"(mlinfra approve {group} N) or pass --version"
            )
        return latest
    try:
        chosen = registry.get(group, version)
    except RegistryError as exc:
        raise RolloutError(str(exc)) from None
    if chosen.status != "Approved":
        raise RolloutError(
            f"{group} v{version} is {chosen.status}, not Approved: only approved versions "
            f"are served (mlinfra approve {group} {version} after review)"
        )
    return chosen


class Deployer(ABC):
    """One backend. `deploy` is written once here; backends implement `_check` and `_roll`."""

    kind: str = ""

    def __init__(self, descriptor: PlatformDescriptor, registry: Any):
        self.descriptor = descriptor
        self.registry = registry

    def deploy(
        self, endpoint: str, version: int | None = None, *, image_tag: str | None = None
    ) -> DeployResult:
        ref = UnknownEndpointError.lookup(self.descriptor.endpoints, endpoint)
        if ref.version_owner == "stack":
            raise RolloutError(
                f"endpoint {endpoint!r} serves the version its stack config pins "
                f"(modelVersion: {ref.model_version}) in stack {self.descriptor.stack}: change "
                "modelVersion in the stack config through a pull request"
            )
        chosen = self.approved_version(ref, version)
        plan = self._prepare(endpoint, ref, chosen, image_tag)  # refusals: nothing exists yet
        return self._roll(plan)

    def approved_version(self, ref: EndpointRef, version: int | None) -> ModelVersion:
        return approved_version(self.registry, ref.model_group, version)

    @abstractmethod
    def _prepare(
        self, endpoint: str, ref: EndpointRef, version: ModelVersion, image_tag: str | None
    ) -> Any:
        """Check what the backend needs (raise RolloutError) and return the plan to roll."""

    @abstractmethod
    def _roll(self, plan: Any) -> DeployResult:
        """Carry the plan out and wait for the outcome."""


# Each endpoint kind's backend, imported only when used (its client library with it).
BACKENDS: dict[str, str] = {
    "sagemaker": "workloads.jobs.rollout.sagemaker:SageMakerDeployer",
    "kubernetes": "workloads.jobs.rollout.kubernetes:KubernetesDeployer",
    "local": "workloads.jobs.rollout.local:LocalDeployer",
}


def deployer_for(
    descriptor: PlatformDescriptor, endpoint: str, registry: Any, **clients: Any
) -> Deployer:
    """The backend for an endpoint's kind; `clients` go to its constructor (tests pass fakes)."""
    ref = UnknownEndpointError.lookup(descriptor.endpoints, endpoint)
    target = BACKENDS.get(ref.kind)
    if target is None:
        raise RolloutError(
            f"endpoint {endpoint!r} is of kind {ref.kind!r}; "
            f"deployable kinds: {', '.join(BACKENDS)}"
        )
    module, _, name = target.partition(":")
    backend: type[Deployer] = getattr(importlib.import_module(module), name)
    return backend(descriptor, registry, **clients)


def deploy(
    descriptor: PlatformDescriptor,
    endpoint: str,
    version: int | None = None,
    *,
    image_tag: str | None = None,
    **clients: Any,
) -> DeployResult:
    """Serve `version` (default: the newest approved) of the endpoint's model group."""
    from workloads.registry.store import registry_from_descriptor

    ref = UnknownEndpointError.lookup(descriptor.endpoints, endpoint)
    if ref.model_group not in descriptor.registry.model_groups:
        raise RolloutError(
            f"endpoint {endpoint!r} names model group {ref.model_group!r}, which the "
            "descriptor does not declare"
        )
    registry = registry_from_descriptor(descriptor)
    return deployer_for(descriptor, endpoint, registry, **clients).deploy(
        endpoint, version, image_tag=image_tag
    )
