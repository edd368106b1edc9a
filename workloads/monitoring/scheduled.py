"""The scheduled monitor: what the CronJob (or a CI schedule) runs in the serving image.

    python -m workloads.monitoring --endpoint NAME --capture s3://logs/data-capture/EP \\
        --model-group GROUP [--model-version N] --output s3://logs/monitoring/NAME \\
        [--since 1h] [--metrics-namespace mlinfra/monitoring]

It finds the model (the pinned version, else the newest approved one of the group in the
registry), fetches its `baseline.json` and `meta.json`, runs the monitor over the window,
writes the reports under `<output>/<yyyy-mm-ddThh-mm-ssZ>/`, and publishes CloudWatch
metrics: `dataset_drift` (0/1), `drift_share`, `feature_baseline_drift_<feature>` (the
statistic), `prediction_drift`, `violations`, `rejected_share` and the model-quality figures,
with the dimension `Endpoint`. Drift is reported through the metrics (and their alarm), so
the Job itself exits 0 unless the monitor failed (1).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from workloads.monitoring.baseline import FILE as BASELINE_FILE
from workloads.monitoring.baseline import read_baseline
from workloads.monitoring.inputs import model_files
from workloads.monitoring.run import monitor_model_dir

log = logging.getLogger("workloads.monitoring")
METRICS_NAMESPACE = "mlinfra/monitoring"
DATASET_DRIFT_METRIC = "dataset_drift"
MAX_METRICS_PER_CALL = 1000


def metric_data(report: dict[str, Any], endpoint: str, when: datetime) -> list[dict[str, Any]]:
    """The CloudWatch datums of one report (none for an empty window)."""
    if not report.get("rows"):
        return []
    dims = [{"Name": "Endpoint", "Value": endpoint}]

    def datum(name: str, value: float, unit: str = "None") -> dict[str, Any]:
        value = float(value)
        if abs(value) < 1 / MAX_METRIC_VALUE:  # a p-value of 1e-300: older API docs refuse it
            value = 0.0
        return {"MetricName": name, "Dimensions": dims, "Timestamp": when, "Value": value,
                "Unit": unit}  # fmt: skip

    data = [
        datum(DATASET_DRIFT_METRIC, 1.0 if report["dataset_drift"] else 0.0),
        datum("drift_share", report["drift_share"]),
        datum("violations", len(report["violations"]), "Count"),
        datum("rejected_share", report["data_quality"]["rejected_share"]),
        datum("rows", report["rows"], "Count"),
    ]
    for name, doc in report["features"].items():
        if doc["statistic"] is not None:
            data.append(datum(f"feature_baseline_drift_{name}", doc["statistic"]))
    if report["prediction_drift"]["statistic"] is not None:
        data.append(datum("prediction_drift", report["prediction_drift"]["statistic"]))
    for name, value in report.get("model_quality", {}).get("overall", {}).items():
        data.append(datum(f"model_quality_{name}", value))
    return [d for d in data if _publishable(d)]


# What PutMetricData takes: a metric name of 1-255 characters, a value within +-2^360 (no
# NaN or infinity; older docs also say at least 2^-360 in size); one datum it refuses fails
# the whole call.
MAX_METRIC_NAME = 255
MAX_METRIC_VALUE = 2.0**360


def _publishable(datum: dict[str, Any]) -> bool:
    value, name = datum["Value"], datum["MetricName"]
    if not math.isfinite(value) or abs(value) > MAX_METRIC_VALUE:
        return False  # NaN (an AUC of one class), a distance or an error past the range
    if len(name) > MAX_METRIC_NAME:
        log.warning("metric %.60s... not published: names are at most 255 characters", name)
        return False
    return True


def publish_metrics(cloudwatch: Any, namespace: str, data: list[dict[str, Any]]) -> None:
    for start in range(0, len(data), MAX_METRICS_PER_CALL):
        cloudwatch.put_metric_data(
            Namespace=namespace, MetricData=data[start : start + MAX_METRICS_PER_CALL]
        )


def resolve_model(registry: Any, group: str, version: int | None) -> Any:
    """The version to compare with: the pinned one, else the newest approved."""
    model = registry.get(group, version) if version else registry.latest_approved(group)
    if model is None:
        raise LookupError(f"model group {group}: no approved version to monitor")
    return model


def fetch_model_files(model_uri: str, dest: Path, s3: Any = None) -> Path:
    """`baseline.json` and `meta.json` of an artifact (a folder or an `s3://` prefix), and
    the files the baseline's inputs name (a text model's tokenizer)."""
    parsed = urlparse(model_uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else model_uri)
    if parsed.scheme != "s3":
        raise ValueError(f"model URI {model_uri!r}: use file:// or s3://")
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    prefix = parsed.path.strip("/")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (BASELINE_FILE, "meta.json"):
        key = f"{prefix}/{name}" if prefix else name
        try:
            s3.download_file(parsed.netloc, key, str(dest / name))
        except Exception as exc:  # botocore's ClientError: say which file
            if name == BASELINE_FILE:
                raise FileNotFoundError(
                    f"{model_uri}/{name}: cannot read it ({exc}); a model trained before "
                    "baselines existed must be retrained to be monitored"
                ) from None
            raise
    for name in model_files(read_baseline(dest)):
        key = f"{prefix}/{name}" if prefix else name
        s3.download_file(parsed.netloc, key, str(dest / name))
    return dest


def upload_reports(files: list[Path], output: str, stamp: str, s3: Any = None) -> str:
    parsed = urlparse(output)
    if parsed.scheme in ("", "file"):
        return str(files[0].parent)
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    prefix = f"{parsed.path.strip('/')}/{stamp}".lstrip("/")
    for path in files:
        s3.upload_file(str(path), parsed.netloc, f"{prefix}/{path.name}")
    return f"s3://{parsed.netloc}/{prefix}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workloads.monitoring", description=__doc__)
    p.add_argument("--endpoint", required=True, help="The endpoint's name (metric dimension)")
    p.add_argument("--capture", required=True, help="Its captured traffic (s3:// or a folder)")
    p.add_argument("--model-group", required=True, help="Its model package group")
    p.add_argument("--model-version", type=int, default=None, help="The pinned version")
    p.add_argument("--output", required=True, help="Where reports go (s3:// or a folder)")
    p.add_argument("--ground-truth", default=None)
    p.add_argument("--since", default="1h")
    p.add_argument("--metrics-namespace", default=METRICS_NAMESPACE, help="'' publishes none")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, registry: Any = None, clients: Any = None) -> int:
    """`clients(name)` builds an AWS client (tests pass stubs)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if clients is None:
        import boto3

        clients = boto3.client
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H-%M-%SZ")
    try:
        if registry is None:
            from workloads.platform import ModelGroupRef
            from workloads.registry.store import SageMakerModelRegistry

            group_ref = ModelGroupRef(name=args.model_group, gate=None)
            registry = SageMakerModelRegistry({args.model_group: group_ref}, clients("sagemaker"))
        model = resolve_model(registry, args.model_group, args.model_version)
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = fetch_model_files(model.model_uri, Path(tmp) / "model", clients("s3"))
            local = Path(tmp) / "report" if urlparse(args.output).scheme == "s3" else None
            out_dir = local or Path(args.output) / stamp
            outcome = monitor_model_dir(
                model_dir,
                args.capture,
                out_dir,
                ground_truth=args.ground_truth,
                since=args.since,
                model_version=str(model.version),
                now=now,
            )
            where = upload_reports(outcome.files, args.output, stamp, clients("s3"))
        data = metric_data(outcome.report, args.endpoint, now)
        if args.metrics_namespace and data:
            publish_metrics(clients("cloudwatch"), args.metrics_namespace, data)
    except Exception as exc:  # one line in the Job's log, exit 1 (the Job shows failed)
        log.error("monitor %s failed: %s: %s", args.endpoint, type(exc).__name__, exc)
        return 1
    rows = outcome.report.get("rows", 0)
    log.info(
        "monitor %s v%s: %d rows, dataset drift %s, %d metrics, reports in %s",
        args.endpoint,
        model.version,
        rows,
        outcome.report.get("dataset_drift", False),
        len(data),
        where,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
