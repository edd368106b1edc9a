"""What `mlinfra deploy` created outside the stack, removed before `pulumi destroy`.

An unpinned SageMaker endpoint is never a Pulumi resource: the first `mlinfra deploy`
creates its Model, EndpointConfig, Endpoint and scaling target and policy (see
`components/endpoints.py`). `pulumi destroy` therefore does not know them: it would leave
the endpoint running, and fail to delete the security group and subnets its network
interfaces sit in. The destroy workflows run this first:

    python -m components.deployed --stack review-pr-12

For each unpinned SageMaker endpoint of the stack's config it deletes the scaling policies
and target, the endpoint (and waits until it is gone), then the endpoint configuration it
used and that configuration's models. What is already gone is skipped, so it can be rerun.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.endpoints import SCALABLE_DIMENSION, scaling_resource_id
from components.spec import PlatformSpec, load_stack_file


def deploy_created_endpoints(spec: PlatformSpec) -> list[str]:
    """Physical names of the endpoints the first `mlinfra deploy` creates."""
    return [
        f"{spec.prefix}-{ep.name}"
        for ep in spec.endpoints
        if ep.kind == "sagemaker" and ep.model_version is None
    ]


def _gone(exc: Any) -> bool:
    error = exc.response.get("Error", {})
    message = str(error.get("Message", "")).lower()
    return error.get("Code") == "ObjectNotFoundException" or (
        error.get("Code") == "ValidationException"
        and any(
            m in message for m in ("could not find", "does not exist", "not found", "no scalable")
        )
    )


def remove_deployed(
    spec: PlatformSpec, session: Any = None, say: Callable[[str], None] = print
) -> list[str]:
    """Delete what deploy created for `spec`'s endpoints; returns the endpoints deleted."""
    import boto3
    from botocore.exceptions import ClientError

    session = session or boto3.Session(region_name=spec.region)
    sagemaker = session.client("sagemaker", region_name=spec.region)
    scaling = session.client("application-autoscaling", region_name=spec.region)

    def quietly(call: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return call(**kwargs)
        except ClientError as exc:
            if _gone(exc):
                return None
            raise

    deleted = []
    for name in deploy_created_endpoints(spec):
        resource_id = scaling_resource_id(name)
        found = scaling.describe_scaling_policies(
            ServiceNamespace="sagemaker", ResourceId=resource_id
        )
        for policy in found.get("ScalingPolicies", []):
            quietly(
                scaling.delete_scaling_policy,
                PolicyName=policy["PolicyName"],
                ServiceNamespace="sagemaker",
                ResourceId=resource_id,
                ScalableDimension=policy["ScalableDimension"],
            )
        quietly(
            scaling.deregister_scalable_target,
            ServiceNamespace="sagemaker",
            ResourceId=resource_id,
            ScalableDimension=SCALABLE_DIMENSION,
        )
        endpoint = quietly(sagemaker.describe_endpoint, EndpointName=name)
        if endpoint is None:
            say(f"{name}: not deployed, nothing to remove")
            continue
        config_name = endpoint["EndpointConfigName"]
        config = quietly(sagemaker.describe_endpoint_config, EndpointConfigName=config_name)
        say(f"{name}: deleting the endpoint (config {config_name})")
        sagemaker.delete_endpoint(EndpointName=name)
        sagemaker.get_waiter("endpoint_deleted").wait(EndpointName=name)
        if config is not None:
            quietly(sagemaker.delete_endpoint_config, EndpointConfigName=config_name)
            for variant in config.get("ProductionVariants", []):
                quietly(sagemaker.delete_model, ModelName=variant["ModelName"])
        deleted.append(name)
    return deleted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.deployed",
        description="Delete the SageMaker endpoints `mlinfra deploy` created for a stack "
        "(run before `pulumi destroy`).",
    )
    parser.add_argument("--stack", required=True, help="stacks/Pulumi.<stack>.yaml")
    parser.add_argument("--stacks-dir", default="stacks")
    args = parser.parse_args(argv)
    path = Path(args.stacks_dir) / f"Pulumi.{args.stack}.yaml"
    if not path.is_file():
        print(f"error: no stack config {path}", file=sys.stderr)
        return 2
    spec = load_stack_file(path)
    if spec.is_prod:
        print(f"error: {args.stack} is prod: its endpoints are the stack's", file=sys.stderr)
        return 2
    remove_deployed(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
