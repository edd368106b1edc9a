"""The local environment: the descriptor it writes, idempotence, bad stack configs, ports in
use, a pipeline interrupted at several steps that completes when run again, one pipeline
per stack (its trainer dies with it), and damaged state files (named, never mistaken for an
empty store, never a reason to stop a serving endpoint)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from components.spec import SpecError, load_stack
from workloads.cli import app, monitoring_line
from workloads.local import env as localenv
from workloads.local import pipeline
from workloads.local.process import LockHeldError, exclusive
from workloads.monitoring.local import newest_result
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
    (stacks / "Pulumi.folder.yaml").mkdir()  # was "no such stack config"
    with pytest.raises(SpecError, match="is a folder, not a stack config file"):
        localenv.up("folder", state, stacks_dir=stacks)
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
    # The pipeline ended with a shifted window of traffic: captured, monitored, drift found.
    paths = localenv.StackPaths.of("local", state)
    assert list((paths.buckets / "logs" / "data-capture" / "churn" / "AllTraffic").rglob("*.jsonl"))
    result = newest_result(paths.buckets, "churn")
    assert result is not None and result["rows"] > 0 and result["dataset_drift"]
    # the shifted columns drift (a small sampled window may flag another one by chance)
    assert len(set(result["drifted"]) & set(pipeline.MONITOR_SHIFT)) >= 2
    assert "DATASET DRIFT" in monitoring_line(paths, "churn")
    # No partial or temporary file is left where readers look.
    leftovers = [p for p in (state / "local" / "buckets").rglob("*") if ".tmp" in p.name]
    assert leftovers == []

    # Ingested once per data set: the offline store holds each record once.
    from workloads.features.store import feature_store_from_descriptor

    offline = feature_store_from_descriptor(descriptor).read_offline("customer-activity")
    assert not offline.duplicated(["customer_id", "event_time"]).any()

    # A newer approved version is rolled out by the next up: the server restarts on it.
    old_pid = localenv.read_process(localenv.StackPaths.of("local", state), "churn").pid
    # A second artifact (a copy: the registry gives one artifact one version).
    copy = localenv.uri_path(versions[0].model_uri).with_name("copy")
    shutil.copytree(localenv.uri_path(versions[0].model_uri), copy)
    v2 = registry.register("churn", copy.as_uri(), versions[0].metrics)
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


# --- two pipelines at once; a pipeline SIGKILLed mid-training -------------------------------

SLOW_TRAINER = """
import os, sys, time
pid_file = sys.argv[1]
with open(pid_file + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(pid_file + ".tmp", pid_file)
time.sleep(120)
"""


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie has died


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_one_pipeline_per_stack_and_its_trainer_dies_with_it(state, tmp_path):
    localenv.up("local", state, stacks_dir=STACKS, ports={"churn": localenv.free_port()})
    script, trainer_pid = tmp_path / "slow_trainer.py", tmp_path / "trainer.pid"
    script.write_text(SLOW_TRAINER)
    env = {**os.environ, pipeline.LAUNCHER_ENV: f"{sys.executable} {script} {trainer_pid}"}
    argv = [sys.executable, "-m", "workloads.cli", "pipeline", "--rows", "600", "--epochs", "1"]
    argv += ["--state-dir", str(state), "--stacks-dir", str(STACKS)]
    first = subprocess.Popen(argv, env=env, cwd=STACKS.parent, stdout=subprocess.DEVNULL)
    try:
        _wait_for(trainer_pid.exists, 90, "the first pipeline to start training")
        trainer = int(trainer_pid.read_text())

        # A second run refuses, naming the run in progress; nothing of the first is touched.
        run_file = state / "local" / "pipeline" / "run.json"
        before = run_file.read_bytes()
        result = runner.invoke(
            app,
            ["pipeline", "--rows", "600", "--epochs", "1", "--state-dir", str(state)]
            + ["--stacks-dir", str(STACKS)],
            env={"COLUMNS": "300"},
        )
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert f"the pipeline of stack local is held by pid {first.pid} (" in lines[0]
        assert "workloads.cli pipeline" in lines[0] and "--wait" in lines[0]
        assert run_file.read_bytes() == before

        # SIGKILL the pipeline: its trainer dies with it, and its lock goes with it.
        first.kill()
        first.wait(10)
        _wait_for(lambda: _gone(trainer), 20, f"trainer {trainer} to die with the pipeline")
    finally:
        first.kill()
        first.wait(10)
        if trainer_pid.exists() and not _gone(int(trainer_pid.read_text())):
            os.kill(int(trainer_pid.read_text()), signal.SIGKILL)  # only if the test failed
    lock = state / "local" / "pipeline" / ".lock"
    assert f"pid {first.pid} " in lock.read_text()  # what a SIGKILL leaves behind
    run = pipeline.Pipeline(
        "local", state, rows=600, epochs=1, seed=0, stacks_dir=STACKS, console=Console()
    )
    with run.exclusive():  # not blocked by the stale holder note
        assert f"pid {os.getpid()} " in lock.read_text()
    assert lock.read_text() == ""


def test_a_taken_lock_names_its_holder_or_is_waited_for(tmp_path):
    lock = tmp_path / "pipeline" / ".lock"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another open file description: flock conflicts as across processes
        with exclusive(lock, wait=False, what="the thing"):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    with pytest.raises(LockHeldError, match=f"the thing is held by pid {os.getpid()} .*; hint"):
        with exclusive(lock, wait=False, what="the thing", hint="; hint"):
            pass
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    with exclusive(lock, wait=True, what="the thing"):  # queues until the holder is done
        assert time.monotonic() - started >= 0.25
    holder.join(10)


# --- damaged state: named, never mistaken for empty; serving endpoints keep serving ---------


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    from tests.serve_support import make_frame, train_model

    return train_model(tmp_path_factory.mktemp("artifact"), make_frame(300), "label")


def _cli(*args: str, state: Path) -> tuple[int, str]:
    argv = [*args, "--state-dir", str(state)]
    if args[0] == "up":
        argv += ["--stacks-dir", str(STACKS)]
    result = runner.invoke(app, argv, env={"COLUMNS": "400"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _one_line_error(code: int, out: str, *names: str) -> str:
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), out
    assert all(name in lines[0] for name in names), (names, out)
    return lines[0]


def test_damaged_state_files_are_named_and_nothing_serving_is_stopped(state, artifact):
    localenv.up("local", state, stacks_dir=STACKS, ports={"churn": localenv.free_port()})
    paths = localenv.StackPaths.of("local", state)
    registry = registry_from_descriptor(localenv.read_descriptor(paths))
    registry.approve("churn", registry.register("churn", artifact.as_uri(), {}).version)
    served = localenv.up("local", state, stacks_dir=STACKS).endpoints[0]
    assert served.state == "serving"

    def still_serving() -> None:
        assert localenv.pid_alive(served.pid) and localenv.ping(served.url)

    # registry.db truncated or overwritten: up fails naming it, the endpoint keeps serving.
    db = paths.registry / "registry.db"
    good = db.read_bytes()
    for damage, reason in ((b"", "is empty (0 bytes"), (b"\x13" * 5000, "cannot be read")):
        db.write_bytes(damage)
        line = _one_line_error(*_cli("up", state=state), str(db), reason, "backup")
        assert "no approved model" not in line
        still_serving()
        _one_line_error(*_cli("status", state=state), str(db))
        assert db.read_bytes() == damage  # never recreated empty
    db.write_bytes(good)
    assert localenv.up("local", state, stacks_dir=STACKS).messages == []  # as it was
    still_serving()

    # platform.json malformed: status says to run up, and up writes it again.
    paths.descriptor.write_text('{"version": 1, "backend": "local"')
    _one_line_error(*_cli("status", state=state), str(paths.descriptor), "mlinfra up")
    code, out = _cli("up", state=state)
    assert code == 0 and localenv.read_descriptor(paths).stack == "local"
    still_serving()

    # endpoints/churn.json malformed: named by up and status; down still stops the server
    # (found by its environment) and writes the record again.
    record = paths.endpoint_state("churn")
    record.write_text('{"name": "churn", "port": "eighty"}')
    _one_line_error(*_cli("up", state=state), str(record), "mlinfra down")
    _one_line_error(*_cli("status", state=state), str(record), "mlinfra down")
    still_serving()
    code, out = _cli("down", state=state)
    assert code == 0 and f"stopped process {served.pid}" in out
    assert not localenv.pid_alive(served.pid)
    assert localenv.read_process(paths, "churn").stopped

    # down --purge always works, whatever is damaged.
    record.write_bytes(b"\xff\xfe not json")
    paths.descriptor.write_text("[]")
    db.write_bytes(b"")
    code, out = _cli("down", "--purge", state=state)
    assert code == 0 and f"purged {paths.root}" in out and not paths.root.exists()
