"""Property-based fuzzing of the search space: any document either parses into a space
that Optuna runs as written, or fails with a `SpaceError` naming the file and a field.

Each example starts from a valid space and replaces one value somewhere in it (or adds a
key) with something from a wide pool: booleans where numbers go, NaN and infinities, huge
and negative numbers, odd strings (a metric name with a newline), wrong shapes, nested
and deeply nested values. Deterministic (derandomized, and blind to the project modules
loaded before it: `conftest.fixed_constant_pool`) and bounded, like the stack-spec fuzz
test (`test_spec_fuzz.py`).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz_support import fuzz_settings
from tests.test_tune_space import GOOD
from workloads.tuning.space import MAX_GRID, SearchSpace, SpaceError, parse_space

pytestmark = pytest.mark.usefixtures("fixed_constant_pool")  # conftest

GRID = {
    **copy.deepcopy(GOOD),
    "sampler": "grid",
    "parameters": {
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01},
        "batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
        "hidden_sizes": {"type": "categorical", "choices": ["16", "32,16"]},
    },
}
BASES = [GOOD, GRID]
TOP = {"study", "objective", "budget", "sampler", "pruning", "seed", "fixed", "parameters"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**31), max_value=10**31),
    st.sampled_from([0, -1, 1, 2, 3, 7, 16, 2**32, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e-300, 1e308, 0.0, -0.5, 0.3, 1.0]),
    st.text(max_size=40),
    st.sampled_from(
        [
            "auc\n",
            "val loss",
            "float",
            "int",
            "categorical",
            "grid",
            "hyperband",
            "hidden_sizes",
            "dropout",
            "learning_rate",
            "x" * 200,
            "1e-4",
            "nan",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12) | st.integers() | st.none(), inner, max_size=3),
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated_spaces(draw) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc) if isinstance(doc, dict) else []
        if not paths or draw(st.integers(0, 9)) == 0:
            return draw(values)  # not a mapping at all, sometimes
        path = draw(st.sampled_from(paths))
        node = doc
        for part in path[:-1]:
            node = node[part]
        action = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        if action == "delete":
            del node[path[-1]]
        elif action == "add" and isinstance(node, dict):
            node[draw(st.one_of(st.text(max_size=12), st.sampled_from(list(TOP))))] = draw(values)
        else:
            node[path[-1]] = draw(values)
    return doc


def names_a_field(path: str, doc: Any) -> bool:
    """A problem's path starts at a field of the space, or a key the document has."""
    if path == "(top level)":
        return True
    roots = TOP | ({str(k) for k in doc} if isinstance(doc, dict) else set())
    return any(path == r or path.startswith((f"{r}.", f"{r}[")) for r in roots)


def assert_runs_as_written(space: SearchSpace) -> None:
    """What a parsed space promises: Optuna takes it without changing it (Optuna only
    warns when it lowers a range's 'high' to fit 'step'), and a few trials sample."""
    assert math.isfinite(space.budget.trials) and not isinstance(space.budget.trials, bool)
    if space.budget.timeout is not None:
        assert math.isfinite(space.budget.timeout)
    if space.sampler == "grid":
        assert space.grid_size() <= MAX_GRID
        assert math.prod(len(v) for v in space.grid().values()) == space.grid_size()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dists = space.distributions()
        for name, dist in dists.items():
            p = space.parameters[name]
            if hasattr(p, "high"):
                assert dist.high == p.high, name  # not lowered to fit a step
    study = optuna.create_study(sampler=space.make_sampler(), pruner=space.make_pruner())
    for _ in range(2):
        trial = study.ask()
        params = space.suggest(trial)
        assert trial.params == params  # each sampled value recorded as itself
    assert len(space.fingerprint()) == 16


@fuzz_settings(300)
@given(mutated_spaces())
def test_every_failure_is_a_space_error_naming_the_file_and_a_field(doc):
    try:
        space = parse_space(doc, "fuzz.yaml")
    except SpaceError as err:
        message = str(err)
        assert message.startswith("invalid search space fuzz.yaml:\n"), message
        assert err.problems, message
        for path, text in err.problems:
            assert names_a_field(path, doc), (path, text)
            assert text.strip(), path
            assert len(text) < 2000, path  # a huge value is shown short
        return
    assert_runs_as_written(space)


def test_the_bases_run_as_written():
    """The property's positive side holds for the unmutated spaces (so it can fail)."""
    for doc in BASES:
        assert_runs_as_written(parse_space(doc, "fuzz.yaml"))
