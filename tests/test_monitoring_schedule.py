"""The scheduled monitor: the CronJob manifest, its identity, the drift alarm, and the job
itself against moto (what it reads, writes and publishes)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from components.monitoring import (
    cronjob_manifest,
    drift_alarm_args,
    monitored,
    window_of,
)
from components.monitoring_identity import METRICS_NAMESPACE, monitoring_service_account
from components.spec import load_stack_file
from tests.monitor_support import frame, model_dir, write_capture
from tests.test_services import LOGS, STACKS, render
from workloads.monitoring.scheduled import main as scheduled_main

ROOT = Path(__file__).resolve().parents[1]
PROD = load_stack_file(ROOT / "stacks" / "Pulumi.vision-prod.yaml")


def _manifest(ep_name: str = "defects-batch-api") -> dict:
    ep = next(e for e in PROD.endpoints if e.name == ep_name)
    return cronjob_manifest(
        PROD, ep, image="123.dkr.ecr/serve:1.0", logs_bucket=LOGS, model_group="grp",
        namespace="vision",
    )  # fmt: skip


def test_cronjob_runs_the_monitor_on_the_system_pool_as_the_monitoring_identity():
    doc = _manifest()
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "CronJob"
    assert doc["spec"]["schedule"] == "0 * * * *" and doc["spec"]["concurrencyPolicy"] == "Forbid"
    pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"mlinfra.io/pool": "system"}
    assert pod["serviceAccountName"] == monitoring_service_account(PROD) == "vision-monitoring"
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"]
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == "123.dkr.ecr/serve:1.0"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    args = container["command"]
    assert args[:3] == ["python", "-m", "workloads.monitoring"]
    opts = dict(zip(args[3::2], args[4::2], strict=True))
    physical = f"{PROD.prefix}-defects-batch-api"
    # SageMaker writes under <destination>/<endpoint>/<variant>/: the reader looks there
    assert opts["--capture"] == f"s3://{LOGS}/data-capture/{physical}/AllTraffic"
    assert opts["--output"] == f"s3://{LOGS}/monitoring/defects-batch-api"
    assert opts["--model-version"] == "3" and opts["--since"] == "1h"
    assert len(doc["metadata"]["name"]) <= 52


def test_the_job_publishes_where_the_identity_may():
    from workloads.monitoring import scheduled

    assert scheduled.METRICS_NAMESPACE == METRICS_NAMESPACE  # the policy's namespace condition


def test_windows_follow_the_schedule():
    assert window_of("0 * * * *") == "1h" and window_of("15 3 * * *") == "24h"
    assert window_of("@daily") == "24h" and window_of("0 3 * * 1") == "7d"


def test_drift_alarm_notifies_the_team_topic():
    ep = next(e for e in PROD.endpoints if e.name == "defects-batch-api")
    args = drift_alarm_args(PROD, ep, "arn:topic")
    assert args["namespace"] == "mlinfra/monitoring" and args["metric_name"] == "dataset_drift"
    assert args["alarm_actions"] == ["arn:topic"] and args["treat_missing_data"] == "notBreaching"


@pytest.mark.parametrize("path", STACKS, ids=lambda p: p.name)
def test_every_captured_endpoint_gets_a_cronjob_and_an_alarm(path):
    spec = load_stack_file(path)
    rendered = render(spec)
    jobs = rendered.by_type("kubernetes:batch/v1:CronJob")
    want = {f"{spec.prefix}-{e.name}-monitor" for e in monitored(spec)}
    assert {j.inputs["metadata"]["name"] for j in jobs} == want
    alarms = [
        a
        for a in rendered.by_type("aws:cloudwatch/metricAlarm:MetricAlarm")
        if a.inputs.get("metricName") == "dataset_drift"
    ]
    assert len(alarms) == len(want)
    topics = rendered.by_type("aws:sns/topic:Topic")
    for alarm in alarms:
        assert alarm.inputs["alarmActions"] and len(topics) >= 1
    for job in jobs:
        assert job.parent.endswith("Endpoints::endpoints")


def test_the_job_reads_captures_and_the_baseline_writes_reports_and_metrics(tmp_path, aws_env):
    with mock_aws():
        _run_job(tmp_path)


def _run_job(tmp_path: Path) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in ("mlinfra-logs", "artifacts"):
        s3.create_bucket(Bucket=bucket)
    model = model_dir(tmp_path, frame(3000))
    for name in ("baseline.json", "meta.json"):
        s3.upload_file(str(model / name), "artifacts", f"models/grp/7/{name}")
    shifted = frame(300, seed=2, shift=20)
    write_capture(tmp_path / "cap", shifted, model_version="7")
    for path in (tmp_path / "cap").rglob("*.jsonl"):
        key = f"data-capture/{path.relative_to(tmp_path / 'cap').as_posix()}"
        s3.upload_file(str(path), "mlinfra-logs", key)
    calls: list[str] = []

    def clients(name: str):
        client = boto3.client(name, region_name="us-east-1")
        client.meta.events.register(
            "before-call", lambda model, params, **_: calls.append(f"{name}:{model.name}")
        )
        return client

    registry = SimpleNamespace(
        get=lambda g, v: SimpleNamespace(version=v, model_uri="s3://artifacts/models/grp/7"),
        latest_approved=None,
    )
    code = scheduled_main(
        ["--endpoint", "p-churn", "--capture", "s3://mlinfra-logs/data-capture/churn/AllTraffic",
         "--model-group", "grp", "--model-version", "7", "--output", "s3://mlinfra-logs/monitoring/churn",
         "--since", "100000d"],
        registry=registry,
        clients=clients,
    )  # fmt: skip
    assert code == 0
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket="mlinfra-logs", Prefix="monitoring/")["Contents"]
    ]
    assert {k.rsplit("/", 1)[1] for k in keys} == {
        "report.json", "statistics.json", "constraint_violations.json", "report.html"
    }  # fmt: skip
    report_key = next(k for k in keys if k.endswith("report.json"))
    report = json.loads(s3.get_object(Bucket="mlinfra-logs", Key=report_key)["Body"].read())
    assert report["rows"] == 300 and report["dataset_drift"]
    cw = boto3.client("cloudwatch", region_name="us-east-1")
    names = {m["MetricName"] for m in cw.list_metrics(Namespace="mlinfra/monitoring")["Metrics"]}
    assert {"dataset_drift", "feature_baseline_drift_age", "drift_share"} <= names
    # what the monitoring identity must allow, and nothing else
    assert set(calls) <= {
        "s3:HeadObject", "s3:GetObject", "s3:ListObjectsV2", "s3:PutObject",
        "cloudwatch:PutMetricData",
    }  # fmt: skip
