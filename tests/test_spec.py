"""The spec: every stack parses, bad configs fail with the exact field, before any resource.

Each bad config starts from a real stack file and changes one thing; its SpecError must
name exactly that field. The same broken config is then run through the real program
under Pulumi mocks, which must register nothing at all.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.mockrun import project_defaults, render_stack
from components.spec import SpecError, load_stack, load_stack_file, parse_spec

STACKS_DIR = Path(__file__).resolve().parent.parent / "stacks"
STACK_FILES = sorted(STACKS_DIR.glob("Pulumi.*.yaml"))


def stack_name(path: Path) -> str:
    return path.name.removeprefix("Pulumi.").removesuffix(".yaml")


def config_of(stack: str) -> dict[str, Any]:
    doc = yaml.safe_load((STACKS_DIR / f"Pulumi.{stack}.yaml").read_text())
    return copy.deepcopy(doc["config"])


def mutated(stack: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    config = config_of(stack)
    change(config)
    return config


def as_pulumi_config(config: dict[str, Any]) -> dict[str, str]:
    """What the Pulumi CLI hands the program: project defaults applied, values as strings."""
    values = {**project_defaults(), **config}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


@pytest.mark.parametrize("path", STACK_FILES, ids=stack_name)
def test_every_stack_parses(path: Path):
    spec = load_stack_file(path)
    assert spec.prefix == f"{spec.team}-{spec.environment}"
    assert stack_name(path) in {spec.prefix, "local"}


def test_stacks_differ_like_real_teams():
    specs = {stack_name(p): load_stack_file(p) for p in STACK_FILES}
    teams = {s.team for name, s in specs.items() if name != "local"}
    assert len(teams) >= 2
    for team in teams:
        dev, prod = specs[f"{team}-dev"], specs[f"{team}-prod"]
        assert not dev.protect_data and prod.protect_data
        assert dev.budget.monthly_limit_usd < prod.budget.monthly_limit_usd
        assert dev.cluster.quota.gpus < prod.cluster.quota.gpus


def _walk(path: str) -> tuple[str, list[str | int]]:
    """'mlinfra:cluster.gpuPools[0].minSize' -> ('mlinfra:cluster', ['gpuPools', 0, 'minSize'])."""
    key = re.match(r"[^.\[]+", path)[0]  # type: ignore[index]
    parts = [int(i) if i else name for name, i in re.findall(r"\.(\w+)|\[(\d+)\]", path)]
    return key, parts


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets one field of the config."""

    def change(config: dict[str, Any]) -> None:
        key, parts = _walk(path)
        if not parts:
            config[key] = value
            return
        node = config[key]
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        key, parts = _walk(path)
        if not parts:
            del config[key]
            return
        node = config[key]
        for part in parts[:-1]:
            node = node[part]
        del node[parts[-1]]

    return change


def _both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        for one in changes:
            one(config)

    return change


# (stack to start from, the one change, the exact field path SpecError must name)
BAD_CONFIGS = [
    # S3 reserves bucket names starting xn-- (and sthree-, amzn-s3-demo-).
    ("vision-dev", _set("mlinfra:team", "xn--vision"), "mlinfra:team"),
    # CreateFeatureGroup.Description takes 128 characters.
    (
        "vision-dev",
        _set("mlinfra:featureGroups[0].description", "x" * 129),
        "mlinfra:featureGroups[0].description",
    ),
    # ModelPackageGroupDescription: letters, marks, spaces, symbols, digits, punctuation.
    (
        "vision-dev",
        _set("mlinfra:modelRegistry.modelGroups[0].description", "first line\nsecond line"),
        "mlinfra:modelRegistry.modelGroups[0].description",
    ),
    # Feature Store adds is_deleted, write_time and api_invocation_time to every record.
    (
        "vision-dev",
        _set("mlinfra:featureGroups[0].features[2].name", "write_time"),
        "mlinfra:featureGroups[0].features",
    ),
    # The monitor CronJob `<prefix>-<endpoint>-monitor`: 52 characters at most.
    ("vision-dev", _set("mlinfra:endpoints[0].name", "d" * 34), "mlinfra:endpoints[0].name"),
    ("vision-dev", _set("mlinfra:endpoint", []), "mlinfra:endpoint"),
    ("vision-dev", _set("mlinfra:team", "Vision_Team"), "mlinfra:team"),
    ("vision-dev", _set("mlinfra:environment", "production"), "mlinfra:environment"),
    ("vision-dev", _set("aws:region", "us-east"), "aws:region"),
    ("vision-dev", _drop("mlinfra:budget"), "mlinfra:budget"),
    ("vision-dev", _drop("mlinfra:costCenter"), "mlinfra:costCenter"),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].instanceTypes[0]", "m5.2xlarge"),
        "mlinfra:cluster.gpuPools[0].instanceTypes[0]",
    ),
    # What a real `pulumi up` (or the autoscaler, AWS Budgets, ECR) would trip over.
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].instanceTypes", ["g5.xlarge", "g5.2xlarge"]),
        "mlinfra:cluster.gpuPools[0].instanceTypes",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.kubernetesVersion", "1.29"),
        "mlinfra:cluster.kubernetesVersion",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.access.deployRole", "arn:aws:iam::123:user/me"),
        "mlinfra:cluster.access.deployRole",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.access.apiAccessCidrs", ["0.0.0.0/0"]),
        "mlinfra:cluster.access.apiAccessCidrs[0]",
    ),
    (
        "vision-prod",
        _set("mlinfra:cluster.access", {}),
        "mlinfra:cluster.access.deployRole",
    ),
    (
        "nlp-prod",
        _set("mlinfra:budget.thresholdsPercent", [25, 50, 75, 90, 100]),
        "mlinfra:budget.thresholdsPercent",
    ),
    (
        "vision-dev",
        _set("mlinfra:endpoints[0].imageTag", "sha-3f2a9c1"),
        "mlinfra:endpoints[0].imageTag",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[1].minSize", 5),
        "mlinfra:cluster.gpuPools[1].minSize",
    ),
    (
        "vision-prod",
        _set("mlinfra:cluster.gpuPools[1].desiredSize", 20),
        "mlinfra:cluster.gpuPools[1].desiredSize",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].capacity", "sometimes"),
        "mlinfra:cluster.gpuPools[0].capacity",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].instanceType", "g5.xlarge"),
        "mlinfra:cluster.gpuPools[0].instanceType",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[1].name", "train-a10g"),
        "mlinfra:cluster.gpuPools",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.systemPool.minSize", 9),
        "mlinfra:cluster.systemPool.minSize",
    ),
    (
        "vision-dev",
        _set("mlinfra:featureGroups[0].recordIdentifier", "uuid"),
        "mlinfra:featureGroups[0].recordIdentifier",
    ),
    (
        "vision-dev",
        _set("mlinfra:featureGroups[0].eventTime", "width"),
        "mlinfra:featureGroups[0].eventTime",
    ),
    (
        "vision-dev",
        _set("mlinfra:featureGroups[0].features[2].type", "float"),
        "mlinfra:featureGroups[0].features[2].type",
    ),
    (
        "vision-dev",
        _set("mlinfra:featureGroups[0].name", "image_stats"),
        "mlinfra:featureGroups[0].name",
    ),
    (
        "vision-dev",
        _set("mlinfra:featureGroups[0].name", "x" * 60),
        "mlinfra:featureGroups[0].name",
    ),
    (
        "vision-dev",
        _set("mlinfra:endpoints[0].modelGroup", "ghost"),
        "mlinfra:endpoints[0].modelGroup",
    ),
    (
        "vision-dev",
        _set("mlinfra:endpoints[0].nodePool", "train-h100"),
        "mlinfra:endpoints[0].nodePool",
    ),
    (
        "vision-dev",
        _set("mlinfra:endpoints[0].nodePool", "system"),
        "mlinfra:endpoints[0].gpus",
    ),
    (
        "nlp-dev",
        _set("mlinfra:endpoints[0].minInstances", 3),
        "mlinfra:endpoints[0].minInstances",
    ),
    (
        "nlp-dev",
        _set("mlinfra:endpoints[0].instanceType", "m5.large"),
        "mlinfra:endpoints[0].instanceType",
    ),
    (
        "nlp-prod",
        _set("mlinfra:network.privateSubnetIds", ["subnet-0aa11bb22cc33dd44"]),
        "mlinfra:network.privateSubnetIds",
    ),
    ("vision-prod", _set("mlinfra:network.cidr", "10.20.0.0/8"), "mlinfra:network.cidr"),
    ("vision-dev", _set("mlinfra:budget.alertEmails", ["finops"]), "mlinfra:budget.alertEmails[0]"),
    # Found by fuzzing: values AWS or Kubernetes would refuse at apply time, or that break
    # a rule silently (a NaN threshold never passes).
    (
        "vision-dev",
        _set("mlinfra:modelRegistry.modelGroups[0].approvalGate.threshold", float("nan")),
        "mlinfra:modelRegistry.modelGroups[0].approvalGate.threshold",
    ),
    (
        "vision-dev",
        _set("mlinfra:budget.monthlyLimitUsd", float("inf")),
        "mlinfra:budget.monthlyLimitUsd",
    ),
    ("vision-dev", _set("mlinfra:budget.monthlyLimitUsd", 1e30), "mlinfra:budget.monthlyLimitUsd"),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].maxSize", 10**30),
        "mlinfra:cluster.gpuPools[0].maxSize",
    ),
    ("vision-dev", _set("mlinfra:cluster.quota.gpus", 10**30), "mlinfra:cluster.quota.gpus"),
    ("vision-dev", _set("mlinfra:cluster.quota.cpu", "1" + "0" * 30), "mlinfra:cluster.quota.cpu"),
    (
        "nlp-dev",
        _set("mlinfra:endpoints[0].maxInstances", 10**30),
        "mlinfra:endpoints[0].maxInstances",
    ),
    (
        "vision-dev",
        _set("mlinfra:storage", {"logRetentionDays": 10**30}),
        "mlinfra:storage.logRetentionDays",
    ),
    (
        "vision-dev",
        _set("mlinfra:featureGroups[0].onlineTtlDays", 10**30),
        "mlinfra:featureGroups[0].onlineTtlDays",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].name", "p" * 71),
        "mlinfra:cluster.gpuPools[0].name",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].labels", {"kubernetes.io/hostname": "evil"}),
        "mlinfra:cluster.gpuPools[0].labels",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].labels", {"team/Bad Key": "x"}),
        "mlinfra:cluster.gpuPools[0].labels",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].labels", {"tier": "v" * 64}),
        "mlinfra:cluster.gpuPools[0].labels",
    ),
    # EKS CreateNodegroup takes label values of 1-63 characters (Kubernetes takes empty).
    (
        "vision-dev",
        _set("mlinfra:cluster.gpuPools[0].labels", {"tier": ""}),
        "mlinfra:cluster.gpuPools[0].labels",
    ),
    (
        "vision-dev",
        _set("mlinfra:cluster.kubernetesVersion", "1.00"),
        "mlinfra:cluster.kubernetesVersion",
    ),
    (
        "nlp-prod",
        _set(
            "mlinfra:network.privateSubnetIds",
            ["subnet-0aa11bb22cc33dd44", "subnet-0aa11bb22cc33dd44"],
        ),
        "mlinfra:network.privateSubnetIds[1]",
    ),
    ("vision-dev", _set("mlinfra:endpoints[0].cpu", "500"), "mlinfra:endpoints[0].cpu"),
    ("vision-dev", _set("mlinfra:endpoints[0].memory", "4000Gi"), "mlinfra:endpoints[0].memory"),
    (
        "vision-dev",
        _set("mlinfra:endpoints[0].maxInstances", 30),
        "mlinfra:endpoints[0].maxInstances",
    ),
    (
        "vision-dev",
        _both(
            _set("mlinfra:cluster.publicEndpoint", True),
            _set("mlinfra:cluster.publicAccessCidrs", ["not-a-cidr"]),
        ),
        "mlinfra:cluster.publicAccessCidrs[0]",
    ),
    (
        "vision-dev",
        _both(
            _set("mlinfra:cluster.publicEndpoint", True),
            _set("mlinfra:cluster.publicAccessCidrs", ["203.0.113.0/24", "0.0.0.0/0"]),
        ),
        "mlinfra:cluster.publicAccessCidrs[1]",
    ),
    # Prod is stricter than dev: each of these is fine in the dev stack.
    (
        "vision-prod",
        _drop("mlinfra:endpoints[0].modelVersion"),
        "mlinfra:endpoints[0].modelVersion",
    ),
    (
        "vision-prod",
        _drop("mlinfra:endpoints[1].modelVersion"),
        "mlinfra:endpoints[1].modelVersion",
    ),
    (
        "vision-prod",
        _set("mlinfra:endpoints[1].dataCapture", {"enabled": False}),
        "mlinfra:endpoints[1].dataCapture.enabled",
    ),
    ("vision-prod", _set("mlinfra:storage.protect", False), "mlinfra:storage.protect"),
    (
        "vision-prod",
        _both(
            _set("mlinfra:cluster.publicEndpoint", True),
            _set("mlinfra:cluster.publicAccessCidrs", ["203.0.113.0/24"]),
        ),
        "mlinfra:cluster.publicEndpoint",
    ),
]


def _case_id(case: tuple[str, Any, str]) -> str:
    return f"{case[0]}:{case[2]}"


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[_case_id(c) for c in BAD_CONFIGS])
def test_bad_config_names_its_field(case):
    stack, change, field = case
    source = f"stacks/Pulumi.{stack}.yaml"
    with pytest.raises(SpecError) as err:
        parse_spec(mutated(stack, change), source)
    assert err.value.fields == [field], str(err.value)
    assert source in str(err.value)
    assert field in str(err.value)


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[_case_id(c) for c in BAD_CONFIGS])
def test_bad_config_registers_no_resource(case):
    stack, change, field = case
    rendered = render_stack(
        stack, STACKS_DIR, config=as_pulumi_config(mutated(stack, change)), raise_errors=False
    )
    assert isinstance(rendered.error, SpecError), rendered.error
    assert rendered.error.fields == [field]
    assert rendered.resources == []


@pytest.mark.parametrize(
    ("stack", "length", "room", "limit"),
    [
        # vision-dev's first endpoint is monitored: vision-dev-<name>-monitor <= 52.
        ("vision-dev", 34, 33, "Kubernetes CronJob names may be (52)"),
        # nlp-dev's SageMaker endpoint, without its capture: Pulumi autonames its model
        # and endpoint config nlp-dev-<name>-<7 characters>, SageMaker takes 63.
        ("nlp-dev", 48, 47, "SageMaker model and endpoint config names may be (63)"),
    ],
)
def test_a_long_endpoint_name_is_told_its_tightest_room(stack, length, room, limit):
    def long_name(config: dict[str, Any]) -> None:
        endpoint = config["mlinfra:endpoints"][0]
        endpoint["name"] = "e" * length
        if stack == "nlp-dev":
            endpoint["dataCapture"] = {"enabled": False}

    with pytest.raises(SpecError) as err:
        parse_spec(mutated(stack, long_name), stack)
    (problem,) = err.value.problems
    assert problem[0] == "mlinfra:endpoints[0].name"
    assert limit in problem[1] and f"use at most {room} characters" in problem[1], problem[1]


def test_the_unbroken_config_renders():
    """The mutation harness itself: the untouched config passes through the same path."""
    rendered = render_stack(
        "vision-dev", STACKS_DIR, config=as_pulumi_config(config_of("vision-dev"))
    )
    assert rendered.error is None
    assert len(rendered.resources) > 50


def test_prod_rules_do_not_apply_to_dev():
    config = mutated("vision-prod", _drop("mlinfra:endpoints[1].modelVersion"))
    config["mlinfra:environment"] = "dev"
    spec = parse_spec(config, "test")
    assert spec.endpoints[1].model_version is None
    with pytest.raises(SpecError):
        parse_spec({**config, "mlinfra:environment": "prod"}, "test")


def test_several_problems_are_reported_together():
    config = mutated("vision-dev", _set("mlinfra:team", "X"))
    _set("mlinfra:cluster.gpuPools[0].capacity", "sometimes")(config)
    with pytest.raises(SpecError) as err:
        parse_spec(config, "stacks/Pulumi.vision-dev.yaml")
    assert set(err.value.fields) == {"mlinfra:team", "mlinfra:cluster.gpuPools[0].capacity"}


def test_messages_say_what_is_allowed():
    config = mutated("vision-dev", _set("mlinfra:cluster.gpuPools[0].instanceTypes[0]", "m5.large"))
    with pytest.raises(SpecError) as err:
        parse_spec(config, "stacks/Pulumi.vision-dev.yaml")
    assert "g5.*" in str(err.value) and "m5.large" in str(err.value)
    config = mutated("vision-dev", _set("mlinfra:cluster.gpuPools[0].capacity", "sometimes"))
    with pytest.raises(SpecError) as err:
        parse_spec(config, "stacks/Pulumi.vision-dev.yaml")
    assert "onDemand" in str(err.value) and "spot" in str(err.value)
    config = mutated("vision-dev", _set("mlinfra:cluster.gpuPools[0].instanceType", "g5.xlarge"))
    with pytest.raises(SpecError) as err:
        parse_spec(config, "stacks/Pulumi.vision-dev.yaml")
    assert "did you mean instanceTypes?" in str(err.value)
    assert "diskSizeGib" in str(err.value)  # the keys allowed at that place


def test_structured_values_arrive_as_json_strings():
    """The CLI passes objects and lists as JSON text; the spec takes both forms."""
    as_text = {
        k: json.dumps(v) if not isinstance(v, str) else v for k, v in config_of("nlp-dev").items()
    }
    assert parse_spec(as_text, "test") == load_stack("nlp-dev", STACKS_DIR)
    with pytest.raises(SpecError) as err:
        parse_spec({**as_text, "mlinfra:cluster": "{not json"}, "test")
    assert err.value.fields == ["mlinfra:cluster"]


def test_a_missing_stack_file_is_a_spec_error(tmp_path: Path):
    with pytest.raises(SpecError) as err:
        load_stack("nowhere", tmp_path)
    assert err.value.fields == ["file"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"config:\n  mlinfra:team: \xff\xfe\n", "file: not UTF-8 text (byte 0xff at offset 24)"),
        (b"config: {mlinfra:team: [unclosed\n", "file: not valid YAML"),
        (b"[" * 5000 + b"]" * 5000, "file: nested too deeply to be a stack config"),
        (b"config:\n  mlinfra:size: " + b"9" * 5000 + b"\n", "file: not a usable YAML value"),
    ],
)
def test_an_unreadable_stack_file_is_a_spec_error(tmp_path: Path, content: bytes, expected):
    """Bytes that are not a YAML document fail as a SpecError naming the file, never as a
    decoding, recursion or integer-size traceback."""
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=re.escape(expected)) as err:
        load_stack_file(path)
    assert err.value.fields == ["file"] and str(path) in str(err.value)


def test_a_stack_file_that_cannot_be_opened_is_a_spec_error(tmp_path: Path, monkeypatch):
    path = tmp_path / "Pulumi.locked.yaml"
    path.write_text("config: {}\n")

    def refused(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refused)
    with pytest.raises(SpecError, match="file: cannot be read: Permission denied"):
        load_stack_file(path)
