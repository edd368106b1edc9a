"""Batch scoring as a SageMaker Batch Transform job (boto3).

The job runs the approved model package (or its artifact in another tag of the serve image)
as a Model with the team's training role, in the team's subnets, network-isolated, with the
team key on its volumes and output. Every object under INPUT_URI is split by line and sent
as header-less CSV rows (the columns the model was trained on, in order); the serving
container's `GET /execution-parameters` sets concurrency, batch strategy and payload size.
SageMaker writes `<object>.out` under OUTPUT_URI: JSON lines of predictions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workloads.jobs.batch import BatchBackend, BatchJobError, BatchResult
from workloads.jobs.rollout.clients import aws_clients
from workloads.jobs.rollout.images import check_image, image_with_tag
from workloads.jobs.rollout.sagemaker_request import (
    Target,
    container,
    create_model_request,
    resource_name,
    transform_job_request,
)
from workloads.platform import PlatformDescriptor
from workloads.registry.store import ModelVersion

POLL_S = 30.0
TIMEOUT_S = 24 * 3600.0
INSTANCE_TYPE = "ml.m5.xlarge"


@dataclass
class _Plan:
    name: str
    target: Target
    version: ModelVersion
    primary: dict[str, Any]
    request: dict[str, Any]


class TransformBackend(BatchBackend):
    name = "sagemaker"

    def __init__(
        self,
        descriptor: PlatformDescriptor,
        registry: Any,
        *,
        session: Any = None,
        sagemaker: Any = None,
        ecr: Any = None,
        instance_type: str = INSTANCE_TYPE,
        instance_count: int = 1,
        poll_s: float = POLL_S,
        timeout_s: float = TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
        stamp: Callable[[], str] = lambda: time.strftime("%Y%m%d%H%M%S"),
    ):
        super().__init__(descriptor, registry)
        clients = aws_clients(descriptor, session, sagemaker=sagemaker, ecr=ecr)
        self.sagemaker, self.ecr = clients["sagemaker"], clients["ecr"]
        self.instance_type, self.instance_count = instance_type, instance_count
        self.poll_s, self.timeout_s, self.sleep, self.stamp = poll_s, timeout_s, sleep, stamp

    def _prepare(
        self, version: ModelVersion, input_uri: str, output_uri: str, image_tag: str | None
    ) -> _Plan:
        for what, uri in (("INPUT_URI", input_uri), ("OUTPUT_URI", output_uri)):
            if not uri.startswith("s3://"):
                raise BatchJobError(f"{what} {uri!r}: a Batch Transform job reads and writes s3://")
        training = self.descriptor.training
        if training is None:
            raise BatchJobError(
                f"stack {self.descriptor.stack!r}: the descriptor has no training section (the "
                "role batch jobs run with); run `pulumi up` for the stack first"
            )
        repository = self.descriptor.registry.repositories.get("serve")
        image = image_with_tag(repository, image_tag) if image_tag else None
        check_image(self.ecr, image or version.image)
        physical = self.descriptor.registry.model_groups[version.group].name
        name = resource_name(f"{physical}-batch", version.version, self.stamp())
        tags = {"team": self.descriptor.team, "environment": self.descriptor.environment}
        target = Target(
            endpoint=name,
            variant="",
            instance_type=self.instance_type,
            instance_count=self.instance_count,
            role_arn=training.role_arn,
            subnets=tuple(training.subnet_ids),
            security_groups=tuple(training.security_group_ids),
            network_isolation=True,
            volume_kms_key_arn=training.kms_key_arn,
            data_capture=None,
            alarms=(),
            tags=tags,
        )
        request = transform_job_request(
            name=name,
            model_name=name,
            input_uri=input_uri,
            output_uri=output_uri,
            instance_type=self.instance_type,
            instance_count=self.instance_count,
            kms_key_arn=training.kms_key_arn,
            tags=tags,
        )
        return _Plan(name, target, version, container(version, image), request)

    def _run(self, plan: _Plan) -> BatchResult:
        self.sagemaker.create_model(
            **create_model_request(plan.target, plan.name, plan.primary, plan.version)
        )
        self.sagemaker.create_transform_job(**plan.request)
        final = self.wait(plan.name)
        status = final["TransformJobStatus"]
        if status != "Completed":
            raise BatchJobError(
                f"transform job {plan.name} {status.lower()}: "
                f"{final.get('FailureReason', 'no reason given')}"
            )
        output = plan.request["TransformOutput"]["S3OutputPath"]
        return BatchResult(
            job=plan.name,
            version=plan.version.version,
            output_uri=output,
            messages=[f"transform job {plan.name} completed: predictions in {output}"],
        )

    def wait(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            described = self.sagemaker.describe_transform_job(TransformJobName=name)
            if described["TransformJobStatus"] not in ("InProgress", "Stopping"):
                return described
            if time.monotonic() > deadline:
                raise BatchJobError(
                    f"transform job {name} still {described['TransformJobStatus']} after "
                    f"{self.timeout_s:.0f} s"
                )
            self.sleep(self.poll_s)
