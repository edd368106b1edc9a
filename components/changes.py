"""Which stacks a change touches: the matrix CI previews, plans and deploys.

A stack config (`stacks/Pulumi.<stack>.yaml`) touches only its own stack. Code every stack
runs (components/, workloads/, the program in stacks/, the policy pack, Pulumi.yaml,
pyproject.toml) touches every stack. Everything else (docs, README, tests, benchmarks,
the workflows themselves, the review-stack template) touches none.

    python -m components.changes --base origin/main            # JSON object
    python -m components.changes --base origin/main --github   # key=value lines for $GITHUB_OUTPUT
    python -m components.changes --all --github                # every stack (drift)
    python -m components.changes --destroyable nlp-dev         # exit 1 when CI must not
    python -m components.changes --runner nlp-dev --github     # runs-on of its Pulumi jobs
    git diff --name-only A B | python -m components.changes -  # file list on stdin
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from components.spec import ClusterAccessSpec, load_stack

# Stacks with a config here that CI never previews or deploys: `local` is the laptop
# environment stood up by `mlinfra up`, not an AWS account.
LOCAL_ONLY_STACKS = frozenset({"local"})

_STACK_FILE_RE = re.compile(r"^stacks/Pulumi\.([A-Za-z0-9_.-]+)\.yaml$")
# Prefixes (directories) and exact files whose change affects every stack.
_EVERY_STACK_DIRS = ("components/", "workloads/", "policy/")
_EVERY_STACK_FILES = ("Pulumi.yaml", "pyproject.toml", "requirements.txt")


def list_stacks(stacks_dir: str | Path = "stacks") -> list[str]:
    """Every stack that has a config file, sorted."""
    return sorted(
        m[1]
        for p in Path(stacks_dir).glob("Pulumi.*.yaml")
        if (m := _STACK_FILE_RE.match(f"stacks/{p.name}"))
    )


def _touches_every_stack(path: str) -> bool:
    if path in _EVERY_STACK_FILES or path.startswith(_EVERY_STACK_DIRS):
        return True
    # The Pulumi program itself: stacks/__main__.py and any module next to it.
    parts = PurePosixPath(path).parts
    return len(parts) == 2 and parts[0] == "stacks" and path.endswith(".py")


def touched_stacks(changed_files: Iterable[str], stacks: Iterable[str]) -> list[str]:
    """The stacks among `stacks` that the changed files touch, sorted.

    Paths are repository-relative with forward slashes, as `git diff --name-only` prints.
    A config of a stack that is not in `stacks` (deleted, or local-only) touches nothing.
    """
    known = set(stacks)
    touched: set[str] = set()
    for raw in changed_files:
        path = raw.strip().removeprefix("./")
        if not path:
            continue
        if _touches_every_stack(path):
            return sorted(known)
        m = _STACK_FILE_RE.match(path)
        if m and m[1] in known:
            touched.add(m[1])
    return sorted(touched)


def split_prod(stacks: Iterable[str], stacks_dir: str | Path = "stacks") -> tuple[list, list]:
    """(non-prod, prod): prod is what the spec says (`environment: prod`), not the name."""
    nonprod, prod = [], []
    for stack in stacks:
        (prod if load_stack(stack, stacks_dir).is_prod else nonprod).append(stack)
    return nonprod, prod


_PROD_NAME_RE = re.compile(r"(^|[-_.])prod($|[-_.])")


def destroy_refusal(stack: str, stacks_dir: str | Path = "stacks") -> str | None:
    """Why CI must not destroy `stack`, or None when it may.

    Prod is refused by name and by spec (a stack whose config says `environment: prod`),
    so neither a renamed prod stack nor a stack named like prod slips through. A stack
    without a config in the repository (a review stack, or one whose config was deleted)
    is judged by its name alone.
    """
    if stack in LOCAL_ONLY_STACKS:
        return f"{stack!r} is the local environment; use `mlinfra down`"
    if _PROD_NAME_RE.search(stack):
        return f"{stack!r} is named as a prod stack; prod stacks are never destroyed by CI"
    if (Path(stacks_dir) / f"Pulumi.{stack}.yaml").is_file() and load_stack(
        stack, stacks_dir
    ).is_prod:
        return f"{stack!r} is a prod environment (environment: prod in its config)"
    return None


def deploy_runner(stack: str, stacks_dir: str | Path = "stacks") -> list[str]:
    """`runs-on` of the jobs that reach a stack's cluster API (preview, up, refresh,
    destroy): the self-hosted runner its config names. A stack without a config here (a
    review stack) gets the default runner label."""
    if (Path(stacks_dir) / f"Pulumi.{stack}.yaml").is_file():
        return load_stack(stack, stacks_dir).deploy_runner
    return ["self-hosted", "linux", ClusterAccessSpec().runner_label]


def changed_files_since(base: str) -> list[str]:
    """Files changed between the merge base of `base` and HEAD (what a PR changes).

    --no-renames lists a renamed file under both names, so both stacks count.
    """
    out = subprocess.run(
        ["git", "diff", "--name-only", "--no-renames", f"{base}...HEAD"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.changes", description=__doc__)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", help="git ref to diff against, e.g. origin/main or HEAD~1")
    src.add_argument("--all", action="store_true", help="every stack (drift checks)")
    src.add_argument("--destroyable", metavar="STACK", help="exit 1 if CI must not destroy it")
    src.add_argument("--runner", metavar="STACK", help="runs-on of the stack's Pulumi jobs")
    src.add_argument("files", nargs="*", default=[], help="changed files, or - for stdin")
    parser.add_argument("--stacks-dir", default="stacks")
    parser.add_argument("--include-local", action="store_true", help="keep local-only stacks")
    parser.add_argument("--github", action="store_true", help="key=value lines for GITHUB_OUTPUT")
    args = parser.parse_args(argv)

    if args.destroyable:
        refusal = destroy_refusal(args.destroyable, args.stacks_dir)
        print(f"refused: {refusal}" if refusal else f"{args.destroyable} may be destroyed")
        return 1 if refusal else 0

    if args.runner:
        runner = json.dumps(deploy_runner(args.runner, args.stacks_dir))
        print(f"runner={runner}" if args.github else runner)
        return 0

    stacks = list_stacks(args.stacks_dir)
    if not args.include_local:
        stacks = [s for s in stacks if s not in LOCAL_ONLY_STACKS]
    if args.all:
        touched = stacks
    else:
        files = changed_files_since(args.base) if args.base else args.files
        if files == ["-"]:
            files = sys.stdin.read().splitlines()
        touched = touched_stacks(files, stacks)
    nonprod, prod = split_prod(touched, args.stacks_dir)
    result = {
        "stacks": touched,
        "nonprod": nonprod,
        "prod": prod,
        "any": bool(touched),
        # Each stack's `runs-on`, for `fromJSON(needs.<job>.outputs.runners)[matrix.stack]`.
        "runners": {stack: deploy_runner(stack, args.stacks_dir) for stack in touched},
    }
    if args.github:
        for key, value in result.items():
            print(f"{key}={json.dumps(value)}")
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
