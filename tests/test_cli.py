"""`mlinfra` end to end, on loopback in a temporary state folder: up, pipeline, status,
predict, down, up again (same version, same port), and a killed endpoint process."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from workloads.cli import app, read_records
from workloads.local import churn
from workloads.local import env as localenv

STACKS = Path(__file__).resolve().parent.parent / "stacks"
runner = CliRunner()


def mlinfra(*args: str, state: Path) -> tuple[int, str]:
    extra = ["--state-dir", str(state)]
    if args[0] in ("up", "pipeline"):
        extra += ["--stacks-dir", str(STACKS)]
    # Wide output, so that no message is wrapped in the middle of what a test looks for.
    result = runner.invoke(app, [*args, *extra], env={"COLUMNS": "200"}, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    state = tmp_path_factory.mktemp("mlinfra-state")
    yield state
    # Always stop what the tests started, whatever happened.
    for path in (state / "local" / "endpoints").glob("*.json"):
        pid = json.loads(path.read_text()).get("pid")
        if localenv.pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
    localenv.down("local", state)


def _pid(state: Path) -> int:
    return json.loads((state / "local" / "endpoints" / "churn.json").read_text())["pid"]


def test_lifecycle_end_to_end(state, tmp_path):
    port = localenv.free_port()
    code, out = mlinfra("up", "--port", f"churn={port}", state=state)
    assert code == 0, out
    assert "waiting for a model" in out and f"http://127.0.0.1:{port}" in out
    descriptor_file = state / "local" / "platform.json"
    descriptor = descriptor_file.read_bytes()

    code, out = mlinfra("pipeline", "--rows", "3000", "--epochs", "15", state=state)
    assert code == 0, out
    assert "register: churn v1" in out and "Approved" in out
    assert f"endpoint churn: http://127.0.0.1:{port} (serving churn v1)" in out
    sample_file = state / "local" / "sample-requests.csv"
    assert f"mlinfra predict churn {sample_file}" in out
    code, out = mlinfra("predict", "churn", str(sample_file), state=state)
    assert code == 0 and "5 predictions" in out
    code, out = mlinfra("predict", "churn", str(sample_file), "--json", state=state)
    predictions = json.loads(out)["predictions"]
    assert len(predictions) == 5 and {p["label"] for p in predictions} <= {0, 1}

    code, out = mlinfra("status", state=state)
    assert code == 0, out
    assert "serving" in out and "200 OK" in out and "v1 Approved" in out

    # predict: CSV rows (with a missing value) and JSON rows, from the later period.
    validation = next((state / "local" / "buckets" / "artifacts").rglob("validation.csv"))
    sample = pd.read_csv(validation, nrows=4)[churn.FEATURES]
    sample.loc[0, "avg_session_minutes"] = None
    csv_file, json_file = tmp_path / "rows.csv", tmp_path / "rows.json"
    sample.to_csv(csv_file, index=False)
    json_file.write_text(json.dumps({"instances": read_records(csv_file)}))
    code, out_csv = mlinfra("predict", "churn", str(csv_file), state=state)
    assert code == 0, out_csv
    assert "4 predictions" in out_csv
    code, out_json = mlinfra("predict", "churn", str(json_file), state=state)
    assert code == 0 and out_json == out_csv

    # A bad row gets the server's message, naming the column.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**read_records(csv_file)[0], "plan": 3}]))
    code, out = mlinfra("predict", "churn", str(bad), state=state)
    assert code == 1 and "plan" in out
    code, out = mlinfra("predict", "nope", str(csv_file), state=state)
    assert code == 1 and "no endpoint 'nope'" in out and "churn" in out

    code, out = mlinfra("down", state=state)
    assert code == 0 and "stopped process" in out
    code, out = mlinfra("status", state=state)
    assert code == 0 and "stopped" in out
    code, out = mlinfra("predict", "churn", str(csv_file), state=state)
    assert code == 1 and "cannot reach" in out

    # up again: same port, same version, same answers; the descriptor is unchanged.
    code, out = mlinfra("up", state=state)
    assert code == 0, out
    assert f"serving churn v1 at http://127.0.0.1:{port}" in out
    assert descriptor_file.read_bytes() == descriptor
    code, out = mlinfra("predict", "churn", str(csv_file), state=state)
    assert code == 0 and out == out_csv

    # Idempotent: a second up changes nothing and does not restart the healthy server.
    pid = _pid(state)
    code, out = mlinfra("up", state=state)
    assert code == 0 and "- endpoint" not in out
    assert _pid(state) == pid

    # A dead endpoint: status reports it (exit 1), up restarts it on the same port.
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while localenv.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    code, out = mlinfra("status", state=state)
    assert code == 1 and "dead" in out and "mlinfra up" in out
    code, out = mlinfra("up", state=state)
    assert code == 0 and "had died; restarting it" in out
    assert _pid(state) != pid
    code, out = mlinfra("status", state=state)
    assert code == 0 and "serving" in out

    code, out = mlinfra("down", "--purge", state=state)
    assert code == 0 and not (state / "local").exists()


def test_read_records_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_records(tmp_path / "missing.csv")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="no rows"):
        read_records(empty)
    scalars = tmp_path / "scalars.json"
    scalars.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected objects"):
        read_records(scalars)
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"a": 1}\n{"a": 2}\n')
    assert read_records(lines) == [{"a": 1}, {"a": 2}]


def test_status_and_predict_before_up(tmp_path):
    code, out = mlinfra("status", state=tmp_path)
    assert code == 1 and "not up" in out
    code, out = mlinfra("down", state=tmp_path)
    assert code == 0 and "nothing to stop" in out


def test_bad_port_flag(tmp_path):
    code, out = mlinfra("up", "--port", "churn:80", state=tmp_path)
    assert code == 1 and "NAME=PORT" in out
    assert not (tmp_path / "local").exists()
