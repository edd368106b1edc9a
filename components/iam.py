"""IAM documents the components share."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws


def assume_role_policy(service: str) -> str:
    """Trust policy letting one AWS service (e.g. sagemaker.amazonaws.com) assume a role."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": service},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )


def vpc_network_interfaces_statement(sid: str = "VpcNetworkInterfaces") -> dict:
    """What SageMaker needs to attach a job's or an endpoint's network interfaces in the
    team's subnets (these EC2 actions are not resource-scoped in IAM)."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": [
            "ec2:CreateNetworkInterface",
            "ec2:CreateNetworkInterfacePermission",
            "ec2:DeleteNetworkInterface",
            "ec2:DeleteNetworkInterfacePermission",
            "ec2:DescribeNetworkInterfaces",
            "ec2:DescribeVpcs",
            "ec2:DescribeDhcpOptions",
            "ec2:DescribeSubnets",
            "ec2:DescribeSecurityGroups",
        ],
        "Resource": "*",
    }


def irsa_trust_policy(
    provider_arn: pulumi.Input[str], issuer: pulumi.Input[str], namespace: str, sa: str
) -> pulumi.Output[dict[str, Any]]:
    """Only this one service account of this one namespace may assume the role."""

    def build(arn: str, url: str) -> dict[str, Any]:
        host = url.removeprefix("https://")
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{host}:sub": f"system:serviceaccount:{namespace}:{sa}",
                            f"{host}:aud": "sts.amazonaws.com",
                        }
                    },
                }
            ],
        }

    return pulumi.Output.all(provider_arn, issuer).apply(lambda a: build(a[0], a[1]))


def irsa_role(
    parent: pulumi.Resource,
    name: str,
    *,
    role_name: str,
    oidc_arn: pulumi.Input[str],
    issuer: pulumi.Input[str],
    namespace: str,
    service_account: str,
    policy: pulumi.Input[Any],
    tags: dict[str, str],
) -> aws.iam.Role:
    """An IAM role one Kubernetes service account assumes (IRSA), with its inline policy."""
    child = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(
        f"{name}-role",
        name=role_name,
        assume_role_policy=pulumi.Output.json_dumps(
            irsa_trust_policy(oidc_arn, issuer, namespace, service_account)
        ),
        tags=tags,
        opts=child,
    )
    aws.iam.RolePolicy(
        f"{name}-access", role=role.id, policy=pulumi.Output.json_dumps(policy), opts=child
    )
    return role
