"""Batch scoring on the platform (`mlinfra batch`): an approved model version over a dataset.

One interface, one backend per place it runs, side by side: `sagemaker.py` (a SageMaker
Batch Transform job), `kubernetes.py` (a Job on the team's cluster running `batch`) and
`local.py` (the `batch` entrypoint in this process). The version is
checked as a rollout checks it (declared group, Approved) before anything is created.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from workloads.jobs.rollout import RolloutError, approved_version
from workloads.platform import PlatformDescriptor
from workloads.registry.store import ModelVersion


class BatchJobError(RolloutError):
    """A batch job refused before it started, or one that failed; the message says why."""


@dataclass
class BatchResult:
    job: str
    version: int
    output_uri: str
    messages: list[str] = field(default_factory=list)


class BatchBackend(ABC):
    name = ""

    def __init__(self, descriptor: PlatformDescriptor, registry: Any):
        self.descriptor = descriptor
        self.registry = registry

    def run(
        self,
        model_group: str,
        input_uri: str,
        output_uri: str,
        version: int | None = None,
        *,
        image_tag: str | None = None,
    ) -> BatchResult:
        self.registry.ref(model_group)  # an undeclared group: UnknownGroupError, by name
        chosen = approved_version(self.registry, model_group, version)
        plan = self._prepare(chosen, input_uri, output_uri, image_tag)
        return self._run(plan)

    @abstractmethod
    def _prepare(
        self, version: ModelVersion, input_uri: str, output_uri: str, image_tag: str | None
    ) -> Any:
        """Check what the backend needs (raise BatchJobError); return the plan."""

    @abstractmethod
    def _run(self, plan: Any) -> BatchResult: ...


BACKENDS: dict[str, str] = {
    "sagemaker": "workloads.jobs.batch.sagemaker:TransformBackend",
    "kubernetes": "workloads.jobs.batch.kubernetes:KubernetesBatch",
    "local": "workloads.jobs.batch.local:LocalBatch",
}
DEFAULT_BACKEND = {"aws": "sagemaker", "local": "local"}


def batch(
    descriptor: PlatformDescriptor,
    model_group: str,
    input_uri: str,
    output_uri: str,
    version: int | None = None,
    *,
    on: str | None = None,
    image_tag: str | None = None,
    **clients: Any,
) -> BatchResult:
    """Score `input_uri` into `output_uri` with `version` (default: the newest approved)."""
    from workloads.registry.store import registry_from_descriptor

    name = on or DEFAULT_BACKEND[descriptor.backend]
    target = BACKENDS.get(name)
    if target is None:
        raise BatchJobError(f"--on {name!r}: batch runs on {', '.join(BACKENDS)}")
    module, _, attr = target.partition(":")
    backend: type[BatchBackend] = getattr(importlib.import_module(module), attr)
    registry = clients.pop("registry", None) or registry_from_descriptor(descriptor)
    return backend(descriptor, registry, **clients).run(
        model_group, input_uri, output_uri, version, image_tag=image_tag
    )
