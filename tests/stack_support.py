"""The stack configs in stacks/ and their renders under Pulumi's mock runtime, shared by the
tests: rendering a stack takes about a second, so each test process renders each one once.
Renders are read-only to the tests. `rendered_stack` answers the program's account lookups
as the steady state (pinned versions approved, images pushed); `first_up_stack` as a new
account."""

from __future__ import annotations

import functools
from pathlib import Path

from components.mockrun import Rendered, render_stack
from components.readiness import FakeAccount

ROOT = Path(__file__).resolve().parents[1]
STACKS_DIR = ROOT / "stacks"
STACK_FILES = sorted(STACKS_DIR.glob("Pulumi.*.yaml"))


def stack_name(path: Path) -> str:
    return path.name.removeprefix("Pulumi.").removesuffix(".yaml")


STACK_NAMES = [stack_name(p) for p in STACK_FILES]


@functools.cache
def rendered_stack(stack: str) -> Rendered:
    return render_stack(stack, STACKS_DIR)


@functools.cache
def first_up_stack(stack: str) -> Rendered:
    """The stack's first `pulumi up` in a new account: no model version registered, no image
    pushed, no endpoint created yet."""
    return render_stack(stack, STACKS_DIR, account=FakeAccount.empty())
