"""Property-based fuzzing of `parse_spec`: any config either parses into a spec that AWS
and Kubernetes would accept, or fails with a `SpecError` that names a field.

Each example starts from a real stack file and replaces one value somewhere in it (or adds
a key) with something drawn from a wide pool: huge and negative numbers, NaN and
infinities, long and odd strings, non-string keys and keys that do not print, nested and
deeply nested values. Deterministic (derandomized, and blind to the project modules loaded
before it: `conftest.fixed_constant_pool`) and bounded, so it runs the same in CI every time.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from components.admission import admit, quantity
from components.spec import (
    NAME_LIMITS,
    PlatformSpec,
    SpecError,
    derived_names,
    load_stack_file,
    parse_spec,
)
from tests.fuzz_support import fuzz_settings
from tests.stack_support import STACK_FILES, STACKS_DIR, stack_name

pytestmark = pytest.mark.usefixtures("fixed_constant_pool")  # conftest

CONFIGS = {
    stack_name(p): yaml.safe_load(p.read_text())["config"]
    for p in STACK_FILES
    if stack_name(p) != "local"
}
FIELD = re.compile(r"^(mlinfra:[A-Za-z0-9]*|aws:region|config)([.\[].*)?$")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**31), max_value=10**31),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, 64, 10**6]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e30, 0.0, -0.5]),
    st.text(max_size=80),
    st.sampled_from(
        [
            "x" * 71,
            "1.00",
            "500",
            "4000Gi",
            "1" + "0" * 30,
            "kubernetes.io/hostname",
            "0.0.0.0/0",
            "not-a-cidr",
            "subnet-0aa11bb22cc33dd44",
            "[" * 5000,
            "[" * 3000 + "]" * 3000,
            "{}",
            "",
        ]
    ),
)
keys = st.one_of(
    st.text(min_size=1, max_size=20),
    st.sampled_from(
        [True, False, 1, None, 1.5, "kubernetes.io/x", "a\nb", "\r\n", "\x00", "\u2028"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def _slots(node: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a config tree a value can be put: existing keys and items, new keys."""
    out = [path] if path else []
    if isinstance(node, dict):
        for key, child in node.items():
            out += _slots(child, (*path, key))
        out.append((*path, "__new__"))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out += _slots(child, (*path, i))
    return out


SLOTS = {name: _slots(config) for name, config in CONFIGS.items()}


# Values of the type already there, so that many examples get past the type checks and
# test what a well-typed but wrong value does.
same_type = {
    bool: st.booleans(),
    int: st.one_of(
        st.integers(min_value=-5, max_value=2000),
        st.sampled_from([0, 2**31, 2**63, 10**30]),
    ),
    float: st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, 1e30, 0.5])),
    str: st.one_of(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-./", max_size=90),
        st.sampled_from(["x" * 71, "1.00", "500", "4000Gi", "1" + "0" * 30, "0.0.0.0/0"]),
    ),
}


def _get(config: dict, slot: tuple) -> Any:
    node: Any = config
    for part in slot:
        node = node[part]
    return node


def _put(config: dict, slot: tuple, value: Any, new_key: Any) -> None:
    node = _get(config, slot[:-1])
    last = slot[-1]
    node[new_key if last == "__new__" else last] = value


@st.composite
def mutated_configs(draw) -> dict:
    stack = draw(st.sampled_from(sorted(CONFIGS)))
    config = copy.deepcopy(CONFIGS[stack])
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        slot = draw(st.sampled_from(SLOTS[stack]))
        try:
            current = None if slot[-1] == "__new__" else _get(config, slot)
            kind = same_type.get(type(current))
            same = kind is not None and draw(st.sampled_from([True, True, True, False]))
            value = draw(kind if same else values)
            _put(config, slot, value, draw(keys))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced the parent: nothing to put into
    if draw(st.booleans()):  # as the Pulumi CLI hands it over: structured values as JSON
        config = {
            k: v if isinstance(v, str) else json.dumps(v, allow_nan=True, default=str)
            for k, v in config.items()
        }
    return config


def assert_deployable(spec: PlatformSpec) -> None:
    """What an accepted spec promises: finite numbers, names within limits, quota fits."""
    for _, kind, name in derived_names(spec):
        assert len(name) <= NAME_LIMITS[kind][0], name
    for pool in spec.cluster.gpu_pools:
        assert pool.max_size <= 450 and len(spec.physical(pool.name)) <= 63
        for key, value in pool.labels.items():
            assert len(key) <= 63 and len(value) <= 63
            assert not key.split("/")[0].endswith(("kubernetes.io", "k8s.io"))
    for group in spec.model_registry.model_groups:
        if group.approval_gate is not None:
            assert math.isfinite(group.approval_gate.threshold)
    assert math.isfinite(spec.budget.monthly_limit_usd)
    assert f"{spec.budget.monthly_limit_usd:.2f}".replace(".", "").isdigit()
    assert len(set(spec.network.private_subnet_ids)) == len(spec.network.private_subnet_ids)
    hard = spec.cluster.quota.hard
    for value in hard.values():
        quantity(value)
    for ep in spec.endpoints:
        if ep.kind == "kubernetes":
            verdict = admit(ep.pod_resources, {}, hard, replicas=ep.max_instances)
            assert verdict.admitted, verdict.problems


@fuzz_settings(400)
@given(mutated_configs())
def test_every_failure_is_a_spec_error_naming_a_field(config):
    try:
        spec = parse_spec(config, "fuzz.yaml")
    except SpecError as err:
        assert err.problems, str(err)
        for path, message in err.problems:
            assert FIELD.match(path), (path, message)
            assert message.strip(), path
        return
    assert_deployable(spec)


def test_the_real_stacks_are_deployable():
    """The property's positive side holds for the real stacks (so it can fail for a bad one)."""
    for path in STACK_FILES:
        assert_deployable(load_stack_file(path))
    assert STACKS_DIR.is_dir()


@pytest.mark.parametrize("key", [True, 1, None])
def test_non_string_keys_name_the_config(key):
    config = {**copy.deepcopy(CONFIGS["vision-dev"]), key: "x"}
    with pytest.raises(SpecError) as err:
        parse_spec(config, "stacks/Pulumi.vision-dev.yaml")
    assert err.value.fields == ["config"]
    assert repr(key) in str(err.value)


@pytest.mark.parametrize("key", ["a\nb", "\r\n", "x\x00", "\u2028"])
def test_a_key_that_does_not_print_is_named_on_one_line(key):
    """An unknown key is shown as Python writes it: each problem stays one line with its field
    (a raw line break split the message, and the path no longer named the field)."""
    config = copy.deepcopy(CONFIGS["vision-dev"])
    config["mlinfra:budget"] = {**config["mlinfra:budget"], key: 1}
    config[f"mlinfra:{key}"] = 1
    with pytest.raises(SpecError) as err:
        parse_spec(config, "stacks/Pulumi.vision-dev.yaml")
    assert sorted(err.value.fields) == [f"mlinfra:[{key!r}]", f"mlinfra:budget[{key!r}]"]
    assert all(FIELD.match(f) for f in err.value.fields)
    assert len(str(err.value).splitlines()) == 1 + len(err.value.problems)


def test_deeply_nested_json_is_a_spec_error():
    config = {**copy.deepcopy(CONFIGS["vision-dev"]), "mlinfra:cluster": "[" * 100_000}
    with pytest.raises(SpecError) as err:
        parse_spec(config, "stacks/Pulumi.vision-dev.yaml")
    assert err.value.fields == ["mlinfra:cluster"]
    nested: Any = "x"
    for _ in range(5000):
        nested = [nested]
    config = {**copy.deepcopy(CONFIGS["vision-dev"]), "mlinfra:cluster": nested}
    with pytest.raises(SpecError) as err:
        parse_spec(config, "stacks/Pulumi.vision-dev.yaml")
    assert all(FIELD.match(f) for f in err.value.fields)
