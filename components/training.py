"""What the team's SageMaker training jobs run with: an execution role and a security group.

The role (`<prefix>-training`, assumed by SageMaker only) reaches the team's buckets, key
and model groups and nothing else (the same statements as the cluster's workload role),
plus what a training job in a VPC needs: pull the team's training image, write its logs
and metrics, and manage its network interfaces in the team's subnets. It is not the
endpoints' role: an endpoint never needs to write data or checkpoints.

The security group lets the instances of one multi-node job talk to each other (the
torchrun rendezvous and NCCL; SageMaker encrypts that traffic on request) and reach AWS
APIs over HTTPS (S3 through the gateway endpoint, ECR/STS/SageMaker through the interface
endpoints, anything else through NAT); nothing may connect in from outside the group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from components.cluster import workload_policy
from components.iam import assume_role_policy, vpc_network_interfaces_statement
from components.spec import PlatformSpec
from components.storage import DataLake

TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
METRICS_NAMESPACE = "/aws/sagemaker/TrainingJobs"


@dataclass
class TrainingAccessArgs:
    spec: PlatformSpec
    data_lake: DataLake
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    train_repository_arn: pulumi.Input[str]
    model_group_arns: list[pulumi.Output[str]] = field(default_factory=list)


def training_policy(
    spec: PlatformSpec,
    lake: DataLake,
    model_group_arns: list[pulumi.Output[str]],
    train_repository_arn: pulumi.Input[str],
) -> dict[str, Any]:
    """The team's data (as the workload role has it) plus what a VPC training job needs."""
    account = aws.get_caller_identity_output().account_id
    log_arn = pulumi.Output.concat(
        "arn:aws:logs:", spec.region, ":", account, ":log-group:", TRAINING_LOG_GROUP
    )
    doc = workload_policy(lake, [], model_group_arns)
    doc["Statement"] += [
        {
            "Sid": "PullTrainingImage",
            "Effect": "Allow",
            "Action": [
                "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer",
                "ecr:BatchCheckLayerAvailability",
            ],
            "Resource": [train_repository_arn],
        },
        {
            # Takes no resource in IAM: a registry login token, no image data.
            "Sid": "RegistryLogin",
            "Effect": "Allow",
            "Action": ["ecr:GetAuthorizationToken"],
            "Resource": "*",
        },
        {
            "Sid": "TrainingLogs",
            "Effect": "Allow",
            "Action": [
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "logs:DescribeLogStreams",
            ],
            "Resource": [log_arn, pulumi.Output.concat(log_arn, ":log-stream:*")],
        },
        {
            "Sid": "TrainingMetrics",
            "Effect": "Allow",
            "Action": ["cloudwatch:PutMetricData"],
            "Resource": "*",
            "Condition": {"StringLike": {"cloudwatch:namespace": METRICS_NAMESPACE + "*"}},
        },
        vpc_network_interfaces_statement(),
    ]
    return doc


class TrainingAccess(pulumi.ComponentResource):
    role_arn: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    subnet_ids: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: TrainingAccessArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlinfra:training:TrainingAccess", name, None, opts)
        spec = args.spec
        child = pulumi.ResourceOptions(parent=self)
        tags = spec.tags

        role = aws.iam.Role(
            f"{name}-role",
            name=f"{spec.prefix}-training",
            description=f"SageMaker training jobs of {spec.prefix}",
            assume_role_policy=assume_role_policy("sagemaker.amazonaws.com"),
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-access",
            role=role.id,
            policy=pulumi.Output.json_dumps(
                training_policy(
                    spec, args.data_lake, args.model_group_arns, args.train_repository_arn
                )
            ),
            opts=child,
        )
        sg = aws.ec2.SecurityGroup(
            f"{name}-sg",
            name=f"{spec.prefix}-training",
            description="SageMaker training jobs: within the job, and HTTPS to AWS APIs",
            vpc_id=args.vpc_id,
            tags={**tags, "Name": f"{spec.prefix}-training"},
            opts=child,
        )
        for direction, rule in (
            ("in", aws.vpc.SecurityGroupIngressRule),
            ("out", aws.vpc.SecurityGroupEgressRule),
        ):
            rule(
                f"{name}-sg-job-{direction}",
                security_group_id=sg.id,
                description="Instances of one training job (rendezvous, NCCL)",
                ip_protocol="-1",
                referenced_security_group_id=sg.id,
                tags=tags,
                opts=child,
            )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-sg-https-out",
            security_group_id=sg.id,
            description="HTTPS to AWS APIs (VPC endpoints, S3 gateway, NAT)",
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            cidr_ipv4="0.0.0.0/0",
            tags=tags,
            opts=child,
        )
        self.role_arn = role.arn
        self.security_group_id = sg.id
        self.subnet_ids = pulumi.Output.from_input(args.subnet_ids)
        self.register_outputs(
            {
                "role_arn": self.role_arn,
                "security_group_id": self.security_group_id,
                "subnet_ids": self.subnet_ids,
            }
        )
