"""Whether a container image exists in ECR, checked before anything refers to it."""

from __future__ import annotations

import re
from typing import Any

from workloads.jobs.ecr import missing_image
from workloads.jobs.rollout import RolloutError

# <account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag | @sha256:...]
_ECR = re.compile(
    r"^(?P<registry>\d{12})\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
    r"(?P<repo>[a-z0-9._/-]+?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))$"
)


def image_with_tag(repository: str | None, tag: str) -> str:
    if not repository:
        raise RolloutError("the descriptor names no 'serve' repository to take the image from")
    return f"{repository}:{tag}"


def check_image(ecr: Any, image: str | None) -> None:
    """Refuse an image ECR does not hold (tags are immutable: CI pushes each commit's)."""
    if not image:
        raise RolloutError("the model version names no serving image")
    match = _ECR.match(image)
    if match is None:
        raise RolloutError(
            f"image {image!r} is not an ECR image with a tag or digest "
            "(<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>)"
        )
    repo, tag, digest = match["repo"], match["tag"], match["digest"]
    image_id = {"imageTag": tag} if tag else {"imageDigest": digest}
    missing = missing_image(ecr, repo, image_id, registry_id=match["registry"])
    if missing == "image":
        raise RolloutError(
            f"image {image} does not exist: ECR repository {repo!r} has no "
            f"{'tag ' + tag if tag else digest} (CI pushes one per commit on main)"
        )
    if missing == "repository":
        raise RolloutError(f"image {image}: no ECR repository {repo!r}")
