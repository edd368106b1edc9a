"""The monitor: statistics against scipy, drift on shifted columns only, data quality,
ground truth, bad input and the exit statuses."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
from scipy import stats as sp
from scipy.spatial import distance
from typer.testing import CliRunner

from tests.monitor_support import (
    T0,
    frame,
    labels_for,
    model_dir,
    write_capture,
    write_ground_truth,
)
from workloads.cli import app
from workloads.monitoring import stats
from workloads.monitoring.baseline import numeric_entry, reference_arrays
from workloads.monitoring.run import monitor_model_dir

runner = CliRunner()


# --- statistics ----------------------------------------------------------------------------


def test_ks_and_wasserstein_match_scipy_on_known_distributions():
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(0, 1, 800), rng.normal(0.3, 1, 600)
    drift = stats.column_drift(ref, cur, "numeric")
    assert drift.method == "ks" and drift.threshold == 0.05
    assert drift.statistic == pytest.approx(sp.ks_2samp(ref, cur).pvalue, abs=1e-12)
    assert drift.drifted  # a 0.3 sd shift in 600 rows: p far below 0.05
    big_ref = rng.normal(0, 2, 5000)
    wd = stats.column_drift(big_ref, cur, "numeric")
    assert wd.method == "wasserstein" and wd.threshold == 0.1
    expected = sp.wasserstein_distance(big_ref, cur) / np.std(big_ref)
    assert wd.statistic == pytest.approx(expected, rel=1e-12)


def test_categorical_tests_match_scipy():
    rng = np.random.default_rng(2)
    ref = rng.choice(["a", "b", "c"], 500, p=[0.5, 0.3, 0.2]).astype(str)
    cur = rng.choice(["a", "b", "c", "d"], 400, p=[0.3, 0.3, 0.3, 0.1]).astype(str)
    chi = stats.column_drift(ref, cur, "categorical")
    keys = sorted(set(ref) | set(cur))
    obs = [float((cur == k).sum()) for k in keys]
    exp = [float((ref == k).sum()) * len(cur) / len(ref) for k in keys]
    assert chi.method == "chisquare"
    assert chi.statistic == pytest.approx(sp.chisquare(obs, exp).pvalue, rel=1e-9)
    # two categories: the two-proportion Z-test
    ref2, cur2 = np.array(["x"] * 300 + ["y"] * 200), np.array(["x"] * 150 + ["y"] * 250)
    z = stats.column_drift(ref2, cur2, "categorical")
    p1, p2, pooled = 0.6, 150 / 400, 450 / 900
    zstat = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / 500 + 1 / 400))
    assert z.method == "z" and z.statistic == pytest.approx(2 * (1 - sp.norm.cdf(abs(zstat))))
    assert z.drifted
    # large reference: Jensen-Shannon distance of the shares
    big = np.repeat(ref, 3)
    js = stats.column_drift(big, cur, "categorical")
    ref_p = np.array([(big == k).sum() for k in keys]) / len(big)
    cur_p = np.array([(cur == k).sum() for k in keys]) / len(cur)
    assert js.method == "jensenshannon"
    assert js.statistic == pytest.approx(distance.jensenshannon(ref_p, cur_p), rel=1e-9)


def test_psi_option_and_unknown_method():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, 3000), rng.normal(0, 1, 3000)
    assert not stats.column_drift(ref, cur, "numeric", method="psi").drifted
    assert stats.column_drift(ref, cur + 1, "numeric", method="psi").drifted
    with pytest.raises(ValueError, match="unknown drift method 'nope'"):
        stats.column_drift(ref, cur, "numeric", method="nope")


def test_a_quantile_sketch_stands_for_a_large_reference():
    rng = np.random.default_rng(4)
    ref, cur = rng.normal(5, 2, 50_000), rng.normal(5.5, 2, 2000)
    entry = numeric_entry(ref)
    assert len(entry["sample"]) == 1000 and entry["sample_weight"] == 50.0
    sample, weights, rows = reference_arrays(entry)
    sketch = stats.column_drift(
        sample, cur, "numeric", reference_rows=rows, ref_weights=weights, ref_std=entry["std"]
    )
    exact = stats.column_drift(ref, cur, "numeric")
    assert sketch.method == exact.method == "wasserstein"
    assert sketch.statistic == pytest.approx(exact.statistic, abs=0.01)


# --- the monitor over captured traffic --------------------------------------------------------


def test_drift_found_on_shifted_columns_only(tmp_path):
    model = model_dir(tmp_path, frame(5000, seed=0))
    current = frame(2000, seed=1)
    current["income"] = current["income"] * 1.8  # shifted
    current["plan"] = np.random.default_rng(5).choice(
        ["basic", "pro", "team"], 2000, p=[0.1, 0.2, 0.7]
    )  # shifted
    write_capture(tmp_path / "cap", current, per_request=4)
    out = monitor_model_dir(model, str(tmp_path / "cap"), tmp_path / "out")
    report = out.report
    assert report["rows"] == 2000
    drifted = {n for n, f in report["features"].items() if f["drifted"]}
    assert drifted == {"income", "plan"}
    assert report["features"]["income"]["method"] == "wasserstein"
    assert report["features"]["plan"]["method"] == "jensenshannon"
    assert report["dataset_drift"]  # 2 of 4 features: at least half
    assert out.exit_code == 3
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"report.json", "statistics.json", "constraint_violations.json", "report.html"}
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<script" not in html
    violations = json.loads((tmp_path / "out" / "constraint_violations.json").read_text())
    assert {
        v["feature_name"]
        for v in violations["violations"]
        if v["constraint_check_type"] == "baseline_drift_check"
    } == {"income", "plan"}
    statistics = json.loads((tmp_path / "out" / "statistics.json").read_text())
    assert statistics["dataset"]["item_count"] == 2000
    assert {f["name"] for f in statistics["features"]} == {"age", "income", "visits", "plan"}


def test_no_drift_on_the_same_distribution_and_small_reference_uses_p_values(tmp_path):
    model = model_dir(tmp_path, frame(600, seed=0))
    write_capture(tmp_path / "cap", frame(500, seed=9), csv=True, base64_all=True)
    out = monitor_model_dir(model, f"file://{tmp_path / 'cap'}", tmp_path / "out")
    assert out.report["rows"] == 500
    methods = {n: f["method"] for n, f in out.report["features"].items()}
    assert methods == {"age": "ks", "income": "ks", "visits": "ks", "plan": "chisquare"}
    assert not out.report["dataset_drift"]
    assert sum(f["drifted"] for f in out.report["features"].values()) <= 1


def test_data_quality_against_the_baseline(tmp_path):
    model = model_dir(tmp_path, frame(3000))
    current = frame(400, seed=2)
    current.loc[:99, "plan"] = "enterprise"  # unseen category: 25 %
    current.loc[100:199, "age"] = 500.0  # outside the training range
    current["visits"] = current["visits"].astype(object)
    current.loc[200:209, "visits"] = "many"  # not a number
    current.loc[210:299, "income"] = None  # missing
    write_capture(tmp_path / "cap", current)
    cap = tmp_path / "cap"
    path = next(cap.rglob("*.jsonl"))
    with path.open("a") as fh:  # unreadable lines are counted, not fatal
        fh.write("{not json\n")
        fh.write('{"captureData": {}}\n')
    report = monitor_model_dir(model, str(cap), tmp_path / "out").report
    quality = report["data_quality"]
    assert quality["features"]["plan"]["unseen_share"] == pytest.approx(0.25)
    assert quality["features"]["plan"]["unseen_examples"] == {"enterprise": 100}
    assert quality["features"]["age"]["out_of_range"] == 100
    assert quality["features"]["visits"]["type_errors"] == 10
    assert quality["features"]["income"]["missing_share"] == pytest.approx(90 / 400)
    assert quality["unreadable_lines"] == 2
    checks = {(v["feature_name"], v["constraint_check_type"]) for v in report["violations"]}
    assert {
        ("plan", "categorical_values_check"),
        ("age", "data_range_check"),
        ("visits", "data_type_check"),
        ("income", "completeness_check"),
    } <= checks


def test_ground_truth_joined_on_inference_id_gives_quality_per_hour(tmp_path):
    model = model_dir(tmp_path, frame(2000))
    current = frame(240, seed=3)
    ids = write_capture(tmp_path / "cap", current, step=timedelta(seconds=30))  # two hours
    truth = labels_for(current)
    truth[:60] = ["no" if t == "yes" else "yes" for t in truth[:60]]  # first half hour wrong
    write_ground_truth(
        tmp_path / "gt" / "labels.jsonl", dict(zip(ids[:200], truth[:200], strict=True))
    )
    report = monitor_model_dir(
        model, str(tmp_path / "cap"), tmp_path / "out", ground_truth=str(tmp_path / "gt")
    ).report
    quality = report["model_quality"]
    assert quality["labelled_rows"] == 200
    assert quality["overall"]["accuracy"] == pytest.approx(140 / 200)
    hours = quality["by_hour"]
    assert list(hours) == ["2026-11-30T08:00Z", "2026-11-30T09:00Z"]
    assert hours["2026-11-30T08:00Z"]["accuracy"] == pytest.approx(60 / 120)
    assert hours["2026-11-30T09:00Z"]["accuracy"] == 1.0
    assert set(quality["overall"]) == {"accuracy", "f1_macro", "auc"}


def test_window_and_other_model_versions(tmp_path):
    model = model_dir(tmp_path, frame(2000))
    write_capture(tmp_path / "cap", frame(100, seed=4), model_version="3", id_prefix="a")
    write_capture(
        tmp_path / "cap",
        frame(50, seed=5),
        model_version="2",
        id_prefix="b",
        start=T0 + timedelta(minutes=30),
    )
    out = monitor_model_dir(model, str(tmp_path / "cap"), tmp_path / "out", model_version="3")
    assert out.report["rows"] == 100
    assert out.report["data_quality"]["other_model_versions"] == {"2": 50}
    late = monitor_model_dir(
        model,
        str(tmp_path / "cap"),
        tmp_path / "late",
        since="2026-11-30T08:30:00Z",
        until="2026-11-30T09:00:00Z",
    )
    assert late.report["rows"] == 50


def test_cli_exit_statuses(tmp_path):
    model = model_dir(tmp_path, frame(2000))
    args = ["monitor", "--model-dir", str(model), "--output"]
    write_capture(tmp_path / "same", frame(500, seed=6))
    ok = runner.invoke(app, [*args, str(tmp_path / "o1"), "--capture", str(tmp_path / "same")])
    assert ok.exit_code == 0, ok.output
    assert "dataset drift no" in ok.output
    shifted = frame(500, seed=6, shift=15)
    shifted["income"] *= 3
    write_capture(tmp_path / "drift", shifted)
    found = runner.invoke(app, [*args, str(tmp_path / "o2"), "--capture", str(tmp_path / "drift")])
    assert found.exit_code == 3, found.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, [*args, str(tmp_path / "o3"), "--capture", str(tmp_path / "empty")])
    assert empty.exit_code == 0 and "no captured rows in the window" in empty.output
    assert json.loads((tmp_path / "o3" / "report.json").read_text())["empty"] is True
    assert not (tmp_path / "o3" / "report.html").exists()
    missing = runner.invoke(
        app,
        [
            "monitor",
            "--model-dir",
            str(tmp_path),
            "--output",
            str(tmp_path / "o4"),
            "--capture",
            str(tmp_path / "same"),
        ],
    )
    assert missing.exit_code == 1 and "baseline.json does not exist" in missing.output
    bad = runner.invoke(app, [*args, str(tmp_path / "o5"), "--capture", "ftp://x/y"])
    assert bad.exit_code == 1 and "unsupported location scheme 'ftp'" in bad.output
    since = runner.invoke(
        app,
        [*args, str(tmp_path / "o6"), "--capture", str(tmp_path / "same"), "--since", "yesterday"],
    )
    assert since.exit_code == 1 and "--since 'yesterday'" in since.output


# --- the training baseline -------------------------------------------------------------------


def test_training_writes_the_baseline_into_the_artifact_and_output(tmp_path):
    from tests.serve_support import make_frame, train_model

    data = make_frame(400, seed=1)
    model = train_model(tmp_path, data, "label", hidden="8")
    baseline = json.loads((model / "baseline.json").read_text())
    assert (tmp_path / "output" / "baseline.json").read_text() == (
        model / "baseline.json"
    ).read_text()
    features = baseline["features"]
    assert set(features) == {"age", "visits", "plan", "active"}
    assert features["age"]["type"] == "numeric"
    assert 0.02 < features["age"]["missing_share"] < 0.2  # make_frame blanks 10 % of ages
    assert features["plan"]["type"] == "categorical"
    assert set(features["plan"]["frequencies"]) == {"basic", "pro", "team"}
    rows = baseline["rows"]
    assert 60 <= rows <= 100 and features["visits"]["count"] == rows  # the validation split
    prediction = baseline["prediction"]
    assert prediction["type"] == "categorical" and set(prediction["frequencies"]) <= {"yes", "no"}
    assert sum(prediction["frequencies"].values()) == rows
    # the monitor reads it: the training data itself shows no dataset drift
    write_capture(tmp_path / "cap", data.drop(columns="label").iloc[:300])
    out = monitor_model_dir(model, str(tmp_path / "cap"), tmp_path / "out")
    assert out.report["rows"] == 300 and not out.report["dataset_drift"]


def test_a_task_without_its_own_baseline_records_the_predictions():
    from workloads.training.tasks.base import TaskBase

    doc = TaskBase(None, None).baseline(None, [0, 1, 1, 2])
    assert doc["features"] == {} and doc["prediction"]["frequencies"] == {"1": 2, "0": 1, "2": 1}
