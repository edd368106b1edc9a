"""Every stack config again, with every name the spec lets a team choose at its longest.

AWS and Kubernetes limit names; the platform derives most of them from the team, the
environment and the names in the spec. A stack that renders fine as `vision-dev` can still
fail at `pulumi up` for a team whose name is 16 characters, on a review stack `pr-999999`,
or with an endpoint name at the length the spec accepts. `longest_stack("vision-dev")`
renders the vision-dev stack with exactly that: the longest team name and environment the
spec accepts (prod stays prod), and each pool, feature group, model group and endpoint
name, description and approval metric stretched to the most the spec allows (references
to them follow).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from components.mockrun import Rendered, render_stack, stack_config
from components.spec import (
    MAX_DESCRIPTION,
    PlatformSpec,
    load_stack_file,
    name_rooms,
    parse_spec,
)
from tests.stack_support import STACKS_DIR

LONGEST_TEAM = "fraud-detection2"  # the spec's 16 characters, with a hyphen
LONGEST_NON_PROD = "pr-999999"  # the longest environment the spec accepts
LONGEST_METRIC = 255  # ApprovalGateSpec.metric


def _stretch(name: str, length: int) -> str:
    """`name` padded to `length` characters, still a valid name of its kind."""
    if len(name) >= length:
        return name
    pad = length - len(name) - 1
    return f"{name}-{'x' * pad}" if pad > 0 else name + "x"


def _rooms(config: dict[str, str]) -> dict[tuple[Any, ...], int]:
    """Per spec field a physical name is made from: the most characters it may have (the
    tightest of the limits of the names made from it, `components.spec.name_rooms`)."""
    rooms = name_rooms(parse_spec(config, "longest"))
    return {loc: room for loc, (room, _, _) in rooms.items()}


def _at(value: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        value = value[part]
    return value


def longest_config(stack: str) -> dict[str, str]:
    spec: PlatformSpec = load_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml")
    config = stack_config(stack, STACKS_DIR)
    config["mlinfra:team"] = LONGEST_TEAM
    config["mlinfra:environment"] = "prod" if spec.is_prod else LONGEST_NON_PROD
    values = {
        k: json.loads(v)
        for k, v in config.items()
        if k.startswith("mlinfra:")
        and k not in ("mlinfra:team", "mlinfra:environment", "mlinfra:costCenter")
    }
    renamed: dict[str, dict[str, str]] = {"cluster": {}, "modelRegistry": {}}
    for loc, room in _rooms(config).items():
        parent = _at(values[f"mlinfra:{loc[0]}"], loc[1:-1])
        new = _stretch(parent["name"], room)
        renamed.setdefault(loc[0], {})[parent["name"]] = parent["name"] = new
    for group in values.get("mlinfra:featureGroups", []):
        group["description"] = _stretch("features", MAX_DESCRIPTION["featureGroup"])
    for group in values.get("mlinfra:modelRegistry", {}).get("modelGroups", []):
        group["description"] = _stretch("models", MAX_DESCRIPTION["modelGroup"])
        if group.get("approvalGate"):
            group["approvalGate"]["metric"] = _stretch("accuracy", LONGEST_METRIC)
    for ep in values.get("mlinfra:endpoints", []):
        ep["modelGroup"] = renamed["modelRegistry"].get(ep["modelGroup"], ep["modelGroup"])
        if "nodePool" in ep:
            ep["nodePool"] = renamed["cluster"].get(ep["nodePool"], ep["nodePool"])
    config.update({k: json.dumps(v) for k, v in values.items()})
    return config


@functools.cache
def longest_stack(stack: str) -> Rendered:
    return render_stack(stack, STACKS_DIR, config=longest_config(stack))
