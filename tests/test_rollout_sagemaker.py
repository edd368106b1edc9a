"""`mlinfra deploy` to SageMaker: moto for the registry, ECR, alarms and autoscaling; botocore's
Stubber on the deployer's own SageMaker client for what moto lacks (UpdateEndpoint), so every
request's shape is asserted: blue/green with the alarms, KMS, VPC, data capture."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from tests.rollout_support import (
    ALARMS,
    KEY,
    ROLE,
    SERVE_REPO,
    aws_descriptor,
    push_image,
    sagemaker_ref,
)
from workloads.jobs.rollout import RolloutError, UnknownEndpointError, deployer_for
from workloads.jobs.rollout.sagemaker import SageMakerDeployer
from workloads.registry.store import SageMakerModelRegistry

STAMP = "20261130093000"
NEW = f"team-dev-churn-v1-{STAMP}"
OLD = "team-dev-churn-v0-old"
ENDPOINT = "team-dev-churn"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:"


@pytest.fixture
def aws(aws_env):
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        sagemaker = session.client("sagemaker")
        sagemaker.create_model_package_group(ModelPackageGroupName="team-dev-churn")
        registry = SageMakerModelRegistry(aws_descriptor().registry.model_groups, client=sagemaker)
        v1 = registry.register(
            "churn", "s3://team-dev-artifacts/m/1.tar.gz", {"auc": 0.9}, f"{SERVE_REPO}:abc123"
        )
        registry.approve("churn", v1.version)
        registry.register(
            "churn", "s3://team-dev-artifacts/m/2.tar.gz", {"auc": 0.7}, f"{SERVE_REPO}:abc123"
        )
        push_image(session.client("ecr"), "team-dev-serve", "abc123")
        cloudwatch = session.client("cloudwatch")
        for name, metric in zip(ALARMS, ("Invocation5XXErrors", "ModelLatency"), strict=True):
            cloudwatch.put_metric_alarm(
                AlarmName=name,
                Namespace="AWS/SageMaker",
                MetricName=metric,
                Dimensions=[
                    {"Name": "EndpointName", "Value": ENDPOINT},
                    {"Name": "VariantName", "Value": "AllTraffic"},
                ],
                Statistic="Sum",
                Period=60,
                EvaluationPeriods=1,
                Threshold=1.0,
                ComparisonOperator="GreaterThanThreshold",
            )
        # The deployer's own SageMaker client, stubbed: moto has no UpdateEndpoint.
        stubbed = session.client("sagemaker")
        with Stubber(stubbed) as stub:
            yield session, registry, stubbed, stub


def deployer(aws, descriptor=None) -> SageMakerDeployer:
    session, registry, stubbed, _ = aws
    built = deployer_for(
        descriptor or aws_descriptor(),
        "churn",
        registry,
        session=session,
        sagemaker=stubbed,
        poll_s=0,
        stamp=lambda: STAMP,
    )
    assert isinstance(built, SageMakerDeployer)
    return built


def package_arn(aws) -> str:
    return aws[1].get("churn", 1).arn


def expect_model_and_config(stub, arn: str) -> None:
    stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}model/{NEW}"},
        {
            "ModelName": NEW,
            "PrimaryContainer": {"ModelPackageName": arn},
            "ExecutionRoleArn": ROLE,
            "EnableNetworkIsolation": True,
            "VpcConfig": {
                "Subnets": ["subnet-a", "subnet-b"],
                "SecurityGroupIds": ["sg-endpoints"],
            },
            "Tags": [
                {"Key": "team", "Value": "team"},
                {"Key": "environment", "Value": "dev"},
                {"Key": "mlinfra:model-group", "Value": "churn"},
                {"Key": "mlinfra:model-version", "Value": "1"},
            ],
        },
    )
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}endpoint-config/{NEW}"},
        {
            "EndpointConfigName": NEW,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": NEW,
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                }
            ],
            "KmsKeyId": KEY,
            "DataCaptureConfig": {
                "EnableCapture": True,
                "InitialSamplingPercentage": 20,
                "DestinationS3Uri": "s3://team-dev-logs/data-capture/team-dev-churn",
                "KmsKeyId": KEY,
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                "CaptureContentTypeHeader": {
                    "JsonContentTypes": ["application/json"],
                    "CsvContentTypes": ["text/csv"],
                },
            },
            "Tags": [{"Key": "team", "Value": "team"}, {"Key": "environment", "Value": "dev"}],
        },
    )


def described(status: str, config: str, reason: str | None = None) -> dict:
    out = {
        "EndpointName": ENDPOINT,
        "EndpointArn": f"{ARN}endpoint/{ENDPOINT}",
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": "2026-11-30T00:00:00Z",
        "LastModifiedTime": "2026-11-30T00:00:00Z",
    }
    if reason:
        out["FailureReason"] = reason
    return out


def expect_update(stub) -> None:
    stub.add_response(
        "update_endpoint",
        {"EndpointArn": f"{ARN}endpoint/{ENDPOINT}"},
        {
            "EndpointName": ENDPOINT,
            "EndpointConfigName": NEW,
            "RetainAllVariantProperties": True,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "ALL_AT_ONCE",
                        "WaitIntervalInSeconds": 300,
                    },
                    "TerminationWaitInSeconds": 120,
                    "MaximumExecutionTimeoutInSeconds": 3600,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in ALARMS]},
            },
        },
    )


def test_an_existing_endpoint_gets_a_blue_green_update_rolled_back_on_its_alarms(aws):
    stub = aws[3]
    stub.add_response("describe_endpoint", described("InService", OLD), {"EndpointName": ENDPOINT})
    expect_model_and_config(stub, package_arn(aws))
    expect_update(stub)
    stub.add_response("describe_endpoint", described("Updating", OLD), {"EndpointName": ENDPOINT})
    stub.add_response("describe_endpoint", described("InService", NEW), {"EndpointName": ENDPOINT})

    result = deployer(aws).deploy("churn")  # the newest approved: v1 (v2 is pending)

    stub.assert_no_pending_responses()
    assert (result.version, result.outcome, result.physical) == (1, "deployed", ENDPOINT)
    assert any("rolled back on team-dev-churn-5xx-errors" in m for m in result.messages)


def test_a_rollback_is_reported_with_its_reason(aws):
    stub = aws[3]
    stub.add_response("describe_endpoint", described("InService", OLD), {"EndpointName": ENDPOINT})
    expect_model_and_config(stub, package_arn(aws))
    expect_update(stub)
    stub.add_response(
        "describe_endpoint", described("RollingBack", OLD), {"EndpointName": ENDPOINT}
    )
    stub.add_response(
        "describe_endpoint",
        described("InService", OLD, "Alarm team-dev-churn-5xx-errors went into ALARM"),
        {"EndpointName": ENDPOINT},
    )
    with pytest.raises(
        RolloutError, match=f"v1 was rolled back .*5xx-errors went into ALARM.*still serves {OLD}"
    ):
        deployer(aws).deploy("churn", 1)


def test_a_first_deploy_creates_the_endpoint_then_its_autoscaling(aws):
    session, _, _, stub = aws
    stub.add_client_error(
        "describe_endpoint", "ValidationException", 'Could not find endpoint "team-dev-churn".'
    )
    expect_model_and_config(stub, package_arn(aws))
    stub.add_response(
        "create_endpoint",
        {"EndpointArn": f"{ARN}endpoint/{ENDPOINT}"},
        {
            "EndpointName": ENDPOINT,
            "EndpointConfigName": NEW,
            "Tags": [{"Key": "team", "Value": "team"}, {"Key": "environment", "Value": "dev"}],
        },
    )
    stub.add_response("describe_endpoint", described("Creating", NEW), {"EndpointName": ENDPOINT})
    stub.add_response("describe_endpoint", described("InService", NEW), {"EndpointName": ENDPOINT})

    result = deployer(aws).deploy("churn", 1)

    stub.assert_no_pending_responses()
    assert result.outcome == "created"
    scaling = session.client("application-autoscaling")
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert target["ResourceId"] == "endpoint/team-dev-churn/variant/AllTraffic"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    (policy,) = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyName"] == "team-dev-churn-invocations-per-instance"
    assert config["TargetValue"] == 100.0
    assert config["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerVariantInvocationsPerInstance"
    )


def test_a_failed_creation_names_the_reason_and_adds_no_autoscaling(aws):
    session, _, _, stub = aws
    stub.add_client_error("describe_endpoint", "ValidationException", "Could not find endpoint x")
    expect_model_and_config(stub, package_arn(aws))
    stub.add_response("create_endpoint", {"EndpointArn": f"{ARN}endpoint/{ENDPOINT}"}, None)
    stub.add_response(
        "describe_endpoint",
        described("Failed", NEW, "The primary container did not pass pings"),
        {"EndpointName": ENDPOINT},
    )
    with pytest.raises(RolloutError, match="is Failed: The primary container did not pass"):
        deployer(aws).deploy("churn", 1)
    scaling = session.client("application-autoscaling")
    assert not scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: d.deploy("churn", 2), "churn v2 is PendingManualApproval, not Approved"),
        (lambda d: d.deploy("churn", 7), "model group 'churn' has no version 7"),
        (lambda d: d.deploy("churn", 1, image_tag="nope"), "team-dev-serve:nope does not exist"),
    ],
)
def test_bad_input_is_refused_with_one_message_and_creates_nothing(aws, call, message):
    stub = aws[3]  # no response queued: any SageMaker call would fail the test
    with pytest.raises(RolloutError, match=message):
        call(deployer(aws))
    stub.assert_no_pending_responses()


def test_unknown_endpoint_pinned_endpoint_and_missing_alarms_are_refused(aws):
    session, registry, stubbed, stub = aws
    with pytest.raises(UnknownEndpointError, match="endpoint 'nope' is not declared.*churn"):
        deployer_for(aws_descriptor(), "nope", registry)
    pinned = aws_descriptor({"churn": sagemaker_ref(model_version=1, version_owner="stack")})
    with pytest.raises(RolloutError, match="pins \\(modelVersion: 1\\).*through a pull request"):
        deployer(aws, pinned).deploy("churn", 1)
    unalarmed = sagemaker_ref()
    unalarmed["sagemaker"] = {**unalarmed["sagemaker"], "alarms": ["team-dev-churn-gone"]}
    stub.add_response("describe_endpoint", described("InService", OLD), {"EndpointName": ENDPOINT})
    with pytest.raises(RolloutError, match="alarm\\(s\\) team-dev-churn-gone do not exist"):
        deployer(aws, aws_descriptor({"churn": unalarmed})).deploy("churn", 1)
    stub.add_response("describe_endpoint", described("Updating", OLD), {"EndpointName": ENDPOINT})
    with pytest.raises(RolloutError, match="is Updating; deploy once it is InService"):
        deployer(aws).deploy("churn", 1)
    stub.assert_no_pending_responses()


def test_without_the_exported_definition_the_live_endpoint_is_copied(aws):
    """A descriptor from before the endpoints change: role, VPC, keys and capture come from
    the live endpoint, its alarms from CloudWatch."""
    stub = aws[3]
    bare = aws_descriptor({"churn": sagemaker_ref(sagemaker=None, scaling=None)})
    stub.add_response(
        "describe_endpoint",
        {
            **described("InService", OLD),
            "ProductionVariants": [{"VariantName": "AllTraffic", "CurrentInstanceCount": 2}],
        },
        {"EndpointName": ENDPOINT},
    )
    stub.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": OLD,
            "EndpointConfigArn": f"{ARN}endpoint-config/{OLD}",
            "CreationTime": "2026-11-30",
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": OLD,
                    "InstanceType": "ml.g5.xlarge",
                    "InitialInstanceCount": 1,
                }
            ],
        },
        {"EndpointConfigName": OLD},
    )
    stub.add_response(
        "describe_model",
        {
            "ModelName": OLD,
            "ModelArn": f"{ARN}model/{OLD}",
            "CreationTime": "2026-11-30",
            "ExecutionRoleArn": ROLE,
            "EnableNetworkIsolation": True,
            "VpcConfig": {"Subnets": ["subnet-z"], "SecurityGroupIds": ["sg-z"]},
        },
        {"ModelName": OLD},
    )
    stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}model/{NEW}"},
        {
            "ModelName": NEW,
            "PrimaryContainer": {"ModelPackageName": package_arn(aws)},
            "ExecutionRoleArn": ROLE,
            "EnableNetworkIsolation": True,
            "VpcConfig": {"Subnets": ["subnet-z"], "SecurityGroupIds": ["sg-z"]},
            "Tags": ANY,
        },
    )
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}endpoint-config/{NEW}"},
        {
            "EndpointConfigName": NEW,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": NEW,
                    "InstanceType": "ml.g5.xlarge",
                    "InitialInstanceCount": 2,
                }
            ],
            "Tags": [],
        },
    )
    expect_update(stub)
    stub.add_response("describe_endpoint", described("InService", NEW), {"EndpointName": ENDPOINT})
    assert deployer(aws, bare).deploy("churn", 1).outcome == "deployed"
    stub.assert_no_pending_responses()
