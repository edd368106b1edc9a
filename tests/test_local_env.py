"""The local environment: the descriptor it writes, idempotence, bad stack configs, ports in
use, and a pipeline interrupted at several steps that completes when run again."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from components.spec import SpecError, load_stack
from workloads.cli import app
from workloads.local import env as localenv
from workloads.local import pipeline
from workloads.platform import load_descriptor
from workloads.registry.store import registry_from_descriptor

STACKS = Path(__file__).resolve().parent.parent / "stacks"
LOCAL = yaml.safe_load((STACKS / "Pulumi.local.yaml").read_text())
runner = CliRunner()


def _stop_all(state: Path) -> None:
    for path in state.glob("*/endpoints/*.json"):
        pid = json.loads(path.read_text()).get("pid")
        if localenv.pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def state(tmp_path):
    state = tmp_path / "state"
    yield state
    _stop_all(state)


def _write_stack(folder: Path, name: str, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


def _waiting_up(state: Path, **kw):
    """`up` with a free port; no model yet, so no process is started."""
    return localenv.up("local", state, stacks_dir=STACKS, **kw)


# --- the descriptor and idempotence --------------------------------------------------------


def test_up_writes_the_descriptor_and_is_idempotent(state):
    port = localenv.free_port()
    result = _waiting_up(state, ports={"churn": port})
    root = state / "local"
    d = load_descriptor(root / "platform.json")
    assert d == result.descriptor
    assert (d.backend, d.stack, d.team, d.environment) == ("local", "local", "demo", "dev")
    for purpose, uri in d.buckets.model_dump().items():
        assert uri == (root / "buckets" / purpose).as_uri() and localenv.uri_path(uri).is_dir()
    profile = d.feature_store.groups["customer-profile"]
    assert (
        profile.name == "demo-dev-customer-profile" and profile.record_identifier == "customer_id"
    )
    assert localenv.uri_path(profile.offline_uri).is_dir()
    gate = d.registry.model_groups["churn"].gate
    assert d.registry.model_groups["churn"].name == "demo-dev-churn"
    assert (gate.metric, gate.threshold, gate.mode) == ("accuracy", 0.7, "max")
    assert d.registry.repositories == {
        "train": "local/demo-dev-train",
        "serve": "local/demo-dev-serve",
    }
    ep = d.endpoints["churn"]
    assert (ep.kind, ep.model_group, ep.url) == ("local", "churn", f"http://127.0.0.1:{port}")
    assert (d.cluster.name, d.cluster.namespace, d.cluster.service_account) == (
        "local",
        "demo",
        "demo-workloads",
    )
    assert set(d.cluster.node_pools) == {"system", "train-gpu"}
    assert d.cluster.node_pools["train-gpu"].instance_types == ["g5.xlarge"]
    assert d.local.online_store == str(root / "online-store.db")
    assert [s.state for s in result.endpoints] == ["waiting for a model"]
    assert [s.state for s in localenv.status("local", state)] == ["waiting for a model"]

    # Twice: the same document, same port, nothing to report, the file not rewritten.
    before = (root / "platform.json").stat().st_mtime_ns
    again = _waiting_up(state)
    assert again.descriptor == d and again.messages == []
    assert (root / "platform.json").stat().st_mtime_ns == before


def test_descriptor_is_what_workloads_read(state, monkeypatch):
    _waiting_up(state, ports={"churn": localenv.free_port()})
    monkeypatch.setenv("MLINFRA_PLATFORM", str(state / "local" / "platform.json"))
    assert load_descriptor().stack == "local"


def test_pinned_versions_and_removed_endpoints(tmp_path):
    stacks, state = tmp_path / "stacks", tmp_path / "state"
    pinned = _broken(lambda c: c["mlinfra:endpoints"][0].update(modelVersion=1))
    _write_stack(stacks, "local", pinned)
    result = localenv.up("local", state, stacks_dir=stacks, ports={"churn": localenv.free_port()})
    registry = registry_from_descriptor(result.descriptor)
    registry.register("churn", (tmp_path / "model").as_uri(), {"accuracy": 0.5})
    # Pinned to v1, which is registered but not approved: nothing is served.
    result = localenv.up("local", state, stacks_dir=stacks)
    assert [s.state for s in result.endpoints] == ["waiting for a model"]
    assert localenv.served_version(load_stack("local", stacks), result.descriptor, "churn") is None

    # The endpoint leaves the spec: up forgets it (as pulumi up would delete it).
    _write_stack(stacks, "local", _broken(lambda c: c.pop("mlinfra:endpoints")))
    result = localenv.up("local", state, stacks_dir=stacks)
    assert result.descriptor.endpoints == {}
    assert result.messages == ["endpoint churn: removed from the spec, stopped"]
    assert not (state / "local" / "endpoints" / "churn.json").exists()


# --- bad stack configs: one message naming the file and field; nothing created -----------


def _broken(config_change) -> dict:
    config = json.loads(json.dumps(LOCAL["config"]))
    config_change(config)
    return config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["mlinfra:endpoints"][0].update(modelGroup="fraud"), "endpoints[0].modelGroup"),
        (
            lambda c: c["mlinfra:featureGroups"][0]["features"][2].update(type="text"),
            "featureGroups[0].features[2].type",
        ),
        (lambda c: c.update({"mlinfra:endpoint": []}), "mlinfra:endpoint"),
        (lambda c: c.pop("mlinfra:team"), "mlinfra:team"),
    ],
)
def test_bad_stack_config_names_file_and_field_and_creates_nothing(tmp_path, change, field):
    stacks = tmp_path / "stacks"
    path = _write_stack(stacks, "broken", _broken(change))
    state = tmp_path / "state"
    result = runner.invoke(
        app,
        ["up", "--stack", "broken", "--state-dir", str(state), "--stacks-dir", str(stacks)],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 1
    assert str(path) in result.output and field in result.output
    assert not state.exists()


def test_unknown_and_unparseable_stacks(tmp_path):
    state = tmp_path / "state"
    with pytest.raises(SpecError, match="no such stack config") as err:
        localenv.up("nope", state, stacks_dir=STACKS)
    assert "Pulumi.nope.yaml" in str(err.value)
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.bad.yaml").write_text("config: {mlinfra:team: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        localenv.up("bad", state, stacks_dir=stacks)
    assert not state.exists()


# --- ports ------------------------------------------------------------------------------------


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_requested_port_in_use_is_named_and_nothing_is_created(tmp_path, taken_port):
    state = tmp_path / "state"
    result = runner.invoke(
        app,
        [
            "up",
            "--state-dir",
            str(state),
            "--stacks-dir",
            str(STACKS),
            "--port",
            f"churn={taken_port}",
        ],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 1
    assert f"port {taken_port}" in result.output and "in use" in result.output
    assert not state.exists()
    with pytest.raises(localenv.LocalEnvError, match="unknown endpoint"):
        localenv.up("local", state, stacks_dir=STACKS, ports={"fraud": 9999})
    with pytest.raises(localenv.LocalEnvError, match="1-65535"):
        localenv.up("local", state, stacks_dir=STACKS, ports={"churn": 70000})
    assert not state.exists()


def test_a_default_port_in_use_is_replaced_and_kept(state, taken_port, monkeypatch):
    monkeypatch.setattr(localenv, "FIRST_PORT", taken_port)
    result = _waiting_up(state)
    assert f"port {taken_port} is in use" in result.messages[0]
    url = result.descriptor.endpoints["churn"].url
    assert url != f"http://127.0.0.1:{taken_port}"
    # The replacement is remembered: the next up keeps it.
    assert _waiting_up(state).descriptor.endpoints["churn"].url == url


# --- a pipeline interrupted at several steps --------------------------------------------------

FAIL_ONCE = """
import os, sys
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    sys.exit("simulated failure: the training node went away")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def test_an_interrupted_pipeline_completes_when_run_again(state, tmp_path, monkeypatch):
    localenv.up("local", state, stacks_dir=STACKS, ports={"churn": localenv.free_port()})
    descriptor = load_descriptor(state / "local" / "platform.json")
    registry = registry_from_descriptor(descriptor)
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    kw = dict(rows=2500, epochs=12, stacks_dir=STACKS, console=console)

    # 1. Training fails (the launcher dies once): nothing is registered.
    script = tmp_path / "fail_once.py"
    script.write_text(FAIL_ONCE)
    monkeypatch.setenv(
        pipeline.LAUNCHER_ENV, f"{sys.executable} {script} {tmp_path / 'failed-once'}"
    )
    with pytest.raises(pipeline.PipelineError, match="(?s)training failed.*simulated failure"):
        pipeline.run_pipeline("local", state, **kw)
    assert registry.list_versions("churn") == []
    run = json.loads((state / "local" / "pipeline" / "run.json").read_text())
    assert run["done"] == ["data", "ingest", "training set"]

    # 2. It crashes right after registering, before the version is recorded.
    real_register = pipeline.Pipeline.register

    def register_then_crash(self, run):
        real_register(self, run)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Pipeline, "register", register_then_crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline("local", state, **kw)
    assert [v.status for v in registry.list_versions("churn")] == ["PendingManualApproval"]
    monkeypatch.undo()

    # 3. Run again: same run (training is not redone), the version is reused, not doubled.
    done = pipeline.run_pipeline("local", state, **kw)
    versions = registry.list_versions("churn")
    assert [(v.version, v.status) for v in versions] == [(1, "Approved")]
    assert done.version == 1 and done.run_id == run["run_id"]
    assert versions[0].metrics["accuracy"] >= 0.7
    assert [(s.state, s.model_version) for s in localenv.status("local", state)] == [("serving", 1)]
    assert not (state / "local" / "pipeline" / "run.json").exists()
    # No partial or temporary file is left where readers look.
    leftovers = [p for p in (state / "local" / "buckets").rglob("*") if ".tmp" in p.name]
    assert leftovers == []

    # Ingested once per data set: the offline store holds each record once.
    from workloads.features.store import feature_store_from_descriptor

    offline = feature_store_from_descriptor(descriptor).read_offline("customer-activity")
    assert not offline.duplicated(["customer_id", "event_time"]).any()

    # A newer approved version is rolled out by the next up: the server restarts on it.
    old_pid = localenv.read_process(localenv.StackPaths.of("local", state), "churn").pid
    v2 = registry.register("churn", versions[0].model_uri, versions[0].metrics)
    result = localenv.up("local", state, stacks_dir=STACKS)
    assert result.messages == []  # pending versions are not served
    registry.approve("churn", v2.version)
    result = localenv.up("local", state, stacks_dir=STACKS)
    assert "rolling out churn v2 (was v1)" in result.messages[0]
    assert [(s.state, s.model_version) for s in result.endpoints] == [("serving", 2)]
    assert not localenv.pid_alive(old_pid)


def test_a_model_below_the_gate_stays_pending_until_approved_by_hand(tmp_path):
    config = _broken(lambda c: c["mlinfra:modelRegistry"]["modelGroups"][0].update(
        approvalGate={"metric": "accuracy", "threshold": 0.999}
    ))  # fmt: skip
    stacks = tmp_path / "stacks"
    _write_stack(stacks, "strict", config)
    state = tmp_path / "state"
    try:
        localenv.up("strict", state, stacks_dir=stacks, ports={"churn": localenv.free_port()})
        out = Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115
        run = pipeline.run_pipeline(
            "strict", state, rows=600, epochs=1, stacks_dir=stacks, console=out
        )
        assert run.status == "PendingManualApproval"
        assert [s.state for s in localenv.status("strict", state)] == ["waiting for a model"]
        # Other data would mix customers with the data set the feature store holds: refused.
        with pytest.raises(pipeline.PipelineError, match="already holds data set"):
            pipeline.run_pipeline(
                "strict", state, rows=700, epochs=1, stacks_dir=stacks, console=out
            )

        def approve(*args: str):
            argv = ["approve", *args, "--stack", "strict", "--state-dir", str(state)]
            argv += ["--stacks-dir", str(stacks)]
            return runner.invoke(app, argv, env={"COLUMNS": "200"})

        result = approve("fraud", "1")
        assert result.exit_code == 1 and "'fraud' is not declared" in result.output
        result = approve("churn", "7")
        assert result.exit_code == 1 and "no version 7" in result.output
        result = approve("churn", "1")
        assert result.exit_code == 0, result.output
        assert "churn v1: Approved" in result.output and "serving churn v1" in result.output
        assert [s.state for s in localenv.status("strict", state)] == ["serving"]
    finally:
        _stop_all(state)


def test_pipeline_needs_up_first(tmp_path):
    with pytest.raises(pipeline.PipelineError, match="mlinfra up"):
        pipeline.run_pipeline("local", tmp_path, rows=200, stacks_dir=STACKS)
