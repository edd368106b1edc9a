"""Is an image tag in the team's training repository? One ECR call, before a job starts."""

from __future__ import annotations

from typing import Any

from workloads.jobs.base import JobError
from workloads.platform import PlatformDescriptor


def repository_name(url: str) -> str:
    """`<account>.dkr.ecr.<region>.amazonaws.com/<name>` -> `<name>`."""
    return url.split("/", 1)[1] if "/" in url else url


def check_image_tag(descriptor: PlatformDescriptor, tag: str, boto_session: Any) -> None:
    """Raise JobError unless `tag` names an image in the team's training repository."""
    url = descriptor.registry.repositories.get("train")
    if not url:
        raise JobError(f"stack {descriptor.stack!r} has no 'train' image repository")
    name = repository_name(url)
    ecr = boto_session.client("ecr", region_name=descriptor.region)
    try:
        ecr.describe_images(repositoryName=name, imageIds=[{"imageTag": tag}])
    except ecr.exceptions.ImageNotFoundException:
        raise JobError(
            f"image tag {tag!r} does not exist in repository {name}; pushed tags: "
            f"{', '.join(recent_tags(ecr, name)) or 'none'}"
        ) from None
    except ecr.exceptions.RepositoryNotFoundException:
        raise JobError(f"repository {name} does not exist (is the stack up?)") from None


def recent_tags(ecr: Any, name: str, limit: int = 10) -> list[str]:
    images = ecr.describe_images(repositoryName=name, filter={"tagStatus": "TAGGED"})
    details = sorted(
        images.get("imageDetails", []), key=lambda d: d.get("imagePushedAt", 0), reverse=True
    )
    return [t for d in details for t in d.get("imageTags", [])][:limit]
