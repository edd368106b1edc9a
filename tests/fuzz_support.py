"""What the Hypothesis fuzz tests share (`test_spec_fuzz.py`, `test_tune_space_fuzz.py`,
the training data probes); their fixture, `fixed_constant_pool`, is in conftest."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings


def fuzz_settings(max_examples: int) -> settings:
    """A fixed seed and no example database (the same examples in every run), bounded, no
    deadline on a loaded machine."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


def train_in(root: Path, args: list[str]) -> tuple[int, str]:
    """`harness.main(args)` with its model, output, checkpoint and failure files under
    `root`: the exit code and the failure file's text ("" if none)."""
    from workloads.training.harness import main

    for flag, name in [
        ("--model-dir", "model"),
        ("--output-data-dir", "out"),
        ("--checkpoint-dir", "ckpt"),
        ("--failure-file", "failure"),
    ]:
        args = [*args, flag, str(root / name)]
    rc = main(args, env={})
    failure = root / "failure"
    return rc, failure.read_text() if failure.exists() else ""
