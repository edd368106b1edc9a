"""The inference server over real HTTP on loopback, serving a model trained by workloads.train."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_support import (
    LOAD_DELAY_ENV,
    PREDICT_DELAY_ENV,
    Server,
)
from workloads.serving.openapi import openapi
from workloads.serving.server import MAX_BODY_BYTES, ServeSettings, SettingsError
from workloads.training.artifact import load_model

ROOT = Path(__file__).resolve().parents[1]
SLOW_LOADER = "tests.serve_support:slow_model"


@pytest.fixture(scope="module")
def slow_server(model_dir: Path):
    """Each forward pass takes 0.6 s; waits up to 100 ms to fill a batch."""
    srv = Server(
        model_dir, "--loader", SLOW_LOADER, "--max-wait-ms", "100", env={PREDICT_DELAY_ENV: "0.6"}
    ).wait_ready()
    yield srv
    srv.stop()


def invoke_json(client: httpx.Client, instances: list, **headers: str) -> httpx.Response:
    return client.post("/invocations", json={"instances": instances}, headers=headers)


def assert_same_predictions(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["label"] == w["label"]
        assert g["probabilities"].keys() == w["probabilities"].keys()
        for k in w["probabilities"]:
            assert g["probabilities"][k] == pytest.approx(w["probabilities"][k], abs=1e-5)


# --- the hosting contract ---------------------------------------------------------------------


def test_ping_and_openapi(server: Server) -> None:
    assert server.client.get("/ping").status_code == 200
    doc = server.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/ping", "/invocations"} <= doc["paths"].keys()
    item = doc["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]
    schema = item["schema"]["properties"]["instances"]["items"]
    assert schema["required"] == ["age", "visits", "plan", "active"]  # the model's columns
    # Each column is typed as the server checks it: JSON numbers (within float32 once
    # standardised), JSON booleans, strings; null is missing.
    columns = schema["properties"]
    assert columns["age"]["type"] == columns["visits"]["type"] == ["number", "null"]
    assert -1e308 < columns["age"]["minimum"] < -1e38 and 1e38 < columns["age"]["maximum"] < 1e308
    assert columns["active"]["type"] == ["boolean", "null"]
    assert columns["plan"]["type"] == ["string", "null"]
    assert set(columns["plan"]["examples"]) == {"basic", "pro", "team"}
    assert schema["additionalProperties"] is False
    prediction = doc["components"]["schemas"]["Predictions"]["properties"]["predictions"]["items"]
    assert sorted(prediction["properties"]["label"]["enum"]) == ["no", "yes"]
    assert prediction["properties"]["probabilities"]["required"] == ["no", "yes"]


def test_json_predictions_match_predictor(server: Server, model_dir: Path, records) -> None:
    want = load_model(model_dir).predict_records(records)
    response = invoke_json(server.client, records)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    got = response.json()["predictions"]
    assert_same_predictions(got, want)
    assert {p["label"] for p in got} <= {"yes", "no"}


def test_csv_predictions_match_json(server: Server, model_dir: Path, records) -> None:
    predictor = load_model(model_dir)
    lines = []
    for r in records:
        values = ["" if r[c] is None else str(r[c]) for c in predictor.feature_columns]
        lines.append(",".join(values))
    response = server.client.post(
        "/invocations", content="\n".join(lines) + "\n", headers={"content-type": "text/csv"}
    )
    assert response.status_code == 200, response.text
    assert_same_predictions(response.json()["predictions"], predictor.predict_records(records))


def test_x_amzn_headers_are_ignored(server: Server, records) -> None:
    headers = {
        "X-Amzn-SageMaker-Custom-Attributes": "trace=1",
        "X-Amzn-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793",
        "X-Amzn-SageMaker-Target-Model": "model.tar.gz",
        "Accept": "application/json",
    }
    response = invoke_json(server.client, records[:2], **headers)
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 2


BIG = b'{"instances": [' + b'{"age": 1.0},' * (MAX_BODY_BYTES // 12) + b"{}]}"


@pytest.mark.parametrize(
    ("status", "body", "headers", "message"),
    [
        (400, b'{"instances": [', {}, "malformed JSON"),
        (400, b"[1, 2]", {}, '{"instances"'),
        (400, b'{"instances": []}', {}, "empty list"),
        (400, b'{"instances": {"age": 1}}', {}, "must be a list"),
        (400, b'{"instances": [], "extra": 1}', {}, "unexpected top-level keys"),
        (400, b'{"instances": [{"age": 1, "visits": 2, "plan": "pro"}]}', {}, "active"),
        (
            400,
            b'{"instances": [{"age": 1, "visits": 2, "plan": "pro", "active": true, "x": 1}]}',
            {},
            "unexpected column(s) x",
        ),
        (
            400,
            b'{"instances": [{"age": "old", "visits": 2, "plan": "pro", "active": true}]}',
            {},
            "'age' expects a number",
        ),
        (
            400,
            b'{"instances": [{"age": 1e308, "visits": 2, "plan": "pro", "active": true}]}',
            {},
            "record 0: column 'age' value 1e+308 is out of range",
        ),
        (400, b"1,2,pro\n", {"content-type": "text/csv"}, "expected 4 values"),
        (
            400,
            b"1,2,pro,true\n1e308,2,pro,true\n",
            {"content-type": "text/csv"},
            "row 1: column 'age' value '1e308' is out of range",
        ),
        (400, b"abc,2,pro,true\n", {"content-type": "text/csv"}, "'age' expects a number"),
        (400, b"\n\n", {"content-type": "text/csv"}, "empty CSV"),
        (415, b"<x/>", {"content-type": "application/xml"}, "unsupported Content-Type"),
        (406, b'{"instances": [{}]}', {"accept": "text/html"}, "Accept: text/html"),
        (413, BIG, {}, "limit"),
    ],
    ids=[
        "malformed",
        "not-object",
        "empty",
        "not-list",
        "extra-key",
        "missing-column",
        "extra-column",
        "wrong-type",
        "beyond-float32",
        "csv-width",
        "csv-beyond-float32",
        "csv-type",
        "csv-empty",
        "content-type",
        "accept",
        "too-big",
    ],
)
def test_bad_input_gets_4xx_and_server_keeps_serving(
    server: Server, records, status: int, body: bytes, headers: dict, message: str
) -> None:
    headers = {"content-type": "application/json", **headers}
    response = server.client.post("/invocations", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert invoke_json(server.client, records[:1]).status_code == 200


def test_body_over_limit_without_content_length(server: Server, records) -> None:
    def chunks():
        for _ in range(7):
            yield b" " * (1024 * 1024)

    response = server.client.post(
        "/invocations", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "limit" in response.json()["error"]
    assert invoke_json(server.client, records[:1]).status_code == 200


def test_wrong_method_and_path(server: Server) -> None:
    wrong = server.client.get("/invocations")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    wrong = server.client.post("/ping")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD"
    assert server.client.head("/ping").status_code == 200
    assert server.client.get("/nope").status_code == 404


# --- batching, liveness under load, draining ---------------------------------------------


def test_batching_merges_requests_and_isolates_bad_ones(slow_server: Server, records) -> None:
    before = slow_server.client.get("/stats").json()
    bad = [dict(records[0], visits="many")]
    bodies = [records[i : i + 1] for i in range(7)] + [bad]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        clients = [httpx.Client(base_url=slow_server.url, timeout=30) for _ in bodies]
        answers = list(pool.map(invoke_json, clients, bodies))
        for c in clients:
            c.close()
    assert [a.status_code for a in answers] == [200] * 7 + [400]
    assert "'visits' expects a number" in answers[-1].json()["error"]
    stats = slow_server.client.get("/stats").json()
    assert stats["requests"] - before["requests"] == 8
    assert stats["rejected"] - before["rejected"] == 1
    assert stats["max_batch_requests"] >= 2  # concurrent requests shared a forward pass
    assert stats["batches"] - before["batches"] < 7
    # What was alive once the model loaded (torch's objects) is out of the collector's reach:
    # a full collection does not pause the worker for a traversal of all of them.
    assert stats["gc_frozen"] > 10_000


def test_503_while_loading_ping_during_a_slow_batch_and_sigterm_drains(
    model_dir: Path, records
) -> None:
    srv = Server(
        model_dir,
        "--loader",
        SLOW_LOADER,
        env={LOAD_DELAY_ENV: "3", PREDICT_DELAY_ENV: "1.5"},
    )
    try:
        first = srv.first_answer()
        assert first.status_code == 503 and "loading" in first.json()["error"]
        early = invoke_json(srv.client, records[:1])
        assert early.status_code == 503
        srv.wait_ready()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(invoke_json, httpx.Client(base_url=srv.url, timeout=30), records)
            time.sleep(0.3)  # in flight: inside the 1.5 s forward pass
            # /ping is answered by the event loop while the batcher thread is busy.
            assert httpx.get(srv.url + "/ping", timeout=2.0).status_code == 200
            assert not pending.done()
            srv.proc.send_signal(signal.SIGTERM)
            assert pending.result().status_code == 200  # drained, not dropped
        assert srv.proc.wait(timeout=30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url + "/ping", timeout=2)
    finally:
        srv.stop()


# --- settings -------------------------------------------------------------------------------


def test_settings_from_env() -> None:
    env = {
        "SM_MODEL_DIR": "/m",
        "SAGEMAKER_BIND_TO_PORT": "9000",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "MLINFRA_SERVE_MAX_BATCH_SIZE": "16",
        "MLINFRA_SERVE_MAX_WAIT_MS": "0.5",
        "MLINFRA_SERVE_BATCHING": "off",
        "MLINFRA_SERVE_DRAIN_S": "7.5",
    }
    s = ServeSettings.from_env(env)
    assert (s.model_dir, s.port, s.workers, s.max_batch_size) == (Path("/m"), 9000, 3, 16)
    assert (s.max_wait_ms, s.batching, s.drain_s) == (0.5, False, 7.5)
    assert ServeSettings.from_env(s.to_env()) == s
    defaults = ServeSettings.from_env({})
    assert (defaults.model_dir, defaults.port) == (Path("/opt/ml/model"), 8080)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND_TO_PORT"),
        ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "port"),
        ({"MLINFRA_SERVE_MAX_BATCH_SIZE": "0"}, "max_batch_size"),
        ({"MLINFRA_SERVE_BATCHING": "maybe"}, "MLINFRA_SERVE_BATCHING"),
        ({"MLINFRA_SERVE_DRAIN_S": "-1"}, "drain_s must be 0..300"),
    ],
)
def test_bad_settings_name_the_problem(env: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServeSettings.from_env(env)


def test_missing_model_dir_fails_fast(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workloads.serve", "--model-dir", str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "does not exist" in done.stderr


def test_openapi_without_model_is_valid_json() -> None:
    doc = json.loads(json.dumps(openapi(None)))
    assert "/invocations" in doc["paths"]


def test_two_workers_share_the_port_and_stop_cleanly(model_dir: Path, records) -> None:
    srv = Server(model_dir, "--workers", "2")
    try:
        srv.wait_ready()
        pids = set()
        deadline = time.monotonic() + 60
        # New connections reach both; a worker still loading its model answers /stats
        # without a pid, so keep asking until both have answered with theirs.
        while len(pids - {None}) < 2 and time.monotonic() < deadline:
            with httpx.Client(base_url=srv.url, timeout=30) as fresh:
                assert invoke_json(fresh, records[:1]).status_code in (200, 503)
                pids.add(fresh.get("/stats").json().get("pid"))
        assert len(pids - {None}) == 2
        # The port is taken: a second server says so instead of sharing it.
        taken = subprocess.run(
            [sys.executable, "-m", "workloads.serve", "--model-dir", str(model_dir)]
            + ["--host", "127.0.0.1", "--port", str(srv.port), "--workers", "2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taken.returncode != 0 and "cannot listen" in taken.stderr
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=40) == 0
    finally:
        srv.stop()
