"""Fault and fuzz probes for the monitor: captured lines of every wrong shape, values of
every wrong type, damaged baselines and artifacts, unwritable or full report folders, and a
bounded Hypothesis fuzz over capture lines. The monitor never crashes on them: a bad line is
counted and skipped (the column-wise and the line-by-line readers agree on it), a bad
baseline, artifact or option is one line naming the file and field (exit 1), and reports
are strict JSON, written all or nothing."""

from __future__ import annotations

import base64
import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.fuzz_support import fuzz_settings
from tests.monitor_support import assert_same_window, frame, model_dir, write_ground_truth
from workloads.cli import app
from workloads.monitoring import columnar, monitor, report, stats
from workloads.monitoring.baseline import BaselineError, read_baseline
from workloads.monitoring.monitor import MonitorError, Options
from workloads.monitoring.reader import CaptureError
from workloads.monitoring.run import monitor_model_dir
from workloads.storage import NoSpaceError, StorageError

pytestmark = pytest.mark.usefixtures("fixed_constant_pool")
runner = CliRunner()
TIME = "2026-11-30T08:00:01Z"
ROW = {"age": 40.0, "income": 20000.0, "visits": 3.0, "plan": "basic"}
GOOD_ROWS = 30


# The tests whose subject is the HTML report draw it; the others get a plain page (the plots
# cost a second a run, and the bad inputs they probe stop before them).
REAL_HTML = {
    "test_values_near_the_float_limit_give_a_report_not_a_crash",
    "test_a_model_with_many_features_gets_a_bounded_html",
}


@pytest.fixture(autouse=True)
def plain_html(request, monkeypatch):
    if request.function.__name__ not in REAL_HTML:
        monkeypatch.setattr(report, "render_html", lambda *args: "<!doctype html><p>report</p>")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir(tmp_path_factory.mktemp("fuzz-model"), frame(300))


def record(
    data: str | None = None,
    out: str | None = '{"predictions": [{"label": "no"}]}',
    *,
    rows: list | None = None,
    ctype: object = "application/json",
    encoding: object = "JSON",
    meta: object = None,
) -> dict:
    """One capture record (a dict to damage), by default a JSON request of one ROW."""
    body = data if data is not None else json.dumps({"instances": rows or [ROW]})
    doc: dict = {
        "captureData": {
            "endpointInput": {"observedContentType": ctype, "data": body, "encoding": encoding}
        },
        "eventMetadata": meta if meta is not None else event("e"),
        "eventVersion": "0",
    }
    if out is not None:
        doc["captureData"]["endpointOutput"] = {
            "observedContentType": "application/json",
            "data": out,
            "encoding": "JSON",
        }
    return doc


def event(key: str, **more: object) -> dict:
    return {"eventId": key, "inferenceTime": TIME, **more}


def line(doc: object) -> bytes:
    return orjson.dumps(doc)


def good_lines(n: int = GOOD_ROWS) -> bytes:
    return b"".join(line(record()) + b"\n" for _ in range(n))


def capture(root: Path, data: bytes, name: str = "00-00-000-a.jsonl") -> Path:
    folder = root / "cap" / "churn" / "AllTraffic" / "2026" / "11" / "30" / "08"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return root / "cap"


def both_ways(model: Path, cap: Path, monkeypatch) -> tuple[monitor.Window, monitor.Window]:
    """(the window as read column-wise where it can, the window read line by line)."""
    baseline = read_baseline(model)
    fast = monitor.read_window(baseline, str(cap), Options())
    with monkeypatch.context() as patch:
        patch.setattr(columnar, "add_block", lambda *a: False)
        slow = monitor.read_window(baseline, str(cap), Options())
    return fast, slow


def strict_json(path: Path) -> object:
    """The file parsed by a strict reader: NaN and Infinity are not JSON."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{path.name} holds {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


# --- capture lines of the wrong shape ---------------------------------------------------------


def _damaged(path: str, value: object) -> bytes:
    doc = record()
    *parents, key = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[key] = value
    return line(doc)


UNREADABLE = {
    "truncated last line (a writer killed mid-write)": line(record())[:-17],
    "not UTF-8": b'{"captureData": "\xff\xfe"}',
    "a JSON array": b"[1, 2, 3]",
    "a JSON string": b'"captureData"',
    "null": b"null",
    "NUL bytes": b"\x00\x00\x00",
    "captureData a list": _damaged("captureData", []),
    "endpointInput a string": _damaged("captureData.endpointInput", "x"),
    "endpointOutput a string": _damaged("captureData.endpointOutput", "x"),
    "eventMetadata a string": _damaged("eventMetadata", "x"),
    "content type a number": _damaged("captureData.endpointInput.observedContentType", 5),
    "data a number": _damaged("captureData.endpointInput.data", 5),
    "data a list": _damaged("captureData.endpointInput.data", [1, 2]),
    "encoding unknown": _damaged("captureData.endpointInput.encoding", "GZIP"),
    "encoding a number": _damaged("captureData.endpointInput.encoding", 1),
    "inferenceTime a number": _damaged("eventMetadata.inferenceTime", 1_700_000_000),
    "inferenceTime not a time": _damaged("eventMetadata.inferenceTime", "yesterday"),
    "eventId missing": line(record(meta={"inferenceTime": TIME})),
    "eventId an object": line(record(meta={"eventId": {}, "inferenceTime": TIME})),
    "instances an object": line(record('{"instances": {"age": 1}}')),
    "instances a string": line(record('{"instances": "abc"}')),
    "instances a number": line(record('{"instances": 5}')),
    "predictions an object": line(record(out='{"predictions": {"label": "no"}}')),
    "predictions a number": line(record(out='{"predictions": 5}')),
    "predictions null": line(record(out='{"predictions": null}')),
    "response body not JSON": line(record(out="not json")),
    "base64 that is not base64": line(record("!!not base64!!", encoding="BASE64")),
    "base64 CSV not UTF-8": line(
        record(
            base64.b64encode(b"\xff\xfe,1,2").decode(),
            ctype="text/csv",
            encoding="BASE64",
        )
    ),
    "answered request body not JSON": line(record("{nope")),
    "nesting past any parser's depth": b"[" * 100_000,
}


@pytest.mark.parametrize("bad", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_a_bad_line_is_counted_and_skipped_both_ways(bad, model, tmp_path, monkeypatch):
    cap = capture(tmp_path, good_lines() + bad + b"\n" + good_lines(5))
    fast, slow = both_ways(model, cap, monkeypatch)
    assert_same_window(fast, slow)
    assert fast.rows == GOOD_ROWS + 5 and fast.read.unreadable == 1
    assert fast.read.errors[0].startswith("00-00-000-a.jsonl: ")
    baseline = read_baseline(model)
    doc = monitor.analyse(baseline, fast, Options())
    assert doc["data_quality"]["unreadable_lines"] == 1
    report._json(doc), report._json(report.statistics_doc(baseline, fast))  # strict JSON


def test_a_null_content_type_is_json_both_ways(model, tmp_path, monkeypatch):
    data = good_lines(3) + _damaged("captureData.endpointInput.observedContentType", None)
    fast, slow = both_ways(model, capture(tmp_path, data + b"\n"), monkeypatch)
    assert_same_window(fast, slow)
    assert fast.rows == 4 and fast.read.unreadable == 0


def test_blank_lines_crlf_and_a_last_line_without_newline_are_read(model, tmp_path, monkeypatch):
    rows = [line(record()) for _ in range(4)]
    data = b"\n\n" + rows[0] + b"\r\n   \n" + rows[1] + b"\n\t\n" + rows[2] + b"\n" + rows[3]
    fast, slow = both_ways(model, capture(tmp_path, data), monkeypatch)
    assert_same_window(fast, slow)
    assert fast.rows == 4 and fast.read.unreadable == 0


def test_a_request_the_server_refused_as_unreadable_is_a_rejected_request(model, tmp_path):
    """The server answers 400 to a body it cannot parse; the capture holds both. That is a
    rejected request (the data-quality check), not an unreadable capture line."""
    refused = record("{nope", out='{"error": "malformed JSON"}')
    cap = capture(tmp_path, good_lines(10) + line(refused) + b"\n")
    quality = monitor_model_dir(model, str(cap), tmp_path / "out").report["data_quality"]
    assert quality["rejected_requests"] == 1 and quality["unreadable_lines"] == 0
    assert quality["requests"] == 11


@pytest.mark.parametrize(
    "instances",
    [[5], [None], ["a string"], [[40.0, 20000.0, 3.0, "basic", "extra"]], [[40.0]]],
    ids=["number", "null", "string", "long list", "short list"],
)
def test_an_instance_that_is_no_record_is_a_row_of_another_width(instances, model, tmp_path):
    bad = record(rows=instances, out=json.dumps({"predictions": [{"label": "no"}]}))
    cap = capture(tmp_path, good_lines(10) + line(bad) + b"\n")
    out = monitor_model_dir(model, str(cap), tmp_path / "out").report
    assert out["rows"] == 11 and out["data_quality"]["wrong_width_rows"] == 1


def test_every_line_unreadable_is_an_error_naming_the_capture(model, tmp_path):
    cap = capture(tmp_path, b"{not json\n" + line(record())[:-5] + b"\n")
    args = ["monitor", "--model-dir", str(model), "--capture", str(cap)]
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "none of the 2 capture lines can be read" in result.output
    assert str(cap) in result.output and "00-00-000-a.jsonl" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out").exists()


def test_an_empty_or_missing_capture_folder(model, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.jsonl").mkdir()  # a folder with a capture file's name
    capture(tmp_path / "blank", b"\n\n")
    for folder in (tmp_path / "empty", tmp_path / "blank" / "cap"):
        out = monitor_model_dir(model, str(folder), tmp_path / "o" / folder.parent.name)
        assert out.exit_code == 0 and out.report["rows"] == 0 and out.report["empty"]
    with pytest.raises(CaptureError, match="no such file or folder"):
        monitor_model_dir(model, str(tmp_path / "nowhere"), tmp_path / "o3")


def test_a_capture_file_that_cannot_be_opened_is_named(model, tmp_path, monkeypatch):
    cap = capture(tmp_path, good_lines(3))
    real = Path.open

    def refuse(self, *args, **kwargs):
        if self.suffix != ".jsonl":
            return real(self, *args, **kwargs)
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(CaptureError, match=r"00-00-000-a.jsonl: cannot read it: Permission"):
        monitor_model_dir(model, str(cap), tmp_path / "out")


# --- values of the wrong type ------------------------------------------------------------------


def test_values_of_the_wrong_type_are_type_errors_the_same_both_ways(model, tmp_path, monkeypatch):
    rows = [
        {"age": "old", "income": [1], "visits": {"a": 1}, "plan": ["a"]},
        {"age": True, "income": None, "visits": 1e308, "plan": {"x": 1}},
        {"age": "inf", "income": "-Infinity", "visits": "nan", "plan": True},
        {"age": 12345678901234567890123, "income": "", "visits": 2, "plan": 3},
    ]
    lines = [line(record(rows=[r], out='{"predictions": ["no"]}')) for r in rows]
    fast, slow = both_ways(model, capture(tmp_path, b"\n".join(lines) + b"\n"), monkeypatch)
    assert_same_window(fast, slow)
    cols = fast.columns
    assert (cols["age"].type_errors, cols["age"].missing) == (3, 0)  # "old", True, "inf"
    assert (cols["income"].type_errors, cols["income"].missing) == (2, 2)
    assert (cols["visits"].type_errors, cols["visits"].missing) == (2, 0)
    assert (cols["plan"].type_errors, cols["plan"].missing) == (2, 0)  # the list, the object
    assert set(cols["plan"].codes) == {"True", "3"}  # never "['a']"


def test_nan_and_infinity_literals_read_the_same_both_ways(model, tmp_path, monkeypatch):
    """Python clients send NaN and Infinity (json.dumps writes them): NaN is a missing
    value, infinity a type error, whichever reader takes the block."""
    body = '{"instances": [{"age": NaN, "income": Infinity, "visits": -Infinity, "plan": "pro"}]}'
    data = good_lines(3) + line(record(body)) + b"\n"
    fast, slow = both_ways(model, capture(tmp_path, data), monkeypatch)
    assert_same_window(fast, slow)
    assert fast.read.unreadable == 0 and fast.rows == 4
    assert fast.columns["age"].missing == 1
    assert fast.columns["income"].type_errors == fast.columns["visits"].type_errors == 1
    assert not np.isinf(fast.columns["income"].array()).any()


@pytest.mark.parametrize(
    ("rows", "out"),
    [([{}, {}], '{"predictions": [null, null]}'), ([None, None], '{"predictions": [1, 2]}')],
    ids=["predictions all null", "instances all null"],
)
def test_lists_of_nulls_read_the_same_both_ways(rows, out, model, tmp_path, monkeypatch):
    """Arrow's JSON reader builds `[null, null]` with too short a values array (it failed
    with ArrowIndexError); such blocks go to the line-by-line reader."""
    capture(tmp_path, line(record(json.dumps({"instances": rows}), out)) + b"\n")
    cap = capture(tmp_path, good_lines(3), name="00-00-001-b.jsonl")  # a block of its own
    fast, slow = both_ways(model, cap, monkeypatch)
    assert_same_window(fast, slow)
    assert fast.rows == 5 and fast.prediction.missing == (2 if "null" in out else 0)


def test_values_near_the_float_limit_give_a_report_not_a_crash(model, tmp_path):
    rows = [
        {"age": 1e308 * (1 if i % 2 else -1), "income": 1.7e308, "visits": 1.0, "plan": "pro"}
        for i in range(40)
    ]
    data = b"".join(line(record(rows=[r])) + b"\n" for r in rows)
    out = monitor_model_dir(model, str(capture(tmp_path, data)), tmp_path / "out")
    assert out.exit_code == 3 and out.report["features"]["age"]["drifted"]
    assert out.report["data_quality"]["features"]["age"]["out_of_range_share"] == 1.0
    stats_doc = strict_json(tmp_path / "out" / "statistics.json")
    age = next(f for f in stats_doc["features"] if f["name"] == "age")  # type: ignore[index]
    assert age["numerical_statistics"]["min"] == -1e308
    assert (tmp_path / "out" / "report.html").stat().st_size > 0
    for method in stats.METHODS[3:]:  # the distances bin or integrate over the whole span
        drift = stats.column_drift(
            np.linspace(0, 1, 2000), np.array([-1e308, 1e308, 0.5]), "numeric", method=method
        )
        assert not math.isnan(drift.statistic) and drift.drifted, method  # inf: far apart


def test_one_row_a_constant_and_an_all_null_column(model, tmp_path):
    rows = [{"age": 40.0, "income": None, "visits": 3.0, "plan": None}] * 25
    data = b"".join(line(record(rows=[r])) + b"\n" for r in rows)
    out = monitor_model_dir(model, str(capture(tmp_path, data)), tmp_path / "out").report
    assert out["rows"] == 25 and out["features"]["income"]["statistic"] is None
    assert out["data_quality"]["features"]["plan"]["missing_share"] == 1.0
    one = monitor_model_dir(model, str(capture(tmp_path / "one", good_lines(1))), tmp_path / "o1")
    assert one.report["rows"] == 1
    strict_json(tmp_path / "o1" / "report.json")


def test_unseen_categories_and_extra_fields_are_reported(model, tmp_path):
    rows = [{**ROW, "plan": f"p{i}", "zzz": i, "nested": {"a": [1]}} for i in range(20)]
    data = b"".join(line(record(rows=[r])) + b"\n" for r in rows)
    out = monitor_model_dir(model, str(capture(tmp_path, data)), tmp_path / "out").report
    assert out["data_quality"]["features"]["plan"]["unseen_share"] == 1.0
    assert out["data_quality"]["extra_columns"] == {"zzz": 20, "nested": 20}


def test_model_version_as_a_number_is_the_same_version(model, tmp_path):
    lines = [line(record(meta=event("a", modelVersion=3)))] * 5
    cap = capture(tmp_path, b"\n".join(lines) + b"\n")
    out = monitor_model_dir(model, str(cap), tmp_path / "out", model_version="3").report
    assert out["rows"] == 5 and out["data_quality"]["other_model_versions"] == {}


# --- ground truth -----------------------------------------------------------------------------


def test_bad_ground_truth_lines_are_skipped_and_odd_labels_never_crash(tmp_path):
    ref = frame(300)
    model = model_dir(tmp_path, ref)
    preds = '{"predictions": [{"label": "yes", "probabilities": "high"}]}'
    lines = [line(record(out=preds, meta=event(f"e{i}"))) for i in range(6)]
    cap = capture(tmp_path, b"\n".join(lines) + b"\n")
    gt = tmp_path / "gt" / "labels.jsonl"
    write_ground_truth(gt, {"e0": "yes", "e1": "no"})
    with gt.open("ab") as fh:
        fh.write(b'{"groundTruthData": [1], "eventMetadata": {"eventId": "e2"}}\n')
        fh.write(b'{"groundTruthData": {"data": 5}, "eventMetadata": {"eventId": "e3"}}\n')
        fh.write(b'{"groundTruthData": {"data": "yes"}, "eventMetadata": "e4"}\n')
        fh.write(b'{"groundTruthData": {"data": "yes", "encoding": "JSON"}, "eventMet')
    out = monitor_model_dir(model, str(cap), tmp_path / "out", ground_truth=str(gt)).report
    assert out["model_quality"]["labelled_rows"] == 2
    assert out["data_quality"]["unreadable_lines"] == 4
    assert out["model_quality"]["overall"]["accuracy"] == 0.5
    doc = strict_json(tmp_path / "out" / "report.json")
    assert doc["model_quality"]["overall"].get("auc") is None  # type: ignore[index]


def test_a_regression_model_with_labels_that_are_not_numbers(tmp_path):
    model = model_dir(tmp_path, frame(300))
    baseline = json.loads((model / "baseline.json").read_text())
    baseline["prediction"] = {"type": "numeric", "count": 3, "missing_share": 0.0,
                              "sample": [1.0, 2.0, 3.0], "sample_weight": 1.0}  # fmt: skip
    (model / "baseline.json").write_text(json.dumps(baseline))
    (model / "meta.json").write_text("{}")
    lines = [
        line(record(out=f'{{"predictions": [{p}]}}', meta=event(f"e{i}")))
        for i, p in enumerate(["1.5", "2.5", '"x"'])
    ]
    cap = capture(tmp_path, b"\n".join(lines) + b"\n")
    gt = tmp_path / "gt.jsonl"
    write_ground_truth(gt, {"e0": 1.0, "e1": "abc", "e2": 2.0})
    out = monitor_model_dir(model, str(cap), tmp_path / "out", ground_truth=str(gt)).report
    assert out["model_quality"]["overall"] == {"rmse": 0.5, "mae": 0.5}  # e0 alone
    assert out["data_quality"]["unreadable_lines"] == 0


def test_ground_truth_with_no_readable_line_is_an_error(model, tmp_path):
    gt = tmp_path / "gt.jsonl"
    gt.write_text("{not json\n[]\n")
    with pytest.raises(CaptureError, match="none of the 2 ground-truth lines can be read"):
        cap = str(capture(tmp_path, good_lines(3)))
        monitor_model_dir(model, cap, tmp_path / "o", ground_truth=str(gt))


# --- damaged baselines and artifacts --------------------------------------------------------


def _baseline_with(model: Path, tmp_path: Path, change) -> Path:
    folder = tmp_path / "damaged"
    folder.mkdir(exist_ok=True)
    doc = json.loads((model / "baseline.json").read_text())
    change(doc)
    (folder / "baseline.json").write_text(json.dumps(doc))
    return folder


BAD_BASELINES = {
    "features a list": (lambda d: d.update(features=[]), "features: expected an object"),
    "entry not an object": (
        lambda d: d["features"].update(age=5),
        "features.age: expected an object, got int",
    ),
    "entry without type": (lambda d: d["features"]["age"].pop("type"), "features.age.type None"),
    "unknown type": (
        lambda d: d["features"]["age"].update(type="text"),
        "features.age.type 'text': expected one of ['numeric', 'categorical']",
    ),
    "count a string": (
        lambda d: d["features"]["age"].update(count="300"),
        "features.age.count '300'",
    ),
    "missing share above 1": (
        lambda d: d["features"]["age"].update(missing_share=2),
        "features.age.missing_share 2: expected a number in [0, 1]",
    ),
    "sample with text": (
        lambda d: d["features"]["age"]["sample"].append("x"),
        "features.age.sample",
    ),
    "sample weight zero": (
        lambda d: d["features"]["age"].update(sample_weight=0),
        "features.age.sample_weight 0",
    ),
    "min without max": (lambda d: d["features"]["age"].pop("max"), "min and max go together"),
    "frequencies a list": (
        lambda d: d["features"]["plan"].update(frequencies=["basic"]),
        "features.plan.frequencies",
    ),
    "negative frequency": (
        lambda d: d["features"]["plan"]["frequencies"].update(basic=-1),
        "features.plan.frequencies",
    ),
    "no prediction entry": (lambda d: d.pop("prediction"), "no 'prediction' entry"),
    "prediction of no type": (
        lambda d: d.update(prediction={"count": 1}),
        "prediction.type None",
    ),
    "another format": (lambda d: d.update(format=2), "not a baseline of format 1"),
}


@pytest.mark.parametrize("case", list(BAD_BASELINES.values()), ids=list(BAD_BASELINES))
def test_a_damaged_baseline_is_one_line_naming_the_field(case, model, tmp_path):
    change, message = case
    folder = _baseline_with(model, tmp_path, change)
    with pytest.raises(BaselineError) as caught:
        read_baseline(folder)
    assert str(folder / "baseline.json") in str(caught.value) and message in str(caught.value)
    cap = capture(tmp_path, good_lines(3))
    args = ["monitor", "--model-dir", str(folder), "--capture", str(cap), "--output"]
    result = runner.invoke(app, [*args, str(tmp_path / "out")])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_missing_corrupt_or_unreadable_baseline_and_meta(model, tmp_path, monkeypatch):
    folder = tmp_path / "artifact"
    folder.mkdir()
    with pytest.raises(BaselineError, match="does not exist"):
        read_baseline(folder)
    (folder / "baseline.json").write_bytes(b'{"format": 1, "features": {\xff')
    with pytest.raises(BaselineError, match="is not valid JSON"):
        read_baseline(folder)
    (folder / "baseline.json").write_text((model / "baseline.json").read_text())
    cap = str(capture(tmp_path, good_lines(3)))
    for meta, message in [("{truncated", "cannot read it"), ("[1, 2]", "expected a JSON object")]:
        (folder / "meta.json").write_text(meta)
        with pytest.raises(MonitorError, match=f"meta.json: {message}"):
            monitor_model_dir(folder, cap, tmp_path / "out")
    (folder / "meta.json").write_text('{"classes": 5}')  # not a list: no positive class
    assert monitor_model_dir(folder, cap, tmp_path / "out").report["rows"] == 3
    real = Path.read_text

    def denied(self, *args, **kwargs):
        if self.name == "baseline.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(BaselineError, match="baseline.json: cannot read it: Permission denied"):
        read_baseline(folder)


def test_a_baseline_of_another_model_reports_every_column_as_missing_or_extra(tmp_path):
    other = frame(300).rename(columns={"age": "tenure", "plan": "region"})
    model = model_dir(tmp_path, other.assign(age=other["tenure"]))
    out = monitor_model_dir(model, str(capture(tmp_path, good_lines(20))), tmp_path / "out")
    checks = {(v["feature_name"], v["constraint_check_type"]) for v in out.report["violations"]}
    assert {("tenure", "completeness_check"), ("region", "completeness_check")} <= checks
    assert ("plan", "extra_column_check") in checks and out.exit_code == 3


def test_a_window_too_far_back_is_an_error_not_an_overflow(model, tmp_path):
    cap = str(capture(tmp_path, good_lines(3)))
    with pytest.raises(MonitorError, match="--since '99999999d': reaches before the year 1"):
        monitor_model_dir(model, cap, tmp_path / "out", since="99999999d")


# --- the reports: all or nothing, strict JSON, any number of features ------------------------


def _fail_on(monkeypatch, name: str, exc: OSError) -> None:
    """`Path.write_text` raises `exc` when it writes the temporary file of `name`."""
    real = Path.write_text

    def write(self, *args, **kwargs):
        if self.name.startswith(f".{name}."):
            raise exc
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write)


@pytest.mark.parametrize("failing", report.FILES)
def test_a_full_disk_leaves_no_half_written_report(failing, model, tmp_path, monkeypatch):
    cap = str(capture(tmp_path, good_lines(20)))
    out = tmp_path / "out"
    first = monitor_model_dir(model, cap, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == set(report.FILES) and first.exit_code in (0, 3)
    _fail_on(monkeypatch, failing, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(NoSpaceError, match=f"no space left on device while writing .*{failing}"):
        monitor_model_dir(model, cap, out, since="2026-11-30T08:00:00Z")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier run, whole


def test_a_full_disk_through_the_cli_is_one_line(model, tmp_path, monkeypatch):
    cap = str(capture(tmp_path, good_lines(20)))
    _fail_on(monkeypatch, "report.html", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    args = ["monitor", "--model-dir", str(model), "--capture", cap, "--output"]
    result = runner.invoke(app, [*args, str(tmp_path / "out")])
    assert result.exit_code == 1 and "no space left on device while writing" in result.output
    assert list((tmp_path / "out").iterdir()) == []


def test_an_output_that_cannot_be_a_folder_is_named(model, tmp_path, monkeypatch):
    cap = str(capture(tmp_path, good_lines(5)))
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match=r"cannot write the reports to .*file/out"):
        monitor_model_dir(model, cap, tmp_path / "file" / "out")
    _fail_on(monkeypatch, "report.json", PermissionError(errno.EACCES, "Permission denied"))
    args = ["monitor", "--model-dir", str(model), "--capture", cap, "--output"]
    result = runner.invoke(app, [*args, str(tmp_path / "ro")])
    assert result.exit_code == 1 and "Permission denied" in result.output
    assert "cannot write the reports to" in result.output


def test_a_failing_plot_writes_nothing(model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "render_html", broken)
    with pytest.raises(RuntimeError):
        monitor_model_dir(model, str(capture(tmp_path, good_lines(5))), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_an_empty_window_replaces_an_earlier_full_report(model, tmp_path):
    out = tmp_path / "out"
    monitor_model_dir(model, str(capture(tmp_path, good_lines(5))), out)
    empty = monitor_model_dir(model, str(capture(tmp_path, good_lines(5))), out, until="1d")
    assert empty.report["rows"] == 0 and empty.report["outside_window"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]  # no stale statistics


def test_a_model_with_many_features_gets_a_bounded_html(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(60)]
    ref = {n: rng.normal(0, 1, 200).round(3) for n in names}
    import pandas as pd

    model = model_dir(tmp_path, pd.DataFrame(ref).assign(age=rng.normal(40, 5, 200)))
    rows = [{**{n: 50.0 + i for n in names}, "age": 40.0} for i in range(20)]
    data = b"".join(line(record(rows=[r])) + b"\n" for r in rows)
    out = monitor_model_dir(model, str(capture(tmp_path, data)), tmp_path / "out")
    assert sum(f["drifted"] for f in out.report["features"].values()) >= 60
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<img") <= 1 + report.MAX_OVERLAYS + 1  # scores, overlays, prediction
    assert len(strict_json(tmp_path / "out" / "report.json")["features"]) == 61  # type: ignore[arg-type]


# --- a bounded fuzz over capture lines ------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELD_VALUE = st.one_of(
    st.floats(min_value=-1e3, max_value=1e3),
    st.sampled_from(["basic", "pro", "", None]),
    JSON_VALUES,
)
ROWS = st.lists(
    st.dictionaries(st.sampled_from([*ROW, "extra"]), FIELD_VALUE, max_size=5),
    min_size=1,
    max_size=3,
)
PREDICTION = st.sampled_from(["yes", "no", 1, None])
PATHS = [
    "captureData",
    "captureData.endpointInput",
    "captureData.endpointOutput",
    "captureData.endpointInput.data",
    "captureData.endpointInput.encoding",
    "captureData.endpointInput.observedContentType",
    "eventMetadata",
    "eventMetadata.inferenceTime",
    "eventMetadata.eventId",
]


@st.composite
def capture_lines(draw) -> bytes:
    out = []
    for _ in range(draw(st.integers(1, 6))):
        rows = draw(ROWS)
        doc = record(
            json.dumps({"instances": rows}),  # json: NaN and Infinity, as Python clients send
            json.dumps({"predictions": [draw(PREDICTION)] * len(rows)}),
        )
        kind = draw(st.sampled_from(["clean", "field", "cut", "bytes"]))
        if kind == "field":
            *parents, key = draw(st.sampled_from(PATHS)).split(".")
            node = doc
            for part in parents:
                node = node[part]
            node[key] = draw(JSON_VALUES)
        text = json.dumps(doc).encode()
        if kind == "cut":
            text = text[: draw(st.integers(0, len(text)))]
        elif kind == "bytes":
            text = draw(st.binary(max_size=30))
        out.append(text.replace(b"\n", b" "))
    return b"\n".join(out) + b"\n"


@fuzz_settings(max_examples=40)
@given(capture_lines())
def test_fuzzed_capture_lines_never_crash_and_read_the_same_both_ways(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fuzz")
    model = model_dir(root, frame(200))
    cap = capture(root, data)
    with pytest.MonkeyPatch.context() as patch:
        fast, slow = both_ways(model, cap, patch)
    assert_same_window(fast, slow)
    try:
        out = monitor_model_dir(model, str(cap), root / "out")
    except CaptureError as exc:  # every line unreadable: said so, nothing written
        assert "none of the" in str(exc) and fast.read.unreadable == fast.read.lines
        return
    assert out.report["rows"] == fast.rows
    for path in (root / "out").glob("*.json"):
        strict_json(path)


# --- the scheduled monitor's CloudWatch metrics -----------------------------------------------


def test_metrics_cloudwatch_would_refuse_are_left_out_not_sent(model, tmp_path):
    """PutMetricData refuses a whole call for one NaN, infinity, value past 2^360 or name
    past 255 characters: the job would publish nothing. Those datums are left out."""
    from datetime import UTC, datetime

    from workloads.monitoring.scheduled import metric_data

    doc = monitor_model_dir(model, str(capture(tmp_path, good_lines(5))), tmp_path / "o").report
    doc["features"]["x" * 300] = {"statistic": 0.5}
    doc["features"]["huge"] = {"statistic": 1e200}
    doc["features"]["tiny"] = {"statistic": 1e-300}  # a KS p-value on a large window
    doc["model_quality"] = {"overall": {"rmse": math.inf, "auc": math.nan, "mae": 2.0}}
    data = metric_data(doc, "churn", datetime(2026, 11, 30, tzinfo=UTC))
    names = {d["MetricName"] for d in data}
    assert "model_quality_mae" in names and "feature_baseline_drift_age" in names
    assert not names & {"model_quality_rmse", "model_quality_auc", "feature_baseline_drift_huge"}
    assert all(len(d["MetricName"]) <= 255 and math.isfinite(d["Value"]) for d in data)
    tiny = next(d for d in data if d["MetricName"] == "feature_baseline_drift_tiny")
    assert tiny["Value"] == 0.0


def test_the_scheduled_job_fails_with_one_line_naming_what_is_wrong(model, tmp_path, caplog):
    """`python -m workloads.monitoring` logs one line and exits 1 on a damaged capture or
    baseline (the Job shows failed), and writes no report."""
    from types import SimpleNamespace

    from workloads.monitoring.scheduled import main

    def run(model_uri: Path, cap: Path) -> int:
        registry = SimpleNamespace(
            get=lambda g, v: SimpleNamespace(version=v, model_uri=str(model_uri))
        )
        args = ["--endpoint", "churn", "--capture", str(cap), "--model-group", "g"]
        args += ["--model-version", "1", "--output", str(tmp_path / "out"), "--since", "9999d"]
        return main([*args, "--metrics-namespace", ""], registry, lambda name: None)

    assert run(model, capture(tmp_path, b"{cut\n")) == 1
    assert "none of the 1 capture lines can be read" in caplog.text
    damaged = _baseline_with(model, tmp_path, lambda d: d["features"]["age"].pop("type"))
    assert run(damaged, capture(tmp_path, good_lines(3))) == 1
    assert "features.age.type None" in caplog.text
    assert not (tmp_path / "out").exists()
