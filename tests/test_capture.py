"""Data capture: SageMaker's record format and file layout, sampling, a full queue never
blocking, and the reader decoding both encodings."""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from pathlib import Path

import pytest

from workloads.monitoring.layout import endpoint_capture_uri
from workloads.monitoring.reader import ReadStats, read_events
from workloads.serving.capture import Capturer, from_env

LAYOUT = re.compile(
    r"churn/AllTraffic/\d{4}/\d{2}/\d{2}/\d{2}/\d{2}-\d{2}-\d{3}-[0-9a-f-]{36}\.jsonl$"
)


def _records(root: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(root.rglob("*.jsonl")) for line in p.open()]


def test_format_and_layout(tmp_path):
    cap = Capturer(tmp_path, "churn").start()
    body = b'{"instances": [{"age": 30, "plan": "pro"}]}'
    out = b'{"predictions": [{"label": "yes"}]}'
    assert cap.offer("application/json", body, out, inference_id="abc-1")
    assert cap.offer("text/csv", b"30,pro\n41,basic", b'{"predictions": [1, 0]}')
    cap.stop()
    files = list(tmp_path.rglob("*.jsonl"))
    assert len(files) == 1 and LAYOUT.search(files[0].relative_to(tmp_path).as_posix())
    first, second = _records(tmp_path)
    assert first["eventVersion"] == "0"
    assert first["captureData"]["endpointInput"] == {
        "observedContentType": "application/json",
        "mode": "INPUT",
        "data": body.decode(),
        "encoding": "JSON",
    }
    assert first["captureData"]["endpointOutput"]["mode"] == "OUTPUT"
    assert first["captureData"]["endpointOutput"]["encoding"] == "JSON"
    meta = first["eventMetadata"]
    assert meta["inferenceId"] == "abc-1" and re.fullmatch(r"[0-9a-f-]{36}", meta["eventId"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", meta["inferenceTime"])
    assert "inferenceId" not in second["eventMetadata"]
    assert second["captureData"]["endpointInput"]["encoding"] == "CSV"
    assert cap.stats()["written"] == 2 and cap.stats()["files"] == 1


def test_base64_csv_payload_reads_back(tmp_path):
    cap = Capturer(tmp_path, "churn", base64_all=True).start()
    cap.offer("text/csv", b"30,pro\n41,basic", b'{"predictions": [1, 0]}', inference_id="i")
    cap.stop()
    (record,) = _records(tmp_path)
    part = record["captureData"]["endpointInput"]
    assert part["encoding"] == "BASE64"
    assert base64.b64decode(part["data"]) == b"30,pro\n41,basic"
    (event,) = read_events(str(tmp_path), None, None, ReadStats())
    assert event.inputs == [["30", "pro"], ["41", "basic"]] and event.predictions == [1, 0]
    assert event.key == "i"


def test_sampling_percent_is_honoured(tmp_path):
    draws = iter([i / 100 for i in range(100)])
    cap = Capturer(tmp_path, "churn", percent=30, sample=lambda: next(draws))
    queued = [cap.offer("text/csv", b"1", b"{}") for _ in range(100)]
    assert sum(queued) == 30 and queued[:30] == [True] * 30
    assert cap.stats()["offered"] == 100 and cap.stats()["captured"] == 30
    with pytest.raises(ValueError, match="capture percent 120"):
        Capturer(tmp_path, "churn", percent=120)


def _offers_return(cap: Capturer, n: int) -> list[bool]:
    """`n` offers on another thread; fails if they do not all return while nothing drains
    the queue (a blocking put would wait forever)."""
    results: list[bool] = []
    worker = threading.Thread(
        target=lambda: results.extend(cap.offer("text/csv", b"1,2", b"{}") for _ in range(n))
    )
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "offer blocked on a full queue"
    return results


def test_a_full_queue_drops_and_counts_never_blocks(tmp_path):
    cap = Capturer(tmp_path, "churn", queue_size=5)  # no writer: nothing drains the queue
    results = _offers_return(cap, 1000)
    assert sum(results) == 5 and cap.stats()["dropped"] == 995


def test_a_stuck_disk_never_blocks_offer(tmp_path, monkeypatch):
    gate = threading.Event()
    import workloads.serving.capture as capture

    real = capture.atomic_write
    monkeypatch.setattr(capture, "atomic_write", lambda p, d: (gate.wait(60), real(p, d)))
    cap = Capturer(tmp_path, "churn", queue_size=10, flush_records=1).start()
    _offers_return(cap, 200)  # the writer is stuck on its first file meanwhile
    assert cap.stats()["dropped"] > 0
    gate.set()
    cap.stop()
    assert cap.stats()["written"] == cap.stats()["captured"]


def test_from_env(tmp_path):
    assert from_env({}) is None
    cap = from_env(
        {
            "MLINFRA_CAPTURE_DIR": str(tmp_path),
            "MLINFRA_CAPTURE_PERCENT": "25",
            "MLINFRA_ENDPOINT_NAME": "churn",
        }
    )
    assert cap is not None and cap.percent == 25 and cap.endpoint == "churn"
    with pytest.raises(ValueError, match="MLINFRA_CAPTURE_PERCENT='lots'"):
        from_env({"MLINFRA_CAPTURE_DIR": str(tmp_path), "MLINFRA_CAPTURE_PERCENT": "lots"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.serve_support import make_frame, train_model

    return train_model(tmp_path_factory.mktemp("capture-model"), make_frame(200), "label", "8")


def test_the_server_captures_served_and_rejected_requests(tmp_path, model_dir):
    """Real HTTP: a captured window reads back through the monitor's reader, the inference
    id and the 4xx included, and /stats counts what was captured."""
    from tests.test_serve import Server

    dest = tmp_path / "data-capture"
    srv = Server(
        model_dir,
        "--capture-dir",
        str(dest),
        "--capture-percent",
        "100",
        "--endpoint-name",
        "churn",
    ).wait_ready()
    try:
        ok = srv.client.post(
            "/invocations",
            content=b"41,3,pro,true\n30,1,basic,false",
            headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Inference-Id": "inf-7"},
        )
        assert ok.status_code == 200
        bad = srv.client.post("/invocations", json={"instances": [{"age": "old"}]})
        assert bad.status_code == 400
        stats = srv.client.get("/stats").json()["capture"]
        assert stats["captured"] == 2 and stats["dropped"] == 0
    finally:
        srv.stop()  # drains: the writer flushes what is queued
    events = list(
        read_events(endpoint_capture_uri(str(dest), "churn", "AllTraffic"), None, None, ReadStats())
    )
    assert [e.key for e in events][0] == "inf-7"
    assert events[0].inputs == [["41", "3", "pro", "true"], ["30", "1", "basic", "false"]]
    assert len(events[0].predictions) == 2 and events[1].predictions is None  # rejected


def test_capture_flags_are_checked(tmp_path):
    from workloads.serving.server import parse_args

    before = dict(os.environ)
    with pytest.raises(SystemExit):
        parse_args(["--capture-dir", str(tmp_path), "--capture-percent", "150"])
    assert dict(os.environ) == before  # a refused flag leaves the environment alone
