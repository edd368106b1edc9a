"""Monitoring a local stack's endpoint: where its capture and reports are, the newest
result per endpoint (`mlinfra status`), and a window of traffic with a known shift
(`mlinfra pipeline` ends with it)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from workloads.monitoring.layout import (
    CAPTURE_FOLDER,
    GROUND_TRUTH_FOLDER,
    REPORTS_FOLDER,
    endpoint_capture_uri,
)
from workloads.monitoring.monitor import MonitorError
from workloads.monitoring.run import Outcome, monitor_model_dir

VARIANT = "AllTraffic"
# The pipeline's shift: what changes in the second half of the window it sends.
SHIFT_SCALE = 3.0  # numeric columns named in `shift_columns` are multiplied by it


def logs_dir(buckets: Path) -> Path:
    return buckets / "logs"


def monitor_local_endpoint(
    paths: Any,
    endpoint: str,
    *,
    since: str | None = "24h",
    until: str | None = None,
    method: str | None = None,
    drift_share: float = 0.5,
) -> Outcome:
    """The monitor over a local endpoint's capture, against the version it serves."""
    from workloads.local import env as localenv

    descriptor = localenv.read_descriptor(paths)
    if endpoint not in descriptor.endpoints:
        raise MonitorError(
            f"endpoint {endpoint!r} is not in stack {descriptor.stack}; "
            f"endpoints: {sorted(descriptor.endpoints)}"
        )
    proc = localenv.read_process(paths, endpoint)
    if proc is None or proc.model_dir is None or proc.model_version is None:
        raise MonitorError(f"endpoint {endpoint} serves no model yet: nothing to monitor")
    logs = logs_dir(paths.buckets)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    truth = logs / GROUND_TRUTH_FOLDER / endpoint
    return monitor_model_dir(
        proc.model_dir,
        endpoint_capture_uri(str(logs / CAPTURE_FOLDER), endpoint, VARIANT),
        logs / REPORTS_FOLDER / endpoint / stamp,
        ground_truth=str(truth) if truth.exists() else None,
        since=since,
        until=until,
        method=method,
        drift_share=drift_share,
        model_version=str(proc.model_version),
    )


def newest_result(buckets: Path, endpoint: str) -> dict[str, Any] | None:
    """The newest report of an endpoint: when, rows, drift, violations (None: never run)."""
    folder = logs_dir(buckets) / REPORTS_FOLDER / endpoint
    runs = sorted(p for p in folder.glob("*/report.json")) if folder.is_dir() else []
    if not runs:
        return None
    try:
        report = json.loads(runs[-1].read_text())
    except ValueError:
        return {"when": runs[-1].parent.name, "error": f"{runs[-1]} is not valid JSON"}
    drifted = [n for n, f in report.get("features", {}).items() if f.get("drifted")]
    return {
        "when": runs[-1].parent.name,
        "rows": report.get("rows", 0),
        "dataset_drift": report.get("dataset_drift", False),
        "drifted": drifted,
        "violations": len(report.get("violations", [])),
        "report": str(runs[-1].parent),
    }


def send_window(
    url: str,
    frame: pd.DataFrame,
    shift_columns: list[str],
    *,
    batch: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """POST `frame` as JSON requests: the first half as is, the second half shifted (each
    of `shift_columns` times SHIFT_SCALE if numeric, else its rarest value). Returns what
    was sent and shifted."""
    rng = np.random.default_rng(seed)
    frame = frame.sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)
    half = len(frame) // 2
    shifted = frame.copy()
    for col in shift_columns:
        if pd.api.types.is_numeric_dtype(frame[col]):
            shifted.loc[half:, col] = frame.loc[half:, col] * SHIFT_SCALE
        else:
            rarest = frame[col].value_counts().index[-1]
            shifted.loc[half:, col] = rarest
    records = shifted.astype(object).where(shifted.notna(), None).to_dict("records")
    sent = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(records), batch):
            chunk = records[start : start + batch]
            response = client.post("/invocations", json={"instances": chunk})
            if response.status_code != 200:
                raise MonitorError(f"{url}/invocations answered {response.status_code}")
            sent += len(chunk)
    return {"rows": sent, "shifted_rows": len(frame) - half, "shifted_columns": shift_columns}


def wait_for_capture(url: str, timeout: float = 20.0) -> dict[str, Any]:
    """Until the server's capture writer has written what it queued (its /stats)."""
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = httpx.get(f"{url}/stats", timeout=5).json().get("capture", {})
        if not stats or stats.get("written", 0) + stats.get("write_errors", 0) >= stats.get(
            "captured", 0
        ):
            return stats
        time.sleep(0.5)
    return stats
