"""Rollout in the local environment: the endpoint's inference-server process.

A local endpoint serves the newest approved version of its model group (or the version its
stack config pins), exactly as `mlinfra up` reconciles it; deploying restarts the process on
the same port with that version. To serve an older version, reject the newer ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workloads.jobs.rollout import Deployer, DeployResult, RolloutError
from workloads.platform import EndpointRef, PlatformDescriptor
from workloads.registry.store import ModelVersion


@dataclass
class _Plan:
    endpoint: str
    version: ModelVersion


class LocalDeployer(Deployer):
    kind = "local"

    def __init__(
        self, descriptor: PlatformDescriptor, registry: Any, *, stacks_dir: str | Path = "stacks"
    ):
        super().__init__(descriptor, registry)
        if descriptor.local is None:
            raise RolloutError("descriptor: backend is local but it has no `local` section")
        self.stacks_dir = stacks_dir

    def _prepare(
        self, endpoint: str, ref: EndpointRef, version: ModelVersion, image_tag: str | None
    ) -> _Plan:
        if image_tag:
            raise RolloutError("--image-tag: a local endpoint runs this checkout's code, no image")
        latest = self.registry.latest_approved(ref.model_group)
        if latest is not None and latest.version != version.version:
            raise RolloutError(
                f"a local endpoint serves the newest approved version of {ref.model_group!r} "
                f"(v{latest.version}); to serve v{version.version}, reject the newer ones "
                f"(or pin modelVersion in the stack config)"
            )
        return _Plan(endpoint, version)

    def _roll(self, plan: _Plan) -> DeployResult:
        from workloads.local import env as localenv

        assert self.descriptor.local is not None
        root = Path(self.descriptor.local.root)
        result = localenv.rollout(self.descriptor.stack, root.parent, stacks_dir=self.stacks_dir)
        status = next((s for s in result.endpoints if s.name == plan.endpoint), None)
        if status is None or status.model_version != plan.version.version:
            raise RolloutError(
                f"endpoint {plan.endpoint!r} is not serving v{plan.version.version}: "
                f"{status.state if status else 'not in the stack'}"
            )
        return DeployResult(
            endpoint=plan.endpoint,
            physical=status.url,
            version=plan.version.version,
            outcome="deployed" if result.messages else "already serving",
            messages=result.messages,
        )
