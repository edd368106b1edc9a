"""The monitor at scale: the column-wise capture reader gives exactly the window the
line-by-line reader gives, columns spill to disk, and the drift statistics stay exact
against scipy and numpy on ties, weights and few values."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import orjson
import pandas as pd
import pytest
from scipy import stats as sp
from scipy.spatial import distance

from tests.monitor_support import T0, assert_same_window, frame, write_capture
from workloads.monitoring import columnar, monitor, stats
from workloads.monitoring.baseline import table_baseline
from workloads.serving.capture import Captured, capture_record

JSON = "application/json"


def _baseline(reference: pd.DataFrame) -> dict:
    preds = [{"label": v} for v in np.where(reference["age"] > 40, "yes", "no")]
    return table_baseline("tabular", reference, preds)


def _both_ways(baseline: dict, capture: str, options: monitor.Options, monkeypatch) -> tuple:
    """(column-wise window, line-by-line window, blocks the column-wise reader took)."""
    taken = []
    real = columnar.add_block

    def counting(window, block, opts):
        done = real(window, block, opts)
        taken.append(done)
        return done

    monkeypatch.setattr(columnar, "add_block", counting)
    fast = monitor.read_window(baseline, capture, options)
    monkeypatch.setattr(columnar, "add_block", lambda *a: False)
    slow = monitor.read_window(baseline, capture, options)
    return fast, slow, taken


def test_clean_json_capture_is_read_column_wise_with_the_same_result(tmp_path, monkeypatch):
    data = frame(900, seed=1)
    data.loc[::7, "age"] = np.nan
    data.loc[::11, "plan"] = ""
    write_capture(tmp_path, data.iloc[:600], per_request=3)
    write_capture(tmp_path, data.iloc[600:], start=T0 + timedelta(hours=2), id_prefix="b")
    options = monitor.Options(since=T0 + timedelta(minutes=2))  # cuts into the first hour
    fast, slow, taken = _both_ways(_baseline(frame(500)), str(tmp_path), options, monkeypatch)
    assert taken == [True, True]  # both files, one block each, column-wise
    assert slow.read.outside_window == 120 and fast.rows == 900 - 3 * 120
    assert fast.columns["age"].missing > 0 and fast.columns["plan"].missing > 0
    assert_same_window(fast, slow)


def test_blocks_it_cannot_take_are_read_line_by_line_with_the_same_result(tmp_path, monkeypatch):
    data = frame(200, seed=2)
    write_capture(tmp_path, data.iloc[:50])
    write_capture(tmp_path, data.iloc[50:100], start=T0 + timedelta(hours=1), csv=True)
    write_capture(tmp_path, data.iloc[100:150], start=T0 + timedelta(hours=2), model_version="2")
    extra = data.iloc[150:].assign(colour="red")
    write_capture(tmp_path, extra, start=T0 + timedelta(hours=3), model_version="1")
    hour4 = T0 + timedelta(hours=4)
    rejected = Captured(JSON, orjson.dumps({"instances": [{"age": 1.0}]}),
                        b'{"error": "bad input"}', JSON, None, hour4)  # fmt: skip
    lines = [orjson.dumps(capture_record(rejected, "evt-rejected")), b"not json", b""]
    folder = tmp_path / "churn" / "AllTraffic" / f"{hour4:%Y/%m/%d/%H}"
    folder.mkdir(parents=True)
    (folder / "odd.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    options = monitor.Options(model_version="1")
    fast, slow, taken = _both_ways(_baseline(frame(500)), str(tmp_path), options, monkeypatch)
    # hour 8: clean; 9: CSV; 10: another model version (clean); 11: an extra column; 12: junk
    assert taken == [True, False, True, False, False]
    assert fast.other_versions == {"2": 50} and fast.extra_columns == {"colour": 50}
    assert fast.rejected == 1 and fast.read.unreadable == 1
    assert_same_window(fast, slow)


def test_columns_spill_to_disk_and_read_back_in_order(monkeypatch):
    monkeypatch.setattr(monitor, "SPILL_VALUES", 100)
    numbers, codes = monitor.Column("x", "numeric"), monitor.Column("c", "categorical")
    values = np.arange(1000, dtype=float)
    for start in range(0, 1000, 70):  # column-wise batches and single values, mixed
        numbers.extend(values[start : start + 60], 0)
        for v in values[start + 60 : start + 70]:
            numbers.add(v)
        codes.add(f"k{start % 3}")
    assert numbers._spilled >= 900 and len(numbers) == 1000
    np.testing.assert_array_equal(numbers.array(), values)
    assert codes.code_counts().sum() == len(codes) == 15
    same = stats.column_drift(values, numbers.sample(), "numeric", method="wasserstein")
    assert same.statistic == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_statistics_stay_exact_on_ties_weights_and_few_values(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(20, 3000, 2)
    few = seed % 2 == 0
    if few:
        ref, cur = rng.integers(0, 4, n).astype(float), rng.integers(1, 5, m).astype(float)
    else:
        ref, cur = rng.normal(0, 1, n).round(1), rng.normal(0.3, 1, m).round(2)
    weights = rng.uniform(0.5, 3, n) if seed % 3 == 0 else None
    ref_s, cur_s = stats.Numbers(ref, weights), stats.Numbers(np.append(cur, np.nan))
    std = np.sqrt(np.average((ref - np.average(ref, weights=weights)) ** 2, weights=weights))
    expected = sp.wasserstein_distance(ref, cur, u_weights=weights) / std
    assert stats.wasserstein(ref_s, cur_s) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    both = np.concatenate([ref, cur])
    assert (stats.distinct(ref_s, cur_s) == len(np.unique(both))) if few else True
    if few:  # shares per value
        keys, w = np.unique(both), np.ones(n) if weights is None else weights
        ref_p, cur_p = [w[ref == k].sum() for k in keys], [(cur == k).sum() for k in keys]
    else:  # np.histogram's 30 bins over both
        edges = np.histogram_bin_edges(both, bins=30)
        ref_p, cur_p = np.histogram(ref, edges, weights=weights)[0], np.histogram(cur, edges)[0]
    ref_p, cur_p = np.asarray(ref_p) / np.sum(ref_p), np.asarray(cur_p) / np.sum(cur_p)
    got = stats.jensenshannon(ref_s, cur_s)
    assert got == pytest.approx(distance.jensenshannon(ref_p, cur_p), rel=1e-9, abs=1e-12)
    if weights is None and not few:
        drift = stats.column_drift(ref, cur, "numeric", reference_rows=500)
        assert drift.method == "ks"
        assert drift.statistic == pytest.approx(sp.ks_2samp(ref, cur).pvalue, rel=1e-12)


def test_categories_count_the_same_from_numpy_pandas_and_arrow():
    import pyarrow as pa

    values = ["b", "a", None, "b", "", "c", "b"]
    forms = [np.array(values, dtype=object), pd.Series(values), pa.array(values)]
    for form in forms:
        counted = stats.Categories.of(form)
        got = dict(zip(counted.keys.tolist(), counted.counts.tolist(), strict=True))
        assert got == {"a": 1.0, "b": 3.0, "c": 1.0, "": 1.0}
    merged = stats.Categories([1, "1", "x"], [2, 3, 4])  # one category once printed
    pairs = zip(merged.keys.tolist(), merged.counts.tolist(), strict=True)
    assert sorted(pairs) == [("1", 5.0), ("x", 4.0)]
    with pytest.raises(ValueError, match="2 counts for 3 categories"):
        stats.Categories(["a", "b", "c"], [1, 2])


def test_category_statistics_come_from_codes_as_from_the_strings(tmp_path):
    from workloads.monitoring.report import statistics_doc

    data = frame(300, seed=3)
    data.loc[::5, "plan"] = None
    write_capture(tmp_path, data)
    baseline = _baseline(frame(100))
    window = monitor.read_window(baseline, str(tmp_path), monitor.Options())
    doc = {f["name"]: f for f in statistics_doc(baseline, window)["features"]}
    plan = doc["plan"]["string_statistics"]
    names = window.columns["plan"].present()
    keys, counts = np.unique(names, return_counts=True)
    assert plan["common"] == {"num_present": len(names), "num_missing": 60}
    buckets = plan["distribution"]["categorical"]["buckets"]
    assert buckets == [{"value": k, "count": c} for k, c in zip(keys, counts.tolist(), strict=True)]
