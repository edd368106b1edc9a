"""Removing what `mlinfra deploy` created before `pulumi destroy` (components.deployed),
against moto: a deploy-created endpoint with its scaling goes, a pinned one stays."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from components.deployed import deploy_created_endpoints, main, remove_deployed
from components.spec import parse_spec

REGION = "us-east-1"
SPEC = parse_spec(
    {
        "mlinfra:team": "ml",
        "mlinfra:environment": "pr-7",
        "mlinfra:costCenter": "cc-1",
        "mlinfra:modelRegistry": {"modelGroups": [{"name": "churn"}]},
        "mlinfra:endpoints": [
            {"name": "api", "modelGroup": "churn"},
            {"name": "pinned", "modelGroup": "churn", "modelVersion": 2},
            {"name": "pods", "modelGroup": "churn", "kind": "kubernetes"},
        ],
        "mlinfra:budget": {"monthlyLimitUsd": 10, "alertEmails": ["a@example.com"]},
    },
    "test",
)


def _deploy(name: str) -> None:
    """What `mlinfra deploy` does for an unpinned endpoint (the part that matters here)."""
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_model(
        ModelName=f"{name}-v1",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/ml-pr-7-endpoints",
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/s:1"},
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-v1",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": f"{name}-v1",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-v1")
    scaling = boto3.client("application-autoscaling", region_name=REGION)
    resource = f"endpoint/{name}/variant/AllTraffic"
    scaling.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=resource,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=1,
        MaxCapacity=2,
    )
    scaling.put_scaling_policy(
        PolicyName=f"{name}-invocations-per-instance",
        ServiceNamespace="sagemaker",
        ResourceId=resource,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 100.0,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
            },
        },
    )


def test_only_unpinned_sagemaker_endpoints_are_deploy_created():
    assert deploy_created_endpoints(SPEC) == ["ml-pr-7-api"]


def test_remove_deployed_deletes_the_endpoint_its_scaling_config_and_model(aws_env):
    with mock_aws():
        _deploy("ml-pr-7-api")
        _deploy("ml-pr-7-pinned")  # the stack's: must stay
        said: list[str] = []
        assert remove_deployed(SPEC, say=said.append) == ["ml-pr-7-api"]
        sm = boto3.client("sagemaker", region_name=REGION)
        assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["ml-pr-7-pinned"]
        assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == [
            "ml-pr-7-pinned-v1"
        ]
        assert [m["ModelName"] for m in sm.list_models()["Models"]] == ["ml-pr-7-pinned-v1"]
        scaling = boto3.client("application-autoscaling", region_name=REGION)
        targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")
        assert [t["ResourceId"] for t in targets["ScalableTargets"]] == [
            "endpoint/ml-pr-7-pinned/variant/AllTraffic"
        ]
        policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")
        assert [p["PolicyName"] for p in policies["ScalingPolicies"]] == [
            "ml-pr-7-pinned-invocations-per-instance"
        ]
        # Again: nothing left, nothing fails.
        assert remove_deployed(SPEC, say=said.append) == []
        assert said[-1] == "ml-pr-7-api: not deployed, nothing to remove"


def test_the_command_refuses_prod_and_unknown_stacks(capsys):
    assert main(["--stack", "nlp-prod"]) == 2
    assert "is prod" in capsys.readouterr().err
    assert main(["--stack", "nope"]) == 2
    assert "no stack config stacks/Pulumi.nope.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("stack", ["nlp-dev", "vision-dev"])
def test_the_command_removes_a_real_stack_s_deployed_endpoints(stack, aws_env, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1" if stack == "nlp-dev" else REGION)
    with mock_aws():
        assert main(["--stack", stack]) == 0  # nothing deployed: nothing to do
