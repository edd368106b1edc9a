"""Rollout to a SageMaker endpoint with boto3.

boto3 rather than the SageMaker SDK v3: `ModelBuilder.deploy(update_endpoint=True)` raises
in 3.27.0, and a blue/green update with auto-rollback is one UpdateEndpoint call anyway.

An endpoint that exists gets a new Model and EndpointConfig, then a blue/green UpdateEndpoint
that bakes under the endpoint's 5XX and latency alarms and rolls back on either; the outcome
is read from the endpoint once it settles (its config is the new one, or it rolled back).
An endpoint that does not exist yet (unpinned, non-prod: the stack leaves it to the first
deploy) is created from what the stack exported, then registered with Application Auto
Scaling and given its target-tracking policy; its alarms are the stack's already.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workloads.jobs.rollout import Deployer, DeployResult, RolloutError
from workloads.jobs.rollout.clients import aws_clients
from workloads.jobs.rollout.images import check_image, image_with_tag
from workloads.jobs.rollout.sagemaker_request import (
    Target,
    container,
    create_endpoint_request,
    create_model_request,
    endpoint_config_request,
    resource_name,
    scalable_target_request,
    scaling_policy_request,
    target_from_descriptor,
    target_from_endpoint,
    update_endpoint_request,
)
from workloads.platform import EndpointRef, PlatformDescriptor
from workloads.registry.store import ModelVersion

SETTLING = {"Creating", "Updating", "SystemUpdating", "RollingBack"}
POLL_S = 30.0
TIMEOUT_S = 3 * 3600.0


@dataclass
class _Plan:
    endpoint: str
    target: Target
    version: ModelVersion
    primary: dict[str, Any]
    exists: bool


class SageMakerDeployer(Deployer):
    kind = "sagemaker"

    def __init__(
        self,
        descriptor: PlatformDescriptor,
        registry: Any,
        *,
        session: Any = None,
        sagemaker: Any = None,
        autoscaling: Any = None,
        ecr: Any = None,
        cloudwatch: Any = None,
        poll_s: float = POLL_S,
        timeout_s: float = TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
        stamp: Callable[[], str] = lambda: time.strftime("%Y%m%d%H%M%S"),
    ):
        super().__init__(descriptor, registry)
        clients = aws_clients(
            descriptor, session, sagemaker=sagemaker, autoscaling=autoscaling, ecr=ecr,
            cloudwatch=cloudwatch,
        )  # fmt: skip
        self.sagemaker, self.autoscaling = clients["sagemaker"], clients["autoscaling"]
        self.ecr, self.cloudwatch = clients["ecr"], clients["cloudwatch"]
        self.poll_s, self.timeout_s, self.sleep, self.stamp = poll_s, timeout_s, sleep, stamp

    # --- checks -----------------------------------------------------------------------------

    def describe_endpoint(self, name: str) -> dict[str, Any] | None:
        try:
            return self.sagemaker.describe_endpoint(EndpointName=name)
        except self.sagemaker.exceptions.ClientError as exc:
            if "Could not find endpoint" in str(exc):
                return None
            raise

    def _live_target(self, live: dict[str, Any]) -> Target:
        config = self.sagemaker.describe_endpoint_config(
            EndpointConfigName=live["EndpointConfigName"]
        )
        model_name = config["ProductionVariants"][0]["ModelName"]
        model = self.sagemaker.describe_model(ModelName=model_name)
        variant = config["ProductionVariants"][0]["VariantName"]
        alarms = []
        for metric in ("Invocation5XXErrors", "ModelLatency"):
            found = self.cloudwatch.describe_alarms_for_metric(
                MetricName=metric,
                Namespace="AWS/SageMaker",
                Dimensions=[
                    {"Name": "EndpointName", "Value": live["EndpointName"]},
                    {"Name": "VariantName", "Value": variant},
                ],
            )
            alarms += [a["AlarmName"] for a in found.get("MetricAlarms", [])]
        return target_from_endpoint(live, config, model, alarms)

    def _check_alarms(self, target: Target) -> None:
        if not target.alarms:
            raise RolloutError(
                f"endpoint {target.endpoint} has no 5XX or latency alarm to roll back on; "
                "run `pulumi up` for the stack first"
            )
        found = self.cloudwatch.describe_alarms(AlarmNames=list(target.alarms))
        names = {a["AlarmName"] for a in found.get("MetricAlarms", [])}
        missing = [a for a in target.alarms if a not in names]
        if missing:
            raise RolloutError(
                f"endpoint {target.endpoint}: alarm(s) {', '.join(missing)} do not exist; "
                "run `pulumi up` for the stack first"
            )

    def _prepare(
        self, endpoint: str, ref: EndpointRef, version: ModelVersion, image_tag: str | None
    ) -> _Plan:
        repository = self.descriptor.registry.repositories.get("serve")
        image = image_with_tag(repository, image_tag) if image_tag else None
        check_image(self.ecr, image or version.image)
        primary = container(version, image)
        live = self.describe_endpoint(ref.name)
        exported = target_from_descriptor(ref)
        if live is None:
            if exported is None:
                raise RolloutError(
                    f"endpoint {ref.name} does not exist and the stack's descriptor does not "
                    "say how to create it; run `pulumi up` for the stack first"
                )
            target, exists = exported, False
        else:
            if live["EndpointStatus"] != "InService":
                raise RolloutError(
                    f"endpoint {ref.name} is {live['EndpointStatus']}; deploy once it is InService"
                )
            # What the stack exports wins (it may have changed since the endpoint was made);
            # a descriptor without it: copy the live endpoint's settings.
            target, exists = exported or self._live_target(live), True
        self._check_alarms(target)
        return _Plan(endpoint, target, version, primary, exists)

    # --- rollout ----------------------------------------------------------------------------

    def create_model(self, target: Target, version: ModelVersion, primary: dict) -> str:
        name = resource_name(target.endpoint, version.version, self.stamp())
        self.sagemaker.create_model(**create_model_request(target, name, primary, version))
        return name

    def _roll(self, plan: _Plan) -> DeployResult:
        target, version = plan.target, plan.version
        model = self.create_model(target, version, plan.primary)
        config = model  # one name for the pair: they belong together
        self.sagemaker.create_endpoint_config(**endpoint_config_request(target, config, model))
        messages = [f"model {model} and endpoint config {config} created"]
        if plan.exists:
            self.sagemaker.update_endpoint(**update_endpoint_request(target, config))
            messages.append(f"blue/green update started, rolled back on {', '.join(target.alarms)}")
        else:
            self.sagemaker.create_endpoint(**create_endpoint_request(target, config))
            messages.append(f"endpoint {target.endpoint} being created")
        final = self.wait(target.endpoint)
        if final["EndpointStatus"] != "InService":
            raise RolloutError(
                f"endpoint {target.endpoint} is {final['EndpointStatus']}: "
                f"{final.get('FailureReason', 'no reason given')}"
            )
        if final["EndpointConfigName"] != config:
            raise RolloutError(
                f"{version.group} v{version.version} was rolled back on {target.endpoint}: "
                f"{final.get('FailureReason') or 'an alarm fired during the bake'}; it still "
                f"serves {final['EndpointConfigName']}"
            )
        if not plan.exists:
            self.autoscaling.register_scalable_target(**scalable_target_request(target))
            self.autoscaling.put_scaling_policy(**scaling_policy_request(target))
            messages.append(
                f"autoscaling {target.min_instances}-{target.max_instances} instances "
                f"({target.policy_name})"
            )
        messages.append(f"{target.endpoint} InService with {version.group} v{version.version}")
        return DeployResult(
            endpoint=plan.endpoint,
            physical=target.endpoint,
            version=version.version,
            outcome="deployed" if plan.exists else "created",
            messages=messages,
        )

    def wait(self, name: str) -> dict[str, Any]:
        """Describe the endpoint until it settles (InService, Failed, ...) or time runs out."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            described = self.sagemaker.describe_endpoint(EndpointName=name)
            if described["EndpointStatus"] not in SETTLING:
                return described
            if time.monotonic() > deadline:
                raise RolloutError(
                    f"endpoint {name} still {described['EndpointStatus']} after "
                    f"{self.timeout_s:.0f} s; see it in the SageMaker console"
                )
            self.sleep(self.poll_s)
