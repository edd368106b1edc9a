"""The monitor: a capture window against the model's training baseline.

`run_monitor` streams the captured events (`reader`, `columnar`), keeps each feature's
current values in compact arrays (8 bytes a number, 4 a category code; past `SPILL_VALUES`
in a temporary file, read back one column at a time), then computes per feature drift
(`stats`, Evidently's defaults), data quality against the baseline, prediction drift and,
when ground truth is given, model quality per hour. `report` writes the files.
"""

from __future__ import annotations

import math
import tempfile
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from workloads.monitoring import columnar, stats
from workloads.monitoring.baseline import read_baseline, reference_arrays
from workloads.monitoring.inputs import Derive, extractor
from workloads.monitoring.reader import (
    CaptureError,
    Event,
    ReadStats,
    events_of,
    iter_blocks,
    read_events,
    read_ground_truth,
)

EXIT_OK, EXIT_ERROR, EXIT_FOUND = 0, 1, 3
# Data-quality limits: a violation when the current window exceeds them.
MISSING_INCREASE = 0.05  # missing share above the baseline's by more than this
UNSEEN_SHARE = 0.05  # share of values in categories the baseline never saw
OUT_OF_RANGE_SHARE = 0.05  # share of numbers outside the baseline's [min, max]
REJECTED_SHARE = 0.05  # share of requests answered with an error


class MonitorError(ValueError):
    """Bad monitor input (a baseline, a location, an option); the message says what."""


@dataclass
class Options:
    method: str | None = None  # None: Evidently's default per feature; or one of stats.METHODS
    drift_share: float = 0.5  # dataset drift when at least this share of features drift
    since: datetime | None = None
    until: datetime | None = None
    model_version: str | None = None  # events captured from another version are not mixed


SPILL_VALUES = 1 << 18  # a column keeps at most this many values in memory, the rest on disk


class Column:
    """One feature's current values: floats (NaN missing) or category codes (-1 missing).
    Past `SPILL_VALUES` values, the older ones go to a temporary file, so a window of
    millions of rows costs memory for one column at a time, when it is analysed."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind
        self.values = array("d") if kind == "numeric" else array("i")
        self.codes: dict[str, int] = {}
        self.missing = 0
        self.type_errors = 0
        self._spill: Any = None
        self._spilled = 0

    @property
    def dtype(self) -> type:
        return np.float64 if self.kind == "numeric" else np.int32

    def add(self, value: Any) -> None:
        """One value: None, "" and NaN are missing; a value the column cannot hold (text or a
        non-finite number in a numeric column, a list or an object anywhere) is a type error."""
        if len(self.values) >= SPILL_VALUES:
            self._flush()
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            self.missing += 1
            self.values.append(math.nan if self.kind == "numeric" else -1)
            return
        if self.kind == "numeric":
            try:
                number = float(value) if not isinstance(value, bool) else math.nan
            except (TypeError, ValueError, OverflowError):
                number = math.nan
            if not math.isfinite(number):
                self.type_errors += 1
                number = math.nan
            self.values.append(number)
            return
        if not isinstance(value, str | int | float):
            self.type_errors += 1
            self.values.append(-1)
            return
        self.values.append(self.code(str(value)))

    def code(self, key: str) -> int:
        code = self.codes.get(key)
        if code is None:
            code = self.codes[key] = len(self.codes)
        return code

    def extend(self, values: np.ndarray, missing: int, type_errors: int = 0) -> None:
        """Append many values at once (floats, or codes from `code`), `missing` of them
        missing and `type_errors` of them type errors."""
        self.values.frombytes(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.missing += missing
        self.type_errors += type_errors
        if len(self.values) >= SPILL_VALUES:
            self._flush()

    def _flush(self) -> None:
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix=f"monitor-{self.kind}-")
        self.values.tofile(self._spill)
        self._spilled += len(self.values)
        del self.values[:]

    def array(self) -> np.ndarray:
        """All values, in order (read back from the spill file, if any)."""
        newest = np.frombuffer(self.values, dtype=self.dtype).copy()  # the buffer may grow
        if self._spill is None:
            return newest
        self._spill.flush()
        self._spill.seek(0)
        older = np.fromfile(self._spill, dtype=self.dtype, count=self._spilled)
        return np.concatenate([older, newest]) if len(newest) else older

    def present(self) -> np.ndarray:
        """The non-missing values: floats, or category names."""
        if self.kind == "numeric":
            values = self.array()
            return values[~np.isnan(values)]
        codes = self.array()
        return self._names()[codes[codes >= 0]].astype(str)

    def _names(self) -> np.ndarray:
        names = np.empty(len(self.codes), dtype=object)
        for key, code in self.codes.items():
            names[code] = key
        return names

    def code_counts(self) -> np.ndarray:
        """How often each category code occurs (index: the code)."""
        codes = self.array()
        return np.bincount(codes[codes >= 0], minlength=len(self.codes))

    def categories(self) -> tuple[np.ndarray, np.ndarray]:
        """(category names in sorted order, their counts) of the values present."""
        counts = self.code_counts()
        names = self._names().astype(str)
        order = np.argsort(names, kind="stable")
        keep = order[counts[order] > 0]
        return names[keep], counts[keep]

    def sample(self) -> stats.Sample:
        """The values for the drift tests: sorted numbers, or category counts."""
        if self.kind == "numeric":
            return stats.Numbers(self.array())
        return stats.Categories(self._names(), self.code_counts())

    def __len__(self) -> int:
        return self._spilled + len(self.values)


@dataclass
class Window:
    """What was read from one capture window."""

    columns: dict[str, Column]
    prediction: Column
    read: ReadStats = field(default_factory=ReadStats)
    requests: int = 0
    rejected: int = 0
    other_versions: dict[str, int] = field(default_factory=dict)
    extra_columns: dict[str, int] = field(default_factory=dict)
    wrong_width: int = 0
    first: datetime | None = None
    last: datetime | None = None
    # joined with ground truth: (hour, truth, prediction, positive-class score)
    labelled: list[tuple[str, Any, Any, float]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.prediction)


def _prediction_value(p: Any) -> Any:
    return p.get("label") if isinstance(p, dict) else p


def read_window(
    baseline: dict[str, Any],
    capture: str,
    options: Options,
    truth: dict[str, list] | None = None,
    positive: str | None = None,
    derive: Derive | None = None,
) -> Window:
    """Stream the capture window into compact columns. Without ground truth to join, blocks
    of JSON requests are parsed column-wise by Arrow (`columnar`); any block it does not
    take as is (CSV, base64, a bad line, a stray field) is read line by line, same result.
    `derive` turns a request's inputs into feature rows (image and text models): read line
    by line."""
    names = list(baseline["features"])
    columns = {n: Column(n, baseline["features"][n]["type"]) for n in names}
    window = Window(columns, Column("prediction", baseline["prediction"]["type"]))
    since, until = options.since, options.until
    if truth is not None or derive is not None:
        for event in read_events(capture, since, until, window.read):
            _add_event(window, event, options, truth, positive, derive)
        return window
    for name, block in iter_blocks(capture, since, until, window.read):
        if columnar.add_block(window, block, options):
            continue
        lines = ((name, line) for line in block.split(b"\n"))
        for event in events_of(lines, since, until, window.read):
            _add_event(window, event, options, truth, positive, derive)
    return window


def _add_event(
    window: Window,
    event: Event,
    options: Options,
    truth: dict[str, list] | None,
    positive: str | None,
    derive: Derive | None = None,
) -> None:
    columns = window.columns
    names = list(columns)
    version = event.model_version
    if options.model_version and version and version != options.model_version:
        window.other_versions[version] = window.other_versions.get(version, 0) + 1
        return
    window.requests += 1
    window.first = event.time if window.first is None else min(window.first, event.time)
    window.last = event.time if window.last is None else max(window.last, event.time)
    preds = event.predictions
    if preds is None or len(preds) != len(event.inputs):
        window.rejected += 1
        return
    rows = event.inputs if derive is None else derive(event.inputs)
    for row, pred in zip(rows, preds, strict=True):
        if isinstance(row, dict):
            for name, column in columns.items():
                column.add(row.get(name))
            for extra in row.keys() - columns.keys():
                window.extra_columns[extra] = window.extra_columns.get(extra, 0) + 1
        else:
            if not isinstance(row, list | tuple):  # a bare value: a row of one
                row = [row]
            if len(row) != len(names):
                window.wrong_width += 1
            for name, value in zip(names, row, strict=False):
                columns[name].add(value)
            for name in names[len(row) :]:
                columns[name].add(None)
        window.prediction.add(_prediction_value(pred))
    if truth is not None and event.key in truth:
        labels = truth[event.key]
        hour = event.time.strftime("%Y-%m-%dT%H:00Z")
        for label, pred in zip(labels, preds, strict=False):
            score = math.nan
            if positive is not None and isinstance(pred, dict):
                score = _score(pred.get("probabilities"), positive)
            window.labelled.append((hour, label, _prediction_value(pred), score))


def _score(probabilities: Any, positive: str) -> float:
    """The positive class's probability of a prediction, NaN when it has none."""
    value = probabilities.get(positive) if isinstance(probabilities, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return math.nan
    return float(value)


def drift_of(entry: dict[str, Any], column: Column, method: str | None) -> stats.Drift:
    ref, weights, rows = reference_arrays(entry)
    return stats.column_drift(
        ref,
        column.sample(),
        "numeric" if entry["type"] == "numeric" else "categorical",
        method=method,
        reference_rows=rows,
        ref_weights=weights,
        ref_std=entry.get("std"),
    )


def data_quality(baseline: dict[str, Any], window: Window) -> tuple[dict, list[dict]]:
    features: dict[str, dict] = {}
    violations: list[dict] = []

    def violate(name: str, check: str, text: str) -> None:
        violations.append(
            {"feature_name": name, "constraint_check_type": check, "description": text}
        )

    for name, column in window.columns.items():
        entry, n = baseline["features"][name], max(len(column), 1)
        missing = column.missing / n
        doc: dict[str, Any] = {
            "missing_share": missing,
            "baseline_missing_share": entry["missing_share"],
            "type_errors": column.type_errors,
        }
        if missing > entry["missing_share"] + MISSING_INCREASE:
            violate(
                name,
                "completeness_check",
                f"missing share {missing:.3f} vs baseline {entry['missing_share']:.3f}",
            )
        if column.type_errors:
            wanted = "finite numbers" if column.kind == "numeric" else "strings or numbers"
            violate(name, "data_type_check", f"{column.type_errors} values are not {wanted}")
        if entry["type"] == "numeric" and "min" in entry:
            values = column.present()
            outside = int(((values < entry["min"]) | (values > entry["max"])).sum())
            share = outside / max(len(values), 1)
            doc |= {"out_of_range": outside, "out_of_range_share": share}
            if share > OUT_OF_RANGE_SHARE:
                violate(
                    name,
                    "data_range_check",
                    f"{share:.3f} of values outside the training "
                    f"range [{entry['min']:.4g}, {entry['max']:.4g}]",
                )
        elif entry["type"] == "categorical":
            known = set(entry["frequencies"])
            counts = column.code_counts()
            unseen = {k: int(counts[c]) for k, c in column.codes.items() if k not in known}
            share = sum(unseen.values()) / max(int(counts.sum()), 1)
            top = sorted(unseen.items(), key=lambda kv: -kv[1])[:10]
            doc |= {"unseen_share": share, "unseen_examples": dict(top)}
            if share > UNSEEN_SHARE and not entry.get("other_count"):
                violate(
                    name,
                    "categorical_values_check",
                    f"{share:.3f} of values in categories "
                    f"the training data never had, e.g. {[k for k, _ in top[:3]]}",
                )
        features[name] = doc
    rejected = window.rejected / max(window.requests, 1)
    if rejected > REJECTED_SHARE:
        violate("", "rejected_requests_check", f"{rejected:.3f} of requests were rejected (4xx)")
    for extra, count in window.extra_columns.items():
        violate(extra, "extra_column_check", f"{count} records carry a column the model lacks")
    if window.wrong_width:
        violate("", "missing_column_check", f"{window.wrong_width} CSV rows have another width")
    quality = {
        "requests": window.requests,
        "rejected_requests": window.rejected,
        "rejected_share": rejected,
        "unreadable_lines": window.read.unreadable,
        "unreadable_examples": window.read.errors,
        "other_model_versions": window.other_versions,
        "extra_columns": window.extra_columns,
        "wrong_width_rows": window.wrong_width,
        "features": features,
    }
    return quality, violations


def _classification(truth: list, pred: list, score: np.ndarray) -> dict[str, float]:
    t, p = np.asarray(truth, dtype=object).astype(str), np.asarray(pred, dtype=object).astype(str)
    classes = sorted(set(t) | set(p))
    f1s = []
    for c in classes:
        tp = float(((p == c) & (t == c)).sum())
        fp, fn = float(((p == c) & (t != c)).sum()), float(((p != c) & (t == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    out = {"accuracy": float((t == p).mean()), "f1_macro": float(np.mean(f1s))}
    finite = ~np.isnan(score)
    if finite.any() and len(classes) <= 2:
        positive = classes[-1]
        out["auc"] = _auc((t[finite] == positive).astype(int), score[finite])
    return out


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic (average ranks for ties)."""
    from scipy.stats import rankdata

    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _numbers(values: list) -> np.ndarray:
    """Numbers (or number texts) as floats; anything else (a label, a list, None) NaN."""
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            continue
        try:
            out[i] = float(value)
        except (ValueError, OverflowError):
            continue
    return out


def _regression(truth: list, pred: list) -> dict[str, float]:
    """RMSE and MAE over the rows whose label and prediction are both finite numbers."""
    t, p = _numbers(truth), _numbers(pred)
    both = np.isfinite(t) & np.isfinite(p)
    if not both.any():
        return {"rmse": math.nan, "mae": math.nan}
    error = t[both] - p[both]
    return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}


def model_quality(labelled: list[tuple[str, Any, Any, float]], regression: bool) -> dict:
    if not labelled:
        return {}
    by_hour: dict[str, list] = defaultdict(list)
    for row in labelled:
        by_hour[row[0]].append(row)

    def metrics(rows: list) -> dict[str, float]:
        truth, pred = [r[1] for r in rows], [r[2] for r in rows]
        if regression:
            return _regression(truth, pred)
        return _classification(truth, pred, np.asarray([r[3] for r in rows], dtype=float))

    return {
        "labelled_rows": len(labelled),
        "overall": metrics(labelled),
        "by_hour": {h: {"rows": len(rows), **metrics(rows)} for h, rows in sorted(by_hour.items())},
    }


def analyse(
    baseline: dict[str, Any], window: Window, options: Options, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report document (see `report.write_reports`); `rows` 0 means an empty window."""
    meta = meta or {}
    drifts = {
        name: drift_of(baseline["features"][name], column, options.method)
        for name, column in window.columns.items()
    }
    quality, violations = data_quality(baseline, window)
    pred_drift = drift_of(baseline["prediction"], window.prediction, options.method)
    dataset = stats.dataset_drift(drifts, options.drift_share)
    for name, drift in drifts.items():
        if drift.drifted:
            violations.append(
                {
                    "feature_name": name,
                    "constraint_check_type": "baseline_drift_check",
                    "description": f"{drift.method} {drift.statistic:.4g} "
                    f"vs threshold {drift.threshold}",
                }
            )
    regression = baseline["prediction"]["type"] == "numeric"
    return {
        "rows": window.rows,
        "window": {
            "first": window.first.isoformat() if window.first else None,
            "last": window.last.isoformat() if window.last else None,
            "since": options.since.isoformat() if options.since else None,
            "until": options.until.isoformat() if options.until else None,
        },
        "model_version": options.model_version or meta.get("version"),
        "dataset_drift": dataset,
        "drift_share": sum(d.drifted for d in drifts.values()) / max(len(drifts), 1),
        "drift_share_threshold": options.drift_share,
        "features": {n: d.as_dict() for n, d in drifts.items()},
        "data_quality": quality,
        "prediction_drift": pred_drift.as_dict(),
        "model_quality": model_quality(window.labelled, regression),
        "violations": violations,
    }


def positive_class(meta: dict[str, Any]) -> str | None:
    classes = meta.get("classes")
    return str(classes[1]) if isinstance(classes, list) and len(classes) == 2 else None


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """The artifact's `meta.json` ({} when there is none)."""
    import json

    path = Path(model_dir) / "meta.json"
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MonitorError(f"{path}: cannot read it: {exc}") from None
    if not isinstance(doc, dict):
        raise MonitorError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _all_unreadable(read: ReadStats, what: str, uri: str) -> None:
    """A location whose every line is unreadable is an error, never an empty window."""
    if read.lines and read.unreadable >= read.lines:
        raise CaptureError(
            f"{uri}: none of the {read.lines} {what} lines can be read, e.g. {read.errors[0]}"
        )


def run_monitor(
    model_dir: str | Path,
    capture: str,
    options: Options,
    ground_truth: str | None = None,
) -> tuple[dict[str, Any], Window]:
    """Read the window and analyse it. Raises MonitorError (and BaselineError, CaptureError)."""
    if options.method is not None and options.method not in stats.METHODS:
        raise MonitorError(f"--method {options.method!r}: allowed {list(stats.METHODS)}")
    if not 0 < options.drift_share <= 1:
        raise MonitorError(f"--drift-share {options.drift_share}: must be in (0, 1]")
    baseline = read_baseline(model_dir)
    meta = read_meta(model_dir)
    truth = None
    read = ReadStats()
    if ground_truth:
        truth = read_ground_truth(ground_truth, read)
        _all_unreadable(read, "ground-truth", ground_truth)
    derive = extractor(baseline, model_dir)
    window = read_window(baseline, capture, options, truth, positive_class(meta), derive)
    _all_unreadable(window.read, "capture", capture)
    window.read.unreadable += read.unreadable
    window.read.errors += read.errors
    if window.rows == 0:
        return {
            "rows": 0,
            "empty": True,
            "requests": window.requests,
            "unreadable_lines": window.read.unreadable,
            "outside_window": window.read.outside_window,
            "other_model_versions": window.other_versions,
        }, window
    return analyse(baseline, window, options, meta), window
