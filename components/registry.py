"""The registry: ECR repositories for the images and SageMaker model package groups.

Two repositories, `<prefix>-train` and `<prefix>-serve`, scan on push, refuse to overwrite a
tag, are encrypted with the team key and keep a bounded history of CI builds: untagged
images expire after some days, build-tagged images (`sha-*`, `pr-*`, `dev-*`) beyond the
newest `keepImages`. Release tags (every other tag, such as `1.4.0`) never expire, so the
image a pinned or deployed endpoint runs can always be pulled by its next scale-out; the
spec refuses an endpoint `imageTag` that a rule would expire. One model package group
per model in the spec is the model registry that training registers versions into.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.spec import BUILD_TAG_PATTERNS, PlatformSpec

REPOSITORIES = ("train", "serve")


def repository_name(spec: PlatformSpec, purpose: str) -> str:
    """`<prefix>-train` / `<prefix>-serve`: other components derive ARNs from it."""
    return f"{spec.prefix}-{purpose}"


def lifecycle_policy(keep_images: int, untagged_expiry_days: int) -> dict:
    """Expire untagged images after N days and build-tagged ones beyond the newest
    `keep_images` of each kind; release tags are selected by no rule, so never expire.

    One rule per build-tag pattern: ECR selects only images that carry a tag matching
    every pattern of one rule's `tagPatternList`.
    """
    untagged = {
        "rulePriority": 1,
        "description": f"Expire untagged images after {untagged_expiry_days} days",
        "selection": {
            "tagStatus": "untagged",
            "countType": "sinceImagePushed",
            "countUnit": "days",
            "countNumber": untagged_expiry_days,
        },
        "action": {"type": "expire"},
    }
    builds = [
        {
            "rulePriority": priority,
            "description": f"Keep the newest {keep_images} {pattern} build images",
            "selection": {
                "tagStatus": "tagged",
                "tagPatternList": [pattern],
                "countType": "imageCountMoreThan",
                "countNumber": keep_images,
            },
            "action": {"type": "expire"},
        }
        for priority, pattern in enumerate(BUILD_TAG_PATTERNS, start=2)
    ]
    return {"rules": [untagged, *builds]}


@dataclass
class ModelRegistryArgs:
    spec: PlatformSpec
    kms_key_arn: pulumi.Input[str]


class ModelRegistry(pulumi.ComponentResource):
    """ECR repositories ("train", "serve") and one model package group per model."""

    repository_urls: dict[str, pulumi.Output[str]]
    repository_arns: dict[str, pulumi.Output[str]]
    group_names: dict[str, pulumi.Output[str]]
    group_arns: dict[str, pulumi.Output[str]]

    def __init__(
        self, name: str, args: ModelRegistryArgs, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("mlinfra:registry:ModelRegistry", name, None, opts)
        spec = args.spec
        child = pulumi.ResourceOptions(parent=self)
        registry = spec.model_registry
        policy = json.dumps(
            lifecycle_policy(registry.keep_images, registry.untagged_image_expiry_days)
        )

        self.repository_urls = {}
        self.repository_arns = {}
        for purpose in REPOSITORIES:
            repo = aws.ecr.Repository(
                f"{name}-{purpose}",
                name=repository_name(spec, purpose),
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(
                    scan_on_push=True
                ),
                # A tag names one image forever: what was tested is what runs.
                image_tag_mutability="IMMUTABLE",
                encryption_configurations=[
                    aws.ecr.RepositoryEncryptionConfigurationArgs(
                        encryption_type="KMS", kms_key=args.kms_key_arn
                    )
                ],
                # Outside prod a stack may be destroyed with its images; prod keeps them.
                force_delete=not spec.is_prod,
                tags={**spec.tags, "Name": repository_name(spec, purpose)},
                opts=child,
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-{purpose}-lifecycle", repository=repo.name, policy=policy, opts=child
            )
            self.repository_urls[purpose] = repo.repository_url
            self.repository_arns[purpose] = repo.arn

        self.group_names = {}
        self.group_arns = {}
        for group in registry.model_groups:
            gate = group.approval_gate
            description = group.description or f"{group.name} models of {spec.prefix}"
            if gate is not None:
                op = ">=" if gate.mode == "max" else "<="
                description += f" (approved when {gate.metric} {op} {gate.threshold})"
            package_group = aws.sagemaker.ModelPackageGroup(
                f"{name}-{group.name}",
                model_package_group_name=spec.physical(group.name),
                model_package_group_description=description,
                tags=spec.tags,
                # The group holds every registered version and its approval history.
                opts=pulumi.ResourceOptions(parent=self, protect=spec.protect_data),
            )
            self.group_names[group.name] = package_group.model_package_group_name
            self.group_arns[group.name] = package_group.arn

        self.register_outputs(
            {
                "repository_urls": self.repository_urls,
                "repository_arns": self.repository_arns,
                "group_names": self.group_names,
                "group_arns": self.group_arns,
            }
        )
