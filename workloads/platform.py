"""The platform descriptor: the one document workloads read to find the platform.

`pulumi up` exports it as the `platform` stack output; the local environment writes the
same document to `<state>/<stack>/platform.json`. Workloads pick their backends from it
(`backend: aws` or `backend: local`) and never from ad-hoc flags.

Locations are URIs: `s3://bucket/prefix` on AWS, `file:///abs/path` locally.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from workloads.storage import atomic_write

DESCRIPTOR_ENV = "MLINFRA_PLATFORM"
T = TypeVar("T")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Buckets(_Doc):
    raw: str
    features: str
    artifacts: str
    logs: str


class FeatureGroupRef(_Doc):
    name: str  # physical name (SageMaker feature group name, or local table name)
    record_identifier: str
    event_time: str
    features: dict[str, Literal["string", "integral", "fractional"]]
    online: bool
    offline: bool
    offline_uri: str | None  # where the offline store's files live


class FeatureStore(_Doc):
    database: str | None  # Glue database of the offline store (None locally)
    workgroup: str | None = None  # Athena workgroup training sets are built in (None locally)
    groups: dict[str, FeatureGroupRef]  # keyed by the spec's feature group name


class ApprovalGate(_Doc):
    metric: str
    threshold: float
    mode: Literal["max", "min"]  # max: metric must be >= threshold; min: <= threshold


class ModelGroupRef(_Doc):
    name: str  # physical model package group name
    gate: ApprovalGate | None


class Registry(_Doc):
    model_groups: dict[str, ModelGroupRef]  # keyed by the spec's model group name
    repositories: dict[str, str]  # "train" / "serve" -> image repository URL


class ScalingRef(_Doc):
    """An endpoint's autoscaling bounds (and, on SageMaker, its target-tracking policy)."""

    min_instances: int
    max_instances: int
    target_invocations_per_instance: int | None = None  # SageMaker only
    policy_name: str | None = None  # SageMaker: the Application Auto Scaling policy's name
    scale_in_cooldown_s: int | None = None
    scale_out_cooldown_s: int | None = None


class DataCaptureRef(_Doc):
    # s3://<logs>/data-capture: SageMaker's DestinationS3Uri; it writes the files under
    # <destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/ (workloads.monitoring.layout)
    destination: str
    sampling_percent: int
    kms_key_arn: str
    json_content_types: list[str]
    csv_content_types: list[str]


class SageMakerEndpointRef(_Doc):
    """What creating or updating the endpoint needs (`mlinfra deploy` for an unpinned one)."""

    role_arn: str  # the execution role of the Model
    variant: str
    instance_type: str
    image: str  # <serve repository>:<imageTag>, for a Model built from an artifact
    subnets: list[str]
    security_groups: list[str]
    network_isolation: bool
    volume_kms_key_arn: str | None  # EndpointConfig KmsKeyId; None: local NVMe, none allowed
    data_capture: DataCaptureRef | None
    scaling_resource_id: str  # endpoint/<name>/variant/<variant>
    scalable_dimension: str
    scaling_metric: str  # predefined metric of the target-tracking policy
    alarms: list[str]  # CloudWatch alarms the stack keeps on the endpoint
    alarm_topic_arn: str
    tags: dict[str, str]


class KubernetesEndpointRef(_Doc):
    namespace: str
    deployment: str
    service: str
    autoscaler: str  # the HorizontalPodAutoscaler
    # The pod-template annotation holding the served model package ARN; setting it rolls
    # the pods, whose init container fetches that package's artifact.
    model_annotation: str


class EndpointRef(_Doc):
    name: str  # physical endpoint name
    kind: Literal["sagemaker", "kubernetes", "local"]
    model_group: str  # the spec's model group name
    url: str | None  # invocation base URL where one exists (kubernetes service, local process)
    model_version: int | None = None  # the version the stack pins, if any
    # Who chooses the served version: the stack config (pinned; `mlinfra deploy` must refuse
    # and point at the config) or `mlinfra deploy` (unpinned, non-prod).
    version_owner: Literal["stack", "deploy"] = "deploy"
    # Who creates the serving resources: "deploy" for an unpinned SageMaker endpoint (the
    # first `mlinfra deploy` creates the Model, EndpointConfig, Endpoint, scaling target
    # and policy); "stack" otherwise.
    created_by: Literal["stack", "deploy"] = "stack"
    waiting_for: str | None = None  # pinned, not created yet: what the stack waits for
    scaling: ScalingRef | None = None
    sagemaker: SageMakerEndpointRef | None = None
    kubernetes: KubernetesEndpointRef | None = None


class NodePoolRef(_Doc):
    name: str
    node_group: str  # physical node group name ("local" on one machine)
    instance_types: list[str]
    gpu: str | None  # GPU model, e.g. "A10G"; None for CPU pools
    gpus_per_node: int


class Cluster(_Doc):
    name: str
    namespace: str
    service_account: str
    node_pools: dict[str, NodePoolRef]
    # How a job client reaches the API (tokens from `aws eks get-token`); None locally.
    endpoint: str | None = None
    certificate_authority: str | None = None  # base64 PEM, as EKS reports it


class Training(_Doc):
    """What a SageMaker training job of the team runs with (exported by the components)."""

    role_arn: str  # the SageMaker training execution role (not the endpoints' role)
    subnet_ids: list[str]  # private subnets
    security_group_ids: list[str]
    kms_key_arn: str  # volume and output encryption: the team key


class LocalState(_Doc):
    root: str  # the stack's state folder
    online_store: str  # embedded database file of the online feature store
    registry: str  # folder of the local model registry


class PlatformDescriptor(_Doc):
    version: Literal[1] = 1
    backend: Literal["aws", "local"]
    stack: str
    team: str
    environment: str
    region: str
    buckets: Buckets
    feature_store: FeatureStore
    registry: Registry
    endpoints: dict[str, EndpointRef]  # keyed by the spec's endpoint name
    cluster: Cluster | None
    training: Training | None = None  # None locally: jobs run as local processes
    local: LocalState | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def write(self, path: str | Path) -> None:
        """Write atomically, so a reader never sees half a descriptor."""
        atomic_write(path, self.to_json())


class NotDeclaredError(KeyError):
    """A name the workload asked for that the platform does not declare."""

    kind = "name"

    def __init__(self, name: str, declared: list[str]):
        self.name = name
        self.declared = declared
        super().__init__(name)

    @classmethod
    def lookup(cls, declared: Mapping[str, T], name: str) -> T:
        """`declared[name]`, or this error naming what is declared."""
        try:
            return declared[name]
        except KeyError:
            raise cls(name, sorted(declared)) from None

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.name!r} is not declared in the platform; declared: "
            f"{', '.join(self.declared) or 'none'}"
        )


def first_problem(exc: Exception) -> str:
    """One line for a document that does not validate: the first field pydantic names and
    what is wrong with it (its own text spans lines and links its docs)."""
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(x) for x in error["loc"]) or "document"
        return f"{where}: {error['msg']}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load_descriptor(source: str | Path | None = None) -> PlatformDescriptor:
    """Load the descriptor from a path, or from `$MLINFRA_PLATFORM` (a path or inline JSON).

    Inline JSON is how a SageMaker job or a Kubernetes pod gets it: `pulumi stack output
    platform --json` is passed through the environment.
    """
    if source is None:
        source = os.environ.get(DESCRIPTOR_ENV)
        if not source:
            raise FileNotFoundError(
                f"no platform descriptor: pass a path or set {DESCRIPTOR_ENV} "
                "(a path to platform.json, or the JSON itself)"
            )
    text = str(source)
    if text.lstrip().startswith("{"):
        return PlatformDescriptor.model_validate(json.loads(text))
    return PlatformDescriptor.model_validate_json(Path(text).read_text())
