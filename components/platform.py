"""The whole platform of one team environment, and the descriptor workloads read.

`build_platform(spec, stack)` builds every component in dependency order (network and
data lake first; the feature store and registry on the lake's key and buckets; the
cluster, whose IRSA role reaches them; endpoints on the cluster and the registry; the
budget) and returns the platform descriptor as a dict of Outputs shaped exactly like
`workloads.platform.PlatformDescriptor`. The program exports it as the `platform` output.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env

from components.budget import Budget, BudgetArgs
from components.cluster import SYSTEM_POOL, GpuCluster, GpuClusterArgs
from components.endpoints import Endpoints, EndpointsArgs
from components.feature_store import FeatureStore, FeatureStoreArgs
from components.network import Network, NetworkArgs
from components.readiness import AccountState, current, decide
from components.registry import ModelRegistry, ModelRegistryArgs
from components.spec import PlatformSpec, stack_file
from components.storage import DataLake, DataLakeArgs
from components.training import TrainingAccess, TrainingAccessArgs


def stack_config() -> dict[str, Any]:
    """Every config value of the running stack, keyed `namespace:key` as in the stack file.

    The Pulumi CLI hands the program its config through the environment; under mocks it
    is set in-process. Reading all of it (not key by key) lets the spec reject unknown keys.
    """
    return {**get_config_env(), **CONFIG.get()}


def config_source(stack: str) -> str:
    """The file a stack's config comes from, for error messages."""
    return str(stack_file(stack))


def build_platform(
    spec: PlatformSpec, stack: str, account: AccountState | None = None
) -> dict[str, Any]:
    """Build every component for `spec`; return the platform descriptor (of Outputs).

    `account` answers whether pinned model versions and images exist yet (see
    `components.readiness`); by default the account Pulumi deploys to, through boto3, or
    the fake the mock runtime installs.
    """
    if account is None:
        account = current(spec.region, pulumi.Config("aws").get("profile"))
    # Before anything is registered: a pinned version that must not be served fails here.
    readiness = decide(spec, account)
    network = Network("network", NetworkArgs(spec))
    lake = DataLake("datalake", DataLakeArgs(spec))
    features = FeatureStore(
        "featurestore",
        FeatureStoreArgs(
            spec,
            features_bucket=lake.bucket_names["features"],
            kms_key_arn=lake.kms_key_arn,
            artifacts_bucket=lake.bucket_names["artifacts"],
        ),
    )
    registry = ModelRegistry("registry", ModelRegistryArgs(spec, kms_key_arn=lake.kms_key_arn))
    cluster = GpuCluster(
        "cluster",
        GpuClusterArgs(
            spec,
            network=network,
            data_lake=lake,
            feature_group_arns=list(features.group_arns.values()),
            model_group_arns=list(registry.group_arns.values()),
            training_set_statements=features.training_set_statements,
        ),
    )
    endpoints = Endpoints(
        "endpoints",
        EndpointsArgs(
            spec,
            serve_repository_url=registry.repository_urls["serve"],
            artifacts_bucket=lake.bucket_names["artifacts"],
            logs_bucket=lake.bucket_names["logs"],
            kms_key_arn=lake.kms_key_arn,
            subnet_ids=network.private_subnet_ids,
            security_group_id=network.sagemaker_security_group_id,
            model_group_names=dict(registry.group_names),
            readiness=readiness,
            k8s_provider=cluster.k8s_provider,
            namespace=cluster.namespace,
            service_account=cluster.service_account,
        ),
    )
    training = TrainingAccess(
        "training",
        TrainingAccessArgs(
            spec,
            data_lake=lake,
            vpc_id=network.vpc_id,
            subnet_ids=network.private_subnet_ids,
            train_repository_arn=registry.repository_arns["train"],
            model_group_arns=list(registry.group_arns.values()),
        ),
    )
    Budget("budget", BudgetArgs(spec))

    return {
        "version": 1,
        "backend": "aws",
        "stack": stack,
        "team": spec.team,
        "environment": spec.environment,
        "region": spec.region,
        "buckets": {
            purpose: pulumi.Output.concat("s3://", name)
            for purpose, name in lake.bucket_names.items()
        },
        "feature_store": {
            "database": features.database_name,
            "workgroup": features.workgroup_name,
            "groups": {
                group.name: {
                    "name": features.group_names[group.name],
                    "record_identifier": group.record_identifier,
                    "event_time": group.event_time,
                    "features": group.feature_types,
                    "online": group.online,
                    "offline": group.offline,
                    "offline_uri": features.offline_uris.get(group.name),
                }
                for group in spec.feature_groups
            },
        },
        "registry": {
            "model_groups": {
                group.name: {
                    "name": registry.group_names[group.name],
                    "gate": group.approval_gate.model_dump() if group.approval_gate else None,
                }
                for group in spec.model_registry.model_groups
            },
            "repositories": dict(registry.repository_urls),
        },
        "endpoints": {ep.name: endpoints.refs[ep.name] for ep in spec.endpoints},
        "cluster": {
            "name": cluster.cluster_name,
            "namespace": cluster.namespace,
            "service_account": cluster.service_account,
            "node_pools": _node_pools(spec, cluster),
            "endpoint": cluster.endpoint,
            "certificate_authority": cluster.certificate_authority,
        },
        "training": {
            "role_arn": training.role_arn,
            "subnet_ids": training.subnet_ids,
            "security_group_ids": [training.security_group_id],
            "kms_key_arn": lake.kms_key_arn,
        },
        "local": None,
    }


def _node_pools(spec: PlatformSpec, cluster: GpuCluster) -> dict[str, Any]:
    pools: dict[str, Any] = {
        SYSTEM_POOL: {
            "name": SYSTEM_POOL,
            "node_group": cluster.node_group_names[SYSTEM_POOL],
            "instance_types": [spec.cluster.system_pool.instance_type],
            "gpu": None,
            "gpus_per_node": 0,
        }
    }
    for pool in spec.cluster.gpu_pools:
        pools[pool.name] = {
            "name": pool.name,
            "node_group": cluster.node_group_names[pool.name],
            "instance_types": list(pool.instance_types),
            "gpu": pool.gpu,
            "gpus_per_node": pool.gpus_per_node,
        }
    return pools
