"""Batch scoring as a Kubernetes Job on the team's cluster (the official client, lazily).

The Job (see `kubernetes_manifest.py`) runs the serving image; this module creates it, follows
its status until it succeeds or fails (the failure condition's message is the reason), and
reports. The Job's state stays where Kubernetes keeps it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from workloads.jobs.batch import BatchBackend, BatchJobError, BatchResult
from workloads.jobs.batch.kubernetes_manifest import render_batch_job
from workloads.jobs.rollout.clients import aws_clients, kube_api_client
from workloads.jobs.rollout.images import check_image, image_with_tag
from workloads.platform import PlatformDescriptor
from workloads.registry.store import ModelVersion
from workloads.serving.batch import FORMATS

POLL_S = 10.0
TIMEOUT_S = 6 * 3600.0


@dataclass
class _Plan:
    version: ModelVersion
    manifest: dict[str, Any]
    output_uri: str


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """("succeeded" | "failed" | "running", why) from a Job's status."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "succeeded", "complete"
        if condition.get("type") == "Failed":
            return "failed", condition.get("message") or condition.get("reason") or "failed"
    if status.get("succeeded"):
        return "succeeded", "complete"
    return "running", f"{status.get('active') or 0} pod(s) active"


class KubernetesBatch(BatchBackend):
    name = "kubernetes"

    def __init__(
        self,
        descriptor: PlatformDescriptor,
        registry: Any,
        *,
        api_client: Any = None,
        ecr: Any = None,
        session: Any = None,
        poll_s: float = POLL_S,
        timeout_s: float = TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
        stamp: Callable[[], str] = lambda: time.strftime("%Y%m%d%H%M%S"),
    ):
        super().__init__(descriptor, registry)
        from kubernetes import client

        self.api_client = kube_api_client(descriptor, api_client, session)
        self.jobs = client.BatchV1Api(self.api_client)
        self.ecr = aws_clients(descriptor, session, ecr=ecr)["ecr"]
        self.poll_s, self.timeout_s, self.sleep, self.stamp = poll_s, timeout_s, sleep, stamp

    def _prepare(
        self, version: ModelVersion, input_uri: str, output_uri: str, image_tag: str | None
    ) -> _Plan:
        if self.descriptor.cluster is None:
            raise BatchJobError(f"stack {self.descriptor.stack!r} has no Kubernetes cluster")
        if not input_uri.startswith("s3://"):
            raise BatchJobError(f"INPUT_URI {input_uri!r}: a Kubernetes batch Job reads s3://")
        suffix = PurePosixPath(output_uri).suffix.lower()
        if not output_uri.startswith("s3://") or suffix not in FORMATS:
            raise BatchJobError(
                f"OUTPUT_URI {output_uri!r}: an s3:// object ending in {', '.join(sorted(FORMATS))}"
            )
        if not version.arn:
            raise BatchJobError(f"{version.group} v{version.version} has no model package ARN")
        repository = self.descriptor.registry.repositories.get("serve")
        image = image_with_tag(repository, image_tag) if image_tag else version.image
        check_image(self.ecr, image)
        assert image is not None
        name = f"batch-{version.group}-v{version.version}-{self.stamp()}".lower()[:52].rstrip("-")
        manifest = render_batch_job(
            self.descriptor,
            name=name,
            model_group=version.group,
            version=version.version,
            package_arn=version.arn,
            image=image,
            input_uri=input_uri,
            output_uri=output_uri,
            output_suffix=suffix,
        )
        return _Plan(version, manifest, output_uri)

    def _run(self, plan: _Plan) -> BatchResult:
        metadata = plan.manifest["metadata"]
        name, namespace = metadata["name"], metadata["namespace"]
        self.jobs.create_namespaced_job(namespace, plan.manifest)
        deadline = time.monotonic() + self.timeout_s
        while True:
            job = self.api_client.sanitize_for_serialization(
                self.jobs.read_namespaced_job(name, namespace)
            )
            state, why = job_state(job)
            if state == "succeeded":
                break
            if state == "failed":
                raise BatchJobError(
                    f"batch Job {namespace}/{name} failed: {why} "
                    f"(kubectl logs -n {namespace} job/{name})"
                )
            if time.monotonic() > deadline:
                raise BatchJobError(
                    f"batch Job {namespace}/{name} still running after {self.timeout_s:.0f} s"
                )
            self.sleep(self.poll_s)
        return BatchResult(
            job=f"{namespace}/{name}",
            version=plan.version.version,
            output_uri=plan.output_uri,
            messages=[f"Job {namespace}/{name} completed: predictions in {plan.output_uri}"],
        )
