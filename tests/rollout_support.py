"""An AWS platform descriptor and stand-ins (registry answers, ECR) for the rollout and batch
tests."""

from __future__ import annotations

import json
from typing import Any

from workloads.platform import PlatformDescriptor
from workloads.registry.store import ModelVersion, RegistryError, UnknownGroupError

ACCOUNT = "123456789012"
SERVE_REPO = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/team-dev-serve"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/team"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/team-dev-endpoints"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/team-dev-churn/{}"
ALARMS = ["team-dev-churn-5xx-errors", "team-dev-churn-model-latency"]


def sagemaker_ref(**overrides: Any) -> dict[str, Any]:
    ref = {
        "name": "team-dev-churn",
        "kind": "sagemaker",
        "model_group": "churn",
        "url": None,
        "scaling": {
            "min_instances": 1,
            "max_instances": 3,
            "target_invocations_per_instance": 100,
            "policy_name": "team-dev-churn-invocations-per-instance",
            "scale_in_cooldown_s": 300,
            "scale_out_cooldown_s": 60,
        },
        "sagemaker": {
            "role_arn": ROLE,
            "variant": "AllTraffic",
            "instance_type": "ml.m5.large",
            "image": f"{SERVE_REPO}:abc123",
            "subnets": ["subnet-a", "subnet-b"],
            "security_groups": ["sg-endpoints"],
            "network_isolation": True,
            "volume_kms_key_arn": KEY,
            "data_capture": {
                "destination": "s3://team-dev-logs/data-capture/team-dev-churn",
                "sampling_percent": 20,
                "kms_key_arn": KEY,
                "json_content_types": ["application/json"],
                "csv_content_types": ["text/csv"],
            },
            "scaling_resource_id": "endpoint/team-dev-churn/variant/AllTraffic",
            "scalable_dimension": "sagemaker:variant:DesiredInstanceCount",
            "scaling_metric": "SageMakerVariantInvocationsPerInstance",
            "alarms": ALARMS,
            "alarm_topic_arn": f"arn:aws:sns:us-east-1:{ACCOUNT}:team-dev-endpoint-alarms",
            "tags": {"team": "team", "environment": "dev"},
        },
    }
    ref.update(overrides)
    return ref


def kubernetes_ref(namespace: str = "team", **overrides: Any) -> dict[str, Any]:
    ref = {
        "name": "team-dev-ranker",
        "kind": "kubernetes",
        "model_group": "churn",
        "url": "http://team-dev-ranker.team.svc.cluster.local",
        "scaling": {"min_instances": 2, "max_instances": 4},
        "kubernetes": {
            "namespace": namespace,
            "deployment": "team-dev-ranker",
            "service": "team-dev-ranker",
            "autoscaler": "team-dev-ranker",
            "model_annotation": "mlinfra.io/model-package",
        },
    }
    ref.update(overrides)
    return ref


def aws_descriptor(endpoints: dict[str, dict[str, Any]] | None = None) -> PlatformDescriptor:
    return PlatformDescriptor.model_validate(
        {
            "backend": "aws",
            "stack": "team-dev",
            "team": "team",
            "environment": "dev",
            "region": "us-east-1",
            "buckets": {
                "raw": "s3://team-dev-raw",
                "features": "s3://team-dev-features",
                "artifacts": "s3://team-dev-artifacts",
                "logs": "s3://team-dev-logs",
            },
            "feature_store": {"database": "team_dev_features", "groups": {}},
            "registry": {
                "model_groups": {"churn": {"name": "team-dev-churn", "gate": None}},
                "repositories": {"serve": SERVE_REPO, "train": SERVE_REPO + "-train"},
            },
            "endpoints": endpoints
            if endpoints is not None
            else {"churn": sagemaker_ref(), "ranker": kubernetes_ref()},
            "cluster": {
                "name": "team-dev",
                "namespace": "team",
                "service_account": "team-workloads",
                "node_pools": {},
            },
        }
    )


class FakeRegistry:
    """The registry's answers (the SageMaker registry is tested with moto elsewhere)."""

    def __init__(self, statuses: dict[int, str]):
        self.statuses = statuses

    def ref(self, group: str) -> object:
        return UnknownGroupError.lookup({"churn": object()}, group)

    def get(self, group: str, version: int) -> ModelVersion:
        if version not in self.statuses:
            raise RegistryError(f"model group {group!r} has no version {version}")
        return ModelVersion(
            group=group, version=version, status=self.statuses[version],
            model_uri=f"s3://a/{version}", image=f"{SERVE_REPO}:abc", metrics={},
            created_at="2026-11-30T00:00:00Z", arn=ARN.format(version), description="",
        )  # fmt: skip

    def latest_approved(self, group: str) -> ModelVersion | None:
        approved = [v for v, s in self.statuses.items() if s == "Approved"]
        return self.get(group, max(approved)) if approved else None


class FakeEcr:
    """describe_images as ECR answers it: the tags it holds, ImageNotFound otherwise."""

    class exceptions:  # noqa: N801 - boto3's spelling
        class ImageNotFoundException(Exception):
            pass

        class RepositoryNotFoundException(Exception):
            pass

    def __init__(self, tags: set[str]):
        self.tags = tags

    def describe_images(self, **request: Any) -> dict:
        tag = request["imageIds"][0]["imageTag"]
        if tag not in self.tags:
            raise self.exceptions.ImageNotFoundException(tag)
        return {"imageDetails": [{"imageTags": [tag]}]}


def push_image(ecr: Any, repository: str, tag: str) -> None:
    """A repository holding one tagged image (moto's ECR)."""
    ecr.create_repository(repositoryName=repository)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"digest": "sha256:" + "a" * 64, "size": 1, "mediaType": "x"},
        "layers": [],
    }
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
