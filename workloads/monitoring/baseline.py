"""The training baseline: what the monitor compares captured traffic with.

Training writes `baseline.json` into the artifact (and the output dir). Per feature: the
type, the count, the missing share, and for numbers min/max/mean/std plus the values
themselves (at most `SKETCH` rows) or a quantile sketch of `SKETCH` points standing for the
rest; for strings the category counts (the `MAX_CATEGORIES` most frequent; the rest in
`other_count`). Always the prediction distribution on the validation set.

    {"format": 1, "task": "tabular", "rows": N,
     "features": {name: {"type": "numeric", "count": ..., "missing_share": ..., "min": ...,
                         "max": ..., "mean": ..., "std": ..., "distinct": ...,
                         "sample": [...], "sample_weight": w}
                  | {"type": "categorical", "count": ..., "missing_share": ...,
                     "distinct": ..., "frequencies": {value: count}, "other_count": n}},
     "prediction": <a feature entry, for the predicted label or value>}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT = 1
FILE = "baseline.json"
SKETCH = 1000
MAX_CATEGORIES = 1000


class BaselineError(ValueError):
    """A baseline that cannot be used; the message names the file and what is wrong."""


def numeric_entry(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    total = len(values)
    present = np.sort(values[~np.isnan(values)])
    n = len(present)
    entry: dict[str, Any] = {
        "type": "numeric",
        "count": n,
        "missing_share": (total - n) / total if total else 0.0,
    }
    if n == 0:
        return entry | {"sample": [], "sample_weight": 1.0, "distinct": 0}
    if n <= SKETCH:
        sample, weight = present, 1.0
    else:  # mid-point quantiles: each stands for n / SKETCH rows
        sample = np.quantile(present, (np.arange(SKETCH) + 0.5) / SKETCH, method="inverted_cdf")
        weight = n / SKETCH
    return entry | {
        "min": float(present[0]),
        "max": float(present[-1]),
        "mean": float(present.mean()),
        "std": float(present.std()),
        "distinct": int(len(np.unique(present))),
        "sample": sample.tolist(),
        "sample_weight": weight,
    }


def categorical_entry(values: Any) -> dict[str, Any]:
    series = pd.Series(values, dtype=object)
    total = len(series)
    present = series[series.notna()].astype(str)
    counts = present.value_counts()
    top = counts.iloc[:MAX_CATEGORIES]
    return {
        "type": "categorical",
        "count": len(present),
        "missing_share": (total - len(present)) / total if total else 0.0,
        "distinct": len(counts),
        "frequencies": {str(k): int(v) for k, v in top.items()},
        "other_count": int(counts.iloc[MAX_CATEGORIES:].sum()),
    }


def column_entry(series: pd.Series) -> dict[str, Any]:
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return numeric_entry(series.to_numpy(dtype=np.float64, na_value=np.nan))
    return categorical_entry(series.to_numpy(dtype=object))


def prediction_entry(predictions: list) -> dict[str, Any]:
    """The distribution of predictions: the label for classifiers ({"label": ...}), the
    value for regressors (numbers)."""
    values = [p.get("label") if isinstance(p, dict) else p for p in predictions]
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        labels = {type(v) for v in values} == {int} and len(set(values)) <= 20
        if not labels:
            return numeric_entry(np.asarray(values, dtype=np.float64))
    return categorical_entry(values)


def table_baseline(task: str, frame: pd.DataFrame, predictions: list) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "task": task,
        "rows": len(frame),
        "features": {str(c): column_entry(frame[c]) for c in frame.columns},
        "prediction": prediction_entry(predictions),
    }


def prediction_baseline(task: str, predictions: list) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "task": task,
        "rows": len(predictions),
        "features": {},
        "prediction": prediction_entry(predictions),
    }


def read_baseline(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / FILE
    if not path.is_file():
        raise BaselineError(
            f"{path} does not exist: the model was trained before baselines were written; "
            "retrain it to monitor it"
        )
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BaselineError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "features" not in doc:
        raise BaselineError(
            f"{path}: not a baseline of format {FORMAT} (keys 'format', 'features')"
        )
    if not isinstance(doc["features"], dict):
        raise BaselineError(f"{path}: features: expected an object of feature entries")
    for name, entry in doc["features"].items():
        check_entry(entry, f"{path}: features.{name}")
    if "prediction" not in doc:
        raise BaselineError(f"{path}: no 'prediction' entry (the predictions' distribution)")
    check_entry(doc["prediction"], f"{path}: prediction")
    return doc


KINDS = ("numeric", "categorical")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_entry(entry: Any, where: str) -> None:
    """A feature (or prediction) entry the monitor can use, or BaselineError naming the
    field and what it must hold."""

    def bad(field: str, value: Any, wanted: str) -> BaselineError:
        return BaselineError(f"{where}.{field} {value!r:.80}: expected {wanted}")

    if not isinstance(entry, dict):
        raise BaselineError(f"{where}: expected an object, got {type(entry).__name__}")
    kind = entry.get("type")
    if kind not in KINDS:
        raise bad("type", kind, f"one of {list(KINDS)}")
    count = entry.get("count")
    if not _finite(count) or count < 0 or count != int(count):
        raise bad("count", count, "a whole number >= 0")
    share = entry.get("missing_share")
    if not _finite(share) or not 0 <= share <= 1:
        raise bad("missing_share", share, "a number in [0, 1]")
    if kind == "categorical":
        freqs = entry.get("frequencies", {})
        if not isinstance(freqs, dict) or not all(_finite(v) and v >= 0 for v in freqs.values()):
            raise bad("frequencies", freqs, "an object of counts >= 0")
        other = entry.get("other_count", 0)
        if not _finite(other) or other < 0:
            raise bad("other_count", other, "a number >= 0")
        return
    sample = entry.get("sample", [])
    if not isinstance(sample, list) or not all(_finite(v) for v in sample):
        raise bad("sample", sample, "a list of finite numbers")
    weight = entry.get("sample_weight", 1.0)
    if not _finite(weight) or weight <= 0:
        raise bad("sample_weight", weight, "a number > 0")
    for field in ("min", "max", "mean", "std"):
        if field in entry and not _finite(entry[field]):
            raise bad(field, entry[field], "a finite number")
    if ("min" in entry) != ("max" in entry) or entry.get("min", 0) > entry.get("max", 0):
        raise BaselineError(f"{where}: min and max go together, min <= max")


def reference_arrays(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(values, weights or None, rows they stand for) of a baseline entry, for the tests."""
    if entry["type"] == "numeric":
        sample = np.asarray(entry.get("sample", []), dtype=np.float64)
        weight = float(entry.get("sample_weight", 1.0))
        weights = None if weight == 1.0 else np.full(len(sample), weight)
        return sample, weights, int(entry["count"])
    freqs = entry.get("frequencies", {})
    keys = np.asarray(list(freqs), dtype=object).astype(str)
    return keys, np.asarray(list(freqs.values()), dtype=np.float64), int(entry["count"])
