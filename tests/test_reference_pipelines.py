"""`mlinfra pipeline --workload defects|tickets`: the whole local lifecycle on the vision and
NLP teams' stacks (registry, gate, endpoint, sample requests shown as a table)."""

from __future__ import annotations

import io

import pytest
import yaml
from rich.console import Console

from tests.test_local_env import STACKS, _stop_all, _write_stack
from workloads.local import env as localenv
from workloads.local import pipeline
from workloads.local.reference import REFERENCES
from workloads.platform import load_descriptor
from workloads.registry.store import registry_from_descriptor


@pytest.fixture
def state(tmp_path):
    state = tmp_path / "state"
    yield state
    _stop_all(state)


@pytest.mark.parametrize(
    ("workload", "stack", "endpoint"),
    [("defects", "vision-dev", "defects"), ("tickets", "nlp-dev", "ticket-router")],
)
def test_reference_workload_pipeline(state, tmp_path, workload, stack, endpoint):
    # The team's stack as it is, with a gate a 2-epoch model on tiny data passes.
    config = yaml.safe_load((STACKS / f"Pulumi.{stack}.yaml").read_text())["config"]
    group = config["mlinfra:modelRegistry"]["modelGroups"][0]
    group["approvalGate"]["threshold"] = 0.0
    stacks = tmp_path / "stacks"
    _write_stack(stacks, stack, config)
    assert pipeline.default_stack(workload) == stack
    localenv.up(stack, state, stacks_dir=stacks, ports={endpoint: localenv.free_port()})

    out = io.StringIO()
    run = pipeline.run_pipeline(
        stack,
        state,
        rows=120,
        epochs=2,
        stacks_dir=stacks,
        console=Console(file=out, width=200),
        workload=workload,
    )
    text = out.getvalue()
    assert run.status == "Approved" and run.version == 1, text
    assert {"accuracy", "validation_loss"} <= set(run.metrics)
    registry = registry_from_descriptor(load_descriptor(state / stack / "platform.json"))
    assert [v.version for v in registry.list_versions(group["name"])] == [1]
    assert "sample requests to http://127.0.0.1:" in text and "p(predicted)" in text
    assert (state / stack / "buckets" / "raw" / workload).is_dir()
    (status,) = localenv.status(stack, state)
    assert status.state == "serving" and status.model_version == 1


def test_unknown_workload_is_named(state):
    with pytest.raises(pipeline.PipelineError, match="unknown workload 'faces'"):
        pipeline.run_pipeline("local", state, stacks_dir=STACKS, workload="faces")
    assert set(REFERENCES) == {"defects", "tickets"}
