"""What the Hypothesis fuzz tests share (`test_spec_fuzz.py`, `test_tune_space_fuzz.py`);
their fixture, `fixed_constant_pool`, is in conftest."""

from __future__ import annotations

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
