"""Test helpers for the monitor: a baseline from a frame, captured traffic written in the
SageMaker layout with chosen times, ground-truth files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from workloads.monitoring.baseline import table_baseline
from workloads.monitoring.monitor import Window
from workloads.serving.capture import Captured, capture_path, capture_record

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def frame(rows: int, seed: int = 0, shift: float = 0.0, plan_p=(0.5, 0.3, 0.2)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(40 + shift, 10, rows).round(2),
            "income": rng.lognormal(10, 0.5, rows).round(2),
            "visits": rng.integers(0, 20, rows).astype(float),
            "plan": rng.choice(["basic", "pro", "team"], rows, p=list(plan_p)),
        }
    )


def labels_for(data: pd.DataFrame) -> list[str]:
    return np.where(data["age"] > 40, "yes", "no").tolist()


def model_dir(tmp: Path, reference: pd.DataFrame, classes=("no", "yes")) -> Path:
    out = tmp / "model"
    out.mkdir(parents=True, exist_ok=True)
    preds = [{"label": v} for v in labels_for(reference)]
    (out / "baseline.json").write_text(json.dumps(table_baseline("tabular", reference, preds)))
    (out / "meta.json").write_text(json.dumps({"task": "tabular", "classes": list(classes)}))
    return out


def write_capture(
    root: Path,
    data: pd.DataFrame,
    *,
    start: datetime = T0,
    step: timedelta = timedelta(seconds=1),
    per_request: int = 1,
    csv: bool = False,
    base64_all: bool = False,
    model_version: str | None = None,
    endpoint: str = "churn",
    id_prefix: str = "req",
) -> list[str]:
    """Write `data` as captured requests (one file per hour); returns the inference ids."""
    by_file: dict[Path, list[bytes]] = {}
    ids = []
    files: dict[tuple, Path] = {}
    preds = labels_for(data)
    for n, first in enumerate(range(0, len(data), per_request)):
        chunk = data.iloc[first : first + per_request]
        when = start + n * step
        if csv:
            body = "\n".join(",".join(str(v) for v in row) for row in chunk.itertuples(index=False))
            ctype = "text/csv"
        else:
            body = orjson.dumps({"instances": chunk.to_dict(orient="records")}).decode()
            ctype = "application/json"
        out = orjson.dumps(
            {
                "predictions": [
                    {
                        "label": p,
                        "probabilities": {"yes": float(p == "yes"), "no": float(p == "no")},
                    }
                    for p in preds[first : first + per_request]
                ]
            }
        )
        inference_id = f"{id_prefix}-{n}"
        ids.append(inference_id)
        item = Captured(ctype, body.encode(), out, "application/json", inference_id, when)
        hour = (when.date(), when.hour)
        if hour not in files:
            files[hour] = capture_path(root, endpoint, "AllTraffic", when)
        record = capture_record(item, f"evt-{id_prefix}-{n}", base64_all, model_version)
        by_file.setdefault(files[hour], []).append(orjson.dumps(record))
    for path, lines in by_file.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as fh:
            fh.write(b"\n".join(lines) + b"\n")
    return ids


def write_ground_truth(path: Path, labels: dict[str, object], json_encoding: bool = False) -> None:
    lines = []
    for key, label in labels.items():
        data = json.dumps(label) if json_encoding else str(label)
        lines.append(
            json.dumps(
                {
                    "groundTruthData": {
                        "data": data,
                        "encoding": "JSON" if json_encoding else "CSV",
                    },
                    "eventMetadata": {"eventId": key},
                    "eventVersion": "0",
                }
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def assert_same_window(fast: Window, slow: Window) -> None:
    """The column-wise and the line-by-line readers read the same window: the same counts,
    values and category codes."""
    for attr in ("requests", "rejected", "other_versions", "extra_columns", "wrong_width"):
        assert getattr(fast, attr) == getattr(slow, attr), attr
    assert (fast.first, fast.last) == (slow.first, slow.last)
    for attr in ("files", "lines", "unreadable", "outside_window"):
        assert getattr(fast.read, attr) == getattr(slow.read, attr), attr
    for name in [*fast.columns, "prediction"]:
        a = fast.columns.get(name, fast.prediction)
        b = slow.columns.get(name, slow.prediction)
        assert (a.missing, a.type_errors, a.codes) == (b.missing, b.type_errors, b.codes), name
        np.testing.assert_array_equal(a.array(), b.array(), err_msg=name)
