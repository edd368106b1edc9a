"""What `mlinfra monitor` does: resolve the window, run the monitor, write the reports."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from workloads.monitoring.baseline import read_baseline
from workloads.monitoring.monitor import MonitorError, Options, run_monitor
from workloads.monitoring.report import exit_status, write_reports

DURATION = re.compile(r"^(\d+)([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass
class Outcome:
    report: dict[str, Any]
    exit_code: int
    files: list[Path]


def parse_moment(text: str | None, now: datetime, what: str) -> datetime | None:
    """`24h`, `30m`, `7d` (that long before now) or an ISO time (UTC unless it says)."""
    if not text:
        return None
    match = DURATION.match(text.strip())
    if match:
        try:
            return now - timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise MonitorError(f"{what} {text!r}: reaches before the year 1") from None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MonitorError(
            f"{what} {text!r}: expected a duration (30m, 24h, 7d) or an ISO time "
            "(2026-11-30T10:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def monitor_model_dir(
    model_dir: str | Path,
    capture: str,
    output: str | Path,
    *,
    ground_truth: str | None = None,
    since: str | None = None,
    until: str | None = None,
    method: str | None = None,
    drift_share: float = 0.5,
    model_version: str | None = None,
    now: datetime | None = None,
) -> Outcome:
    now = now or datetime.now(UTC)
    options = Options(
        method=method,
        drift_share=drift_share,
        since=parse_moment(since, now, "--since"),
        until=parse_moment(until, now, "--until"),
        model_version=model_version,
    )
    if options.since and options.until and options.since >= options.until:
        raise MonitorError(f"--since {since} is not before --until {until}")
    report, window = run_monitor(model_dir, capture, options, ground_truth)
    baseline = read_baseline(model_dir) if report.get("rows") else None
    files = write_reports(output, report, baseline, window)
    return Outcome(report, exit_status(report), files)
