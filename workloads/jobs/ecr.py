"""Is an image tag in the team's training repository? One ECR call, before a job starts."""

from __future__ import annotations

from typing import Any, Literal

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
    missing = missing_image(ecr, name, {"imageTag": tag})
    if missing == "image":
        raise JobError(
            f"image tag {tag!r} does not exist in repository {name}; pushed tags: "
            f"{', '.join(recent_tags(ecr, name)) or 'none'}"
        )
    if missing == "repository":
        raise JobError(f"repository {name} does not exist (is the stack up?)")


def missing_image(
    ecr: Any, repository: str, image_id: dict[str, str], registry_id: str | None = None
) -> Literal["image", "repository"] | None:
    """What ECR lacks of `repository`'s image `image_id` (a tag or a digest): None when it
    holds the image. One lookup for the job and the rollout checks, each with its own words."""
    where = {"registryId": registry_id} if registry_id else {}
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[image_id], **where)
    except ecr.exceptions.ImageNotFoundException:
        return "image"
    except ecr.exceptions.RepositoryNotFoundException:
        return "repository"
    return None


def recent_tags(ecr: Any, name: str, limit: int = 10) -> list[str]:
    images = ecr.describe_images(repositoryName=name, filter={"tagStatus": "TAGGED"})
    details = sorted(
        images.get("imageDetails", []), key=lambda d: d.get("imagePushedAt", 0), reverse=True
    )
    return [t for d in details for t in d.get("imageTags", [])][:limit]
