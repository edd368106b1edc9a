"""Descriptors and helpers shared by the job tests."""

from __future__ import annotations

import json
from typing import Any

from workloads.platform import PlatformDescriptor

REGION = "eu-west-1"
ACCOUNT = "123456789012"
TRAIN_REPO = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/vision-dev-train"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/vision-dev-training"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def aws_descriptor(*, cluster: bool = True, gpu_pools: bool = True, **extra: Any):
    doc: dict[str, Any] = {
        "backend": "aws",
        "stack": "vision-dev",
        "team": "vision",
        "environment": "dev",
        "region": REGION,
        "buckets": {
            p: f"s3://vision-dev-{p}-{ACCOUNT}" for p in ("raw", "features", "artifacts", "logs")
        },
        "feature_store": {"database": None, "groups": {}},
        "registry": {
            "model_groups": {
                "churn": {
                    "name": "vision-dev-churn",
                    "gate": {"metric": "auc", "threshold": 0.8, "mode": "max"},
                }
            },
            "repositories": {
                "train": TRAIN_REPO,
                "serve": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/vision-dev-serve",
            },
        },
        "endpoints": {},
        "cluster": None,
        "training": {
            "role_arn": ROLE,
            "subnet_ids": ["subnet-0a", "subnet-0b"],
            "security_group_ids": ["sg-0training"],
            "kms_key_arn": KEY,
        },
    }
    if cluster:
        pools = {
            "system": {
                "name": "system",
                "node_group": "vision-dev-system",
                "instance_types": ["m6i.large"],
                "gpu": None,
                "gpus_per_node": 0,
            }
        }
        if gpu_pools:
            pools["train-a10g"] = {
                "name": "train-a10g",
                "node_group": "vision-dev-train-a10g",
                "instance_types": ["g5.xlarge"],
                "gpu": "A10G",
                "gpus_per_node": 1,
            }
        doc["cluster"] = {
            "name": "vision-dev",
            "namespace": "vision",
            "service_account": "vision-workloads",
            "node_pools": pools,
            "endpoint": "https://ABC.gr7.eu-west-1.eks.amazonaws.com",
            "certificate_authority": "LS0tLS1CRUdJTi0tLS0t",
        }
    doc.update(extra)
    return PlatformDescriptor.model_validate(doc)


def push_image(session: Any, tag: str) -> None:
    """An image in the (moto) training repository under `tag`."""
    ecr = session.client("ecr", region_name=REGION)
    try:
        ecr.create_repository(repositoryName="vision-dev-train")
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "digest": "sha256:" + tag.encode().hex().ljust(64, "0")[:64],
            "size": 1,
            "mediaType": "application/vnd.docker.container.image.v1+json",
        },
        "layers": [],
    }
    ecr.put_image(
        repositoryName="vision-dev-train", imageManifest=json.dumps(manifest), imageTag=tag
    )


def terminated(code: int, message: str = "") -> dict:
    """A failed pod's status: its train container terminated with `code`."""
    state = {"terminated": {"exitCode": code, "reason": "Error", "message": message}}
    return {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": "train",
                "image": "x",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": state,
            }  # fmt: skip
        ],
    }
