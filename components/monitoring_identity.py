"""The monitoring job's own identity: the one principal that reads captured traffic.

Endpoints capture every sampled request and response body into the logs bucket
(`data-capture/`). That is the most sensitive data the platform holds, so the team's
general workload role does not reach the logs bucket at all; the scheduled monitoring
Job runs as its own service account, `<team>-monitoring`, bound by IRSA to
`<prefix>-monitoring`, which reads captures, reads baselines from the model artifacts,
writes reports under `monitoring/` of the logs bucket and publishes its metrics.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.iam import irsa_role
from components.spec import PlatformSpec
from components.storage import DataLake

CAPTURE_PREFIX = "data-capture/"
REPORTS_PREFIX = "monitoring/"
METRICS_NAMESPACE = "mlinfra/monitoring"


def monitoring_service_account(spec: PlatformSpec) -> str:
    return f"{spec.team}-monitoring"


def monitoring_policy(
    lake: DataLake, model_group_arns: list[pulumi.Output[str]] | None = None
) -> dict[str, Any]:
    logs = lake.bucket_arns["logs"]
    policy: dict[str, Any] = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListCapturesAndReports",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [logs],
                "Condition": {
                    "StringLike": {"s3:prefix": [f"{CAPTURE_PREFIX}*", f"{REPORTS_PREFIX}*"]}
                },
            },
            {
                "Sid": "ReadCaptures",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [pulumi.Output.concat(logs, "/", CAPTURE_PREFIX, "*")],
            },
            {
                "Sid": "ReadWriteReports",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": [pulumi.Output.concat(logs, "/", REPORTS_PREFIX, "*")],
            },
            {
                # Training writes the baseline into the model artifact.
                "Sid": "ReadBaselines",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [pulumi.Output.concat(lake.bucket_arns["artifacts"], "/*")],
            },
            {
                "Sid": "UseTeamKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": [lake.kms_key_arn],
            },
            {
                # PutMetricData takes no resource; the condition pins the namespace.
                "Sid": "PublishMonitoringMetrics",
                "Effect": "Allow",
                "Action": ["cloudwatch:PutMetricData"],
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}},
            },
        ],
    }
    if model_group_arns:
        # The job finds the served version and its artifact (the baseline) in the registry:
        # read-only, the team's groups and their versions.
        versions = [
            pulumi.Output.from_input(arn).apply(
                lambda a: a.replace(":model-package-group/", ":model-package/") + "/*"
            )
            for arn in model_group_arns
        ]
        policy["Statement"] += [
            {
                "Sid": "ReadTeamModelRegistry",
                "Effect": "Allow",
                "Action": ["sagemaker:DescribeModelPackageGroup", "sagemaker:DescribeModelPackage"],
                "Resource": [*model_group_arns, *versions],
            },
            {
                # List actions take no resource in IAM; they return metadata, never data.
                "Sid": "ListModelVersions",
                "Effect": "Allow",
                "Action": ["sagemaker:ListModelPackages"],
                "Resource": "*",
            },
        ]
    return policy


def monitoring_identity(
    parent: pulumi.Resource,
    name: str,
    spec: PlatformSpec,
    *,
    oidc_arn: pulumi.Input[str],
    issuer: pulumi.Input[str],
    lake: DataLake,
    namespace: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
    model_group_arns: list[pulumi.Output[str]] | None = None,
) -> k8s.core.v1.ServiceAccount:
    """The monitoring role, its policy and the service account bound to it."""
    sa_name = monitoring_service_account(spec)
    role = irsa_role(
        parent,
        f"{name}-monitoring",
        role_name=f"{spec.prefix}-monitoring",
        oidc_arn=oidc_arn,
        issuer=issuer,
        namespace=spec.team,
        service_account=sa_name,
        policy=monitoring_policy(lake, model_group_arns),
        tags=spec.tags,
    )
    return k8s.core.v1.ServiceAccount(
        f"{name}-monitoring-service-account",
        metadata={
            "name": sa_name,
            "namespace": namespace,
            "annotations": {"eks.amazonaws.com/role-arn": role.arn},
        },
        opts=opts,
    )
