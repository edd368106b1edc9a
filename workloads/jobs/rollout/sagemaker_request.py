"""The SageMaker rollout and batch requests, as plain dicts (no client, no calls).

Shapes follow the SageMaker and Application Auto Scaling API references: CreateModel,
CreateEndpointConfig, CreateEndpoint, UpdateEndpoint (DeploymentConfig with a
BlueGreenUpdatePolicy and an AutoRollbackConfiguration on CloudWatch alarms),
RegisterScalableTarget, PutScalingPolicy and CreateTransformJob. `sagemaker.py` sends them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workloads.platform import DataCaptureRef, EndpointRef
from workloads.registry.store import ModelVersion

MAX_NAME = 63  # Model, EndpointConfig and TransformJob names
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9-]+")
# Blue/green: shift all traffic at once, then bake while the alarms watch the new fleet;
# an alarm in that window rolls traffic back to the old fleet.
BAKE_S = 300  # WaitIntervalInSeconds (0-3600)
TERMINATION_WAIT_S = 120  # keep the old fleet this long after the bake (0-3600)
MAX_EXECUTION_S = 3600  # MaximumExecutionTimeoutInSeconds (600-14400)
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"
SCALE_IN_COOLDOWN_S = 300
SCALE_OUT_COOLDOWN_S = 60


@dataclass(frozen=True)
class Target:
    """Everything a SageMaker endpoint's Model and EndpointConfig are made of."""

    endpoint: str  # the physical endpoint name
    variant: str
    instance_type: str
    instance_count: int
    role_arn: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    network_isolation: bool
    volume_kms_key_arn: str | None
    data_capture: Mapping[str, Any] | None  # a DataCaptureConfig request
    alarms: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)
    min_instances: int = 1
    max_instances: int = 1
    target_invocations: int | None = None
    policy_name: str | None = None
    scale_in_cooldown_s: int = SCALE_IN_COOLDOWN_S
    scale_out_cooldown_s: int = SCALE_OUT_COOLDOWN_S

    @property
    def scaling_resource_id(self) -> str:
        return f"endpoint/{self.endpoint}/variant/{self.variant}"


def data_capture_config(capture: DataCaptureRef) -> dict[str, Any]:
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": capture.sampling_percent,
        "DestinationS3Uri": capture.destination,
        "KmsKeyId": capture.kms_key_arn,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {
            "JsonContentTypes": list(capture.json_content_types),
            "CsvContentTypes": list(capture.csv_content_types),
        },
    }


def target_from_descriptor(ref: EndpointRef) -> Target | None:
    """The target the stack exported for this endpoint (None if the stack exports none)."""
    sm, scaling = ref.sagemaker, ref.scaling
    if sm is None:
        return None
    return Target(
        endpoint=ref.name,
        variant=sm.variant,
        instance_type=sm.instance_type,
        instance_count=scaling.min_instances if scaling else 1,
        role_arn=sm.role_arn,
        subnets=tuple(sm.subnets),
        security_groups=tuple(sm.security_groups),
        network_isolation=sm.network_isolation,
        volume_kms_key_arn=sm.volume_kms_key_arn,
        data_capture=data_capture_config(sm.data_capture) if sm.data_capture else None,
        alarms=tuple(sm.alarms),
        tags=dict(sm.tags),
        min_instances=scaling.min_instances if scaling else 1,
        max_instances=scaling.max_instances if scaling else 1,
        target_invocations=scaling.target_invocations_per_instance if scaling else None,
        policy_name=scaling.policy_name if scaling else None,
        scale_in_cooldown_s=(scaling.scale_in_cooldown_s if scaling else None)
        or SCALE_IN_COOLDOWN_S,
        scale_out_cooldown_s=(scaling.scale_out_cooldown_s if scaling else None)
        or SCALE_OUT_COOLDOWN_S,
    )


def target_from_endpoint(
    endpoint: Mapping[str, Any],
    config: Mapping[str, Any],
    model: Mapping[str, Any],
    alarms: list[str],
) -> Target:
    """The target as the live endpoint has it (Describe* answers): a new version changes
    only the model, so role, network, keys, capture and instance type carry over."""
    variant = config["ProductionVariants"][0]
    live = next(
        (
            v
            for v in endpoint.get("ProductionVariants", [])
            if v["VariantName"] == variant["VariantName"]
        ),
        {},
    )
    vpc = model.get("VpcConfig") or {}
    capture = config.get("DataCaptureConfig")
    if capture:
        capture = {k: v for k, v in capture.items() if k != "EnableIntraNodeCapture"}
    count = live.get("CurrentInstanceCount") or variant.get("InitialInstanceCount") or 1
    return Target(
        endpoint=endpoint["EndpointName"],
        variant=variant["VariantName"],
        instance_type=variant["InstanceType"],
        instance_count=int(count),
        role_arn=model["ExecutionRoleArn"],
        subnets=tuple(vpc.get("Subnets", [])),
        security_groups=tuple(vpc.get("SecurityGroupIds", [])),
        network_isolation=bool(model.get("EnableNetworkIsolation", False)),
        volume_kms_key_arn=config.get("KmsKeyId"),
        data_capture=capture or None,
        alarms=tuple(alarms),
    )


def resource_name(endpoint: str, version: int, stamp: str) -> str:
    """`<endpoint>-v<N>-<stamp>`, cut to SageMaker's 63 characters from the endpoint's end."""
    suffix = f"-v{version}-{stamp}"
    base = _NAME_CHARS.sub("-", endpoint)[: MAX_NAME - len(suffix)].rstrip("-")
    return base + suffix


def tag_list(tags: Mapping[str, str], **extra: str) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in {**tags, **extra}.items()]


def container(version: ModelVersion, image: str | None = None) -> dict[str, Any]:
    """The model package as registered and approved; or its artifact in another image."""
    if image is None:
        if not version.arn:
            raise ValueError(f"{version.group} v{version.version} has no model package ARN")
        return {"ModelPackageName": version.arn}
    return {"Image": image, "ModelDataUrl": version.model_uri, "Mode": "SingleModel"}


def create_model_request(
    target: Target, name: str, primary: Mapping[str, Any], version: ModelVersion
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "ModelName": name,
        "PrimaryContainer": dict(primary),
        "ExecutionRoleArn": target.role_arn,
        "EnableNetworkIsolation": target.network_isolation,
        "Tags": tag_list(
            target.tags,
            **{"mlinfra:model-group": version.group, "mlinfra:model-version": str(version.version)},
        ),
    }
    if target.subnets:
        request["VpcConfig"] = {
            "Subnets": list(target.subnets),
            "SecurityGroupIds": list(target.security_groups),
        }
    return request


def endpoint_config_request(target: Target, name: str, model_name: str) -> dict[str, Any]:
    request: dict[str, Any] = {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {
                "VariantName": target.variant,
                "ModelName": model_name,
                "InstanceType": target.instance_type,
                "InitialInstanceCount": target.instance_count,
            }
        ],
        "Tags": tag_list(target.tags),
    }
    if target.volume_kms_key_arn:
        request["KmsKeyId"] = target.volume_kms_key_arn
    if target.data_capture:
        request["DataCaptureConfig"] = dict(target.data_capture)
    return request


def update_endpoint_request(
    target: Target, config_name: str, bake_s: int = BAKE_S
) -> dict[str, Any]:
    """Blue/green, all at once, baking `bake_s` under the alarms, rolled back on any of them."""
    return {
        "EndpointName": target.endpoint,
        "EndpointConfigName": config_name,
        # Keep the live instance count (autoscaling's), not the config's initial count.
        "RetainAllVariantProperties": True,
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {
                    "Type": "ALL_AT_ONCE",
                    "WaitIntervalInSeconds": bake_s,
                },
                "TerminationWaitInSeconds": TERMINATION_WAIT_S,
                "MaximumExecutionTimeoutInSeconds": MAX_EXECUTION_S,
            },
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in target.alarms]},
        },
    }


def create_endpoint_request(target: Target, config_name: str) -> dict[str, Any]:
    return {
        "EndpointName": target.endpoint,
        "EndpointConfigName": config_name,
        "Tags": tag_list(target.tags),
    }


def scalable_target_request(target: Target) -> dict[str, Any]:
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": target.scaling_resource_id,
        "ScalableDimension": SCALABLE_DIMENSION,
        "MinCapacity": target.min_instances,
        "MaxCapacity": target.max_instances,
    }


def scaling_policy_request(target: Target) -> dict[str, Any]:
    if target.target_invocations is None or target.policy_name is None:
        raise ValueError(f"endpoint {target.endpoint}: no scaling policy in the descriptor")
    return {
        "PolicyName": target.policy_name,
        "ServiceNamespace": "sagemaker",
        "ResourceId": target.scaling_resource_id,
        "ScalableDimension": SCALABLE_DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(target.target_invocations),
            "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
            "ScaleInCooldown": target.scale_in_cooldown_s,
            "ScaleOutCooldown": target.scale_out_cooldown_s,
        },
    }


def transform_job_request(
    *,
    name: str,
    model_name: str,
    input_uri: str,
    output_uri: str,
    instance_type: str,
    instance_count: int,
    kms_key_arn: str | None,
    content_type: str = "text/csv",
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Batch Transform job over every object under `input_uri`, one record per line.

    Concurrency, batch strategy and payload size are left out: SageMaker asks the serving
    container's `GET /execution-parameters` for them.
    """
    request: dict[str, Any] = {
        "TransformJobName": name,
        "ModelName": model_name,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": content_type,
            "SplitType": "Line",
            "CompressionType": "None",
        },
        "TransformOutput": {
            "S3OutputPath": output_uri,
            "Accept": "application/json",
            "AssembleWith": "Line",
        },
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
        "Tags": tag_list(tags or {}),
    }
    if kms_key_arn:
        request["TransformOutput"]["KmsKeyId"] = kms_key_arn
        request["TransformResources"]["VolumeKmsKeyId"] = kms_key_arn
    return request
