"""Where CI pushes the training and serving images: each stack's own ECR repositories.

`python -m components.images --github` prints `targets=<JSON>` for the images workflow:
one entry per team stack (the local stack has no registry) with its region, its GitHub
environment (`production` for prod stacks, `nonprod` otherwise: the role that may push
there) and its two repository names, as `components.registry` names them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from components.changes import LOCAL_ONLY_STACKS, list_stacks
from components.registry import repository_name
from components.spec import load_stack

DOCKERFILES = {"train": "docker/train.Dockerfile", "serve": "docker/serve.Dockerfile"}


def push_targets(stacks_dir: str | Path = "stacks") -> list[dict[str, Any]]:
    targets = []
    for stack in list_stacks(stacks_dir):
        if stack in LOCAL_ONLY_STACKS:
            continue
        spec = load_stack(stack, stacks_dir)
        targets.append(
            {
                "stack": stack,
                "region": spec.region,
                "environment": "production" if spec.is_prod else "nonprod",
                **{purpose: repository_name(spec, purpose) for purpose in DOCKERFILES},
            }
        )
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.images", description=__doc__)
    parser.add_argument("--stacks-dir", default="stacks")
    parser.add_argument("--github", action="store_true", help="key=value for GITHUB_OUTPUT")
    args = parser.parse_args(argv)
    targets = push_targets(args.stacks_dir)
    print(f"targets={json.dumps(targets)}" if args.github else json.dumps(targets, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
