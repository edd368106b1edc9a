"""What the team's SageMaker endpoints may do: the execution role's policy."""

from __future__ import annotations

from components.iam import vpc_network_interfaces_statement


def execution_policy(
    partition: str,
    account: str,
    region: str,
    prefix: str,
    artifacts_bucket: str,
    logs_bucket: str,
    kms_key_arn: str,
    repository: str,
) -> dict:
    """What the team's SageMaker endpoints may do: read models, write captures and logs."""
    s3 = f"arn:{partition}:s3:::"
    log_group = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadModels",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": f"{s3}{artifacts_bucket}/*",
            },
            {
                "Sid": "ListModels",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": f"{s3}{artifacts_bucket}",
            },
            {
                "Sid": "WriteDataCapture",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": f"{s3}{logs_bucket}/data-capture/*",
            },
            {
                "Sid": "TeamKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
                "Resource": kms_key_arn,
            },
            {
                "Sid": "TeamKeyGrantsForVolumes",
                "Effect": "Allow",
                "Action": ["kms:CreateGrant"],
                "Resource": kms_key_arn,
                "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
            },
            {
                "Sid": "PullServeImage",
                "Effect": "Allow",
                "Action": [
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchCheckLayerAvailability",
                ],
                "Resource": f"arn:{partition}:ecr:{region}:{account}:repository/{repository}",
            },
            {
                # Not resource-scoped in IAM.
                "Sid": "EcrLogin",
                "Effect": "Allow",
                "Action": ["ecr:GetAuthorizationToken"],
                "Resource": "*",
            },
            {
                "Sid": "EndpointLogs",
                "Effect": "Allow",
                "Action": [
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                "Resource": [f"{log_group}{prefix}-*", f"{log_group}{prefix}-*:*"],
            },
            {
                "Sid": "Metrics",
                "Effect": "Allow",
                "Action": ["cloudwatch:PutMetricData"],
                "Resource": "*",
            },
            vpc_network_interfaces_statement(),
        ],
    }
