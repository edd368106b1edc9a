"""The scheduled monitor: per endpoint with data capture on, a Kubernetes CronJob on the
system pool and a CloudWatch alarm on its dataset-drift metric.

The CronJob runs `python -m workloads.monitoring` (`workloads.monitoring.scheduled`) in the
serving image, as the team's monitoring service account (`<team>-monitoring`, bound by IRSA
to a role that reads the captures and the model artifacts, writes reports under
`monitoring/` of the logs bucket and publishes metrics in one namespace; see the cluster's
monitoring identity). It compares the last schedule interval of captured traffic with the
served model's baseline, writes the reports to `s3://<logs>/monitoring/<endpoint>/<time>/`
and publishes `feature_baseline_drift_<feature>`, `dataset_drift` and quality metrics. The
alarm on `dataset_drift` notifies the team's endpoint alarm topic.

Both kinds capture into `s3://<logs>/data-capture/<endpoint>/AllTraffic/`: SageMaker writes
the files of its endpoints, the serving container those of a Kubernetes endpoint
(`components.serving_pod.capture_env`). Stacks without a cluster run the same command from
CI on a schedule (README).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.monitoring_identity import METRICS_NAMESPACE, monitoring_service_account
from components.serving_pod import (
    IMAGE_PULL_POLICY,
    POOL_LABEL,
    container_security_context,
    pod_security_context,
)
from components.spec import EndpointSpec, PlatformSpec, monitor_job_name
from workloads.monitoring.layout import capture_destination, endpoint_capture_uri, reports_uri
from workloads.monitoring.scheduled import DATASET_DRIFT_METRIC

SYSTEM_POOL = "system"
VARIANT = "AllTraffic"
# How far back each run looks, per schedule: the interval between two runs.
WINDOWS = {"@hourly": "1h", "@daily": "24h", "@weekly": "7d"}
JOB_DEADLINE_S = 3000  # a run stops before the next hourly one starts


def monitored(spec: PlatformSpec) -> list[EndpointSpec]:
    """The endpoints whose captured traffic lands in S3: those with capture on (SageMaker
    writes it; a Kubernetes endpoint's server does, in the same layout)."""
    return [ep for ep in spec.endpoints if ep.data_capture.enabled]


def window_of(schedule: str) -> str:
    """The look-back of a schedule: hourly (`M * * * *`) 1h, daily (`M H * * *`) 24h;
    anything else 24h (the reader also skips hour folders outside the window)."""
    if schedule in WINDOWS:
        return WINDOWS[schedule]
    fields = schedule.split()
    if fields[1:] == ["*", "*", "*", "*"]:
        return "1h"
    if fields[2:] == ["*", "*", "*"]:
        return "24h"
    return "7d" if fields[2:4] == ["*", "*"] else "24h"


def monitor_args(
    spec: PlatformSpec, ep: EndpointSpec, logs_bucket: str, model_group: str
) -> list[str]:
    physical = f"{spec.prefix}-{ep.name}"
    logs = f"s3://{logs_bucket}"
    args = [
        "python", "-m", "workloads.monitoring",
        "--endpoint", physical,
        "--capture", endpoint_capture_uri(capture_destination(logs), physical, VARIANT),
        "--model-group", model_group,
        "--output", reports_uri(logs, ep.name),
        "--since", window_of(ep.data_capture.monitor_schedule),
        "--metrics-namespace", METRICS_NAMESPACE,
    ]  # fmt: skip
    if ep.model_version is not None:
        args += ["--model-version", str(ep.model_version)]
    return args


def cronjob_manifest(
    spec: PlatformSpec,
    ep: EndpointSpec,
    *,
    image: str,
    logs_bucket: str,
    model_group: str,
    namespace: str,
) -> dict[str, Any]:
    """The CronJob as Kubernetes takes it (apiVersion batch/v1)."""
    labels = {
        **spec.tags,
        "app.kubernetes.io/name": f"{spec.prefix}-{ep.name}",
        "app.kubernetes.io/component": "monitor",
    }
    container = {
        "name": "monitor",
        "image": image,
        "imagePullPolicy": IMAGE_PULL_POLICY,
        "command": monitor_args(spec, ep, logs_bucket, model_group),
        "env": [
            {"name": "AWS_REGION", "value": spec.region},
            {"name": "AWS_DEFAULT_REGION", "value": spec.region},
            {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
        ],
        "resources": {
            "requests": {"cpu": "250m", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "2Gi"},
        },
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "serviceAccountName": monitoring_service_account(spec),
        # IRSA projects its own token; the monitor never talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "nodeSelector": {POOL_LABEL: SYSTEM_POOL},
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": monitor_job_name(spec, ep.name),
            "namespace": namespace,
            "labels": labels,
        },
        "spec": {
            "schedule": ep.data_capture.monitor_schedule,
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "backoffLimit": 1,
                    "activeDeadlineSeconds": JOB_DEADLINE_S,
                    "ttlSecondsAfterFinished": 86400,
                    "template": {"metadata": {"labels": labels}, "spec": pod},
                },
            },
        },
    }


def drift_alarm_args(spec: PlatformSpec, ep: EndpointSpec, topic_arn: Any) -> dict[str, Any]:
    """The CloudWatch alarm on the endpoint's dataset drift (1 when a run found it)."""
    physical = f"{spec.prefix}-{ep.name}"
    return {
        "name": f"{physical}-dataset-drift",
        "alarm_description": (
            f"The monitor found dataset drift on {physical}: see s3://<logs>/monitoring/"
            f"{ep.name}/ for the report"
        ),
        "namespace": METRICS_NAMESPACE,
        "metric_name": DATASET_DRIFT_METRIC,
        "dimensions": {"Endpoint": physical},
        "statistic": "Maximum",
        "period": 3600,
        "evaluation_periods": 1,
        "threshold": 1,
        "comparison_operator": "GreaterThanOrEqualToThreshold",
        "treat_missing_data": "notBreaching",  # no traffic, no run: no alarm
        "alarm_actions": [topic_arn],
        "ok_actions": [topic_arn],
        "tags": spec.tags,
    }


def scheduled_monitors(
    parent: pulumi.Resource,
    name: str,
    spec: PlatformSpec,
    *,
    serve_repository_url: pulumi.Input[str],
    logs_bucket: pulumi.Input[str],
    model_group_names: dict[str, pulumi.Input[str]],
    namespace: pulumi.Input[str],
    provider: k8s.Provider,
    alarm_topic_arn: pulumi.Input[str],
) -> list[k8s.batch.v1.CronJob]:
    """A CronJob and a drift alarm per monitored endpoint."""
    jobs = []
    for ep in monitored(spec):
        image = pulumi.Output.concat(serve_repository_url, ":", ep.image_tag)
        manifest = pulumi.Output.all(
            image, logs_bucket, model_group_names[ep.model_group], namespace
        ).apply(
            lambda a, ep=ep: cronjob_manifest(
                spec, ep, image=a[0], logs_bucket=a[1], model_group=a[2], namespace=a[3]
            )
        )
        jobs.append(
            k8s.batch.v1.CronJob(
                f"{name}-{ep.name}-monitor",
                metadata=manifest["metadata"],
                spec=manifest["spec"],
                opts=pulumi.ResourceOptions(parent=parent, provider=provider),
            )
        )
        aws.cloudwatch.MetricAlarm(
            f"{name}-{ep.name}-dataset-drift",
            **drift_alarm_args(spec, ep, alarm_topic_arn),
            opts=pulumi.ResourceOptions(parent=parent),
        )
    return jobs
