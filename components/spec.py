"""The typed, validated spec of one team environment.

A stack config (`stacks/Pulumi.<stack>.yaml`) is parsed into one `PlatformSpec`. The AWS
backend (the Pulumi program) and the local backend both read only this spec. This module
must import without Pulumi: the local environment uses it too.

Config keys are camelCase, as Pulumi configs usually are: `mlinfra:costCenter`,
`mlinfra:cluster: {gpuPools: [...]}`. The region is Pulumi's own `aws:region`.
A bad spec raises `SpecError`, one message that names the file, every bad field path
and what is allowed, before any resource is registered.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel, to_snake

from components.admission import (
    FETCH_MODEL_RESOURCES,
    GPU_RESOURCE,
    admit,
    over_quota,
    quantity,
)
from components.gpu import allowed_gpu_families, gpu_instance
from workloads.yaml_file import YamlFileError, read_yaml

NAMESPACE = "mlinfra"

# --- names AWS accepts ---------------------------------------------------------------------

# Team and environment end up in bucket, IAM, EKS and SageMaker names: keep them DNS-like.
_TEAM_RE = re.compile(r"^[a-z][a-z0-9-]{0,14}[a-z0-9]$")
_ENV_RE = re.compile(r"^(dev|staging|prod|pr-[0-9]{1,6})$")
# SageMaker resource names (feature groups, model package groups, endpoints):
# alphanumerics and hyphens, at most 63 characters with the "<team>-<env>-" prefix.
_SAGEMAKER_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
# Feature names: alphanumerics, hyphens and underscores (SageMaker FeatureName).
_FEATURE_NAME_RE = re.compile(r"^[a-zA-Z0-9]([-_]*[a-zA-Z0-9]){0,63}$")
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_COST_CENTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_ROLE_ARN_RE = re.compile(r"^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")
_RUNNER_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# The cluster-autoscaler release for each Kubernetes minor version: its minor must match
# the control plane's. A version missing here has no autoscaler the platform has vetted.
# The newest patch of each minor promoted to registry.k8s.io (kubernetes/k8s.io #8815 and
# #9676, July 2026).
CLUSTER_AUTOSCALER_TAGS = {
    "1.32": "v1.32.5",
    "1.33": "v1.33.5",
    "1.34": "v1.34.4",
    "1.35": "v1.35.1",
    "1.36": "v1.36.0",
}

# Image tags CI builds push (`sha-<commit>`, `pr-<n>-...`, `dev-...`): the ECR lifecycle
# keeps only the newest `keepImages` of them. Every other tag is a release tag, never
# expired, so the image a pinned or deployed endpoint runs is always there to pull.
BUILD_TAG_PATTERNS = ("sha-*", "pr-*", "dev-*")
_SUBNET_RE = re.compile(r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$")
_VPC_RE = re.compile(r"^vpc-([0-9a-f]{8}|[0-9a-f]{17})$")
# A Kubernetes label: optional DNS-subdomain prefix and "/", then a name of at most 63.
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

# Bounds: what AWS or Kubernetes accept, or, where the API takes any int32, a century of
# days or a sane count, so that a typo of a few zeros is an error and not a bill.
MAX_DAYS = 36500
# EKS service quota: nodes per managed node group.
MAX_NODES_PER_GROUP = 450
MAX_INSTANCES = 1000
# The EKS versions a new cluster can be created with (standard or extended support, late
# 2026; the EKS version calendar). Older ones are refused by CreateCluster.
EKS_VERSIONS = ("1.32", "1.33", "1.34", "1.35", "1.36")
# Node label prefixes the kubelet may not set (NodeRestriction) or the platform owns.
RESERVED_LABEL_PREFIXES = ("kubernetes.io", "k8s.io", "mlinfra.io", "nvidia.com")


def _matches(pattern: re.Pattern[str], allowed: str):
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not allowed: {allowed}")
        return value

    return AfterValidator(check)


# Bucket names (`<team>-<env>-raw-<account>`) must not start with these (S3 user guide,
# "General purpose bucket naming rules").
S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")


def _bucket_prefix(team: str) -> str:
    reserved = [p for p in S3_RESERVED_PREFIXES if team.startswith(p)]
    if reserved:
        raise ValueError(
            f"{team!r} is not allowed: bucket names start with the team and S3 reserves the "
            f"prefixes {', '.join(S3_RESERVED_PREFIXES)}"
        )
    return team


TeamName = Annotated[
    str,
    _matches(_TEAM_RE, "2-16 lowercase letters, digits or hyphens, starting with a letter"),
    AfterValidator(_bucket_prefix),
]
EnvironmentName = Annotated[str, _matches(_ENV_RE, "one of dev, staging, prod, or pr-<number>")]
ResourceName = Annotated[
    str,
    _matches(_SAGEMAKER_NAME_RE, "letters, digits and single hyphens, no leading/trailing hyphen"),
]
FeatureName = Annotated[
    str, _matches(_FEATURE_NAME_RE, "letters, digits, '-' and '_', at most 64 characters")
]
K8sName = Annotated[
    str, _matches(_K8S_NAME_RE, "lowercase letters, digits and hyphens (a Kubernetes name)")
]
Region = Annotated[str, _matches(_REGION_RE, "an AWS region such as us-east-1")]
Email = Annotated[str, _matches(_EMAIL_RE, "an e-mail address")]


def _bounded_quantity(value: str) -> str:
    quantity(value)  # within Kubernetes' 2^63-1
    return value


Quantity = Annotated[
    str,
    _matches(_QUANTITY_RE, "a Kubernetes quantity such as 4, 500m or 16Gi"),
    AfterValidator(_bounded_quantity),
]
RoleArn = Annotated[
    str, _matches(_ROLE_ARN_RE, "an IAM role ARN such as arn:aws:iam::123456789012:role/deploy")
]
CostCenter = Annotated[
    str, _matches(_COST_CENTER_RE, "1-32 letters, digits, '.', '_' or '-' (a cost-allocation tag)")
]
SubnetId = Annotated[str, _matches(_SUBNET_RE, "a subnet ID such as subnet-0aa11bb22cc33dd44")]
VpcId = Annotated[str, _matches(_VPC_RE, "a VPC ID such as vpc-0aa11bb22cc33dd44")]
Days = Annotated[int, Field(ge=1, le=MAX_DAYS)]


def _public_cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IPv4 or IPv6 CIDR block such as 203.0.113.0/24"
        ) from None
    if net.prefixlen == 0:
        raise ValueError(f"{value!r} opens the API to the internet")
    return value


Cidr = Annotated[str, AfterValidator(_public_cidr)]


def _label_problems(key: str, value: str) -> list[str]:
    """Why EKS or Kubernetes would refuse a node label (EKS caps keys at 63 characters)."""
    problems = []
    prefix, _, name = key.rpartition("/")
    if len(key) > 63 or not _LABEL_NAME_RE.fullmatch(name):
        problems.append(
            f"label key {key!r}: at most 63 characters, a name of letters, digits, '-', '_' "
            "or '.' after an optional DNS prefix and '/'"
        )
    elif prefix and not _LABEL_PREFIX_RE.fullmatch(prefix):
        problems.append(f"label key {key!r}: the prefix must be a lowercase DNS name")
    elif prefix and any(prefix == p or prefix.endswith("." + p) for p in RESERVED_LABEL_PREFIXES):
        problems.append(
            f"label key {key!r}: prefixes {', '.join(RESERVED_LABEL_PREFIXES)} are reserved "
            "for Kubernetes and the platform"
        )
    # EKS takes label values of 1-63 characters (CreateNodegroup labels), Kubernetes 0-63.
    if not isinstance(value, str) or not value or not _LABEL_VALUE_RE.fullmatch(value):
        problems.append(
            f"label {key!r}: value {value!r} must be 1 to 63 letters, digits, '-', '_' or "
            "'.', starting and ending with a letter or digit"
        )
    return problems


class _Spec(BaseModel):
    """Strict: unknown keys are errors (a typo must not silently become a default)."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
    )


# --- network -------------------------------------------------------------------------------


class NetworkSpec(_Spec):
    """A new VPC across `availabilityZones` zones, or an existing one given by `vpcId`."""

    vpc_id: VpcId | None = None
    private_subnet_ids: list[SubnetId] = Field(default_factory=list, max_length=16)
    cidr: str = "10.0.0.0/16"
    availability_zones: int = Field(default=2, ge=2, le=6)
    # "single": one NAT gateway (cheap, dev); "perAz": one per zone (no cross-AZ outage).
    nat_gateways: Literal["single", "perAz"] = "single"

    @model_validator(mode="after")
    def _check(self) -> NetworkSpec:
        try:
            net = ipaddress.ip_network(self.cidr, strict=False)
        except ValueError:
            net = None
        if net is None or net.version != 4 or not 16 <= net.prefixlen <= 20:
            raise ValueError(f"cidr: {self.cidr!r} must be an IPv4 block from /16 to /20")
        if self.vpc_id is not None and len(self.private_subnet_ids) < 2:
            raise ValueError(
                "privateSubnetIds: an existing VPC needs at least two private subnets "
                "in different availability zones"
            )
        for i, subnet in enumerate(self.private_subnet_ids):
            if subnet in self.private_subnet_ids[:i]:
                raise ValueError(f"privateSubnetIds[{i}]: {subnet!r} is listed twice")
        return self


# --- storage -------------------------------------------------------------------------------

BUCKET_PURPOSES = ("raw", "features", "artifacts", "logs")


class StorageSpec(_Spec):
    # Protected buckets survive `pulumi destroy`. Default: protected in prod only.
    protect: bool | None = None
    # Days before objects move to Infrequent Access, and before old versions expire.
    infrequent_access_after_days: int = Field(default=30, ge=30, le=MAX_DAYS)
    noncurrent_version_expiry_days: Days = 90
    log_retention_days: Days = 365


# --- cluster and GPU node pools ------------------------------------------------------------


class SystemPoolSpec(_Spec):
    instance_type: str = Field(default="m6i.large", pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
    min_size: int = Field(default=2, ge=1, le=MAX_NODES_PER_GROUP)
    max_size: int = Field(default=4, ge=1, le=MAX_NODES_PER_GROUP)

    @model_validator(mode="after")
    def _sizes(self) -> SystemPoolSpec:
        if self.min_size > self.max_size:
            raise ValueError(f"minSize: {self.min_size} must be <= maxSize ({self.max_size})")
        return self


class GpuPoolSpec(_Spec):
    name: K8sName
    instance_types: list[str] = Field(min_length=1, max_length=20)
    capacity: Literal["onDemand", "spot"] = "onDemand"
    ami_type: Literal["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"] = "AL2023_x86_64_NVIDIA"
    # 0: scale from zero, pay nothing while idle
    min_size: int = Field(default=0, ge=0, le=MAX_NODES_PER_GROUP)
    max_size: int = Field(default=2, ge=1, le=MAX_NODES_PER_GROUP)
    desired_size: int | None = Field(default=None, ge=0, le=MAX_NODES_PER_GROUP)  # minSize
    disk_size_gib: int = Field(default=200, ge=50, le=16384)
    labels: dict[str, str] = Field(default_factory=dict, max_length=50)

    @model_validator(mode="after")
    def _check(self) -> GpuPoolSpec:
        errors = []
        for i, itype in enumerate(self.instance_types):
            if gpu_instance(itype) is None:
                errors.append(
                    f"instanceTypes[{i}]: {itype!r} is not a GPU instance type; "
                    f"allowed: {allowed_gpu_families()}"
                )
        if self.min_size > self.max_size:
            errors.append(f"minSize: {self.min_size} must be <= maxSize ({self.max_size})")
        if self.desired_size is not None and not (
            self.min_size <= self.desired_size <= self.max_size
        ):
            errors.append(
                f"desiredSize: {self.desired_size} must be between minSize ({self.min_size}) "
                f"and maxSize ({self.max_size})"
            )
        gpus = {gpu_instance(t).gpu for t in self.instance_types if gpu_instance(t)}
        if len(gpus) > 1:
            errors.append(f"instanceTypes: one GPU model per pool, got {sorted(gpus)}")
        # cluster-autoscaler builds a pool's node template from its first instance type and
        # assumes every node of the group has that shape: mixed sizes break its estimate.
        sizes = sorted({t.partition(".")[2] for t in self.instance_types})
        if len(sizes) > 1:
            errors.append(
                f"instanceTypes: one instance size per pool (the autoscaler sizes a pool by "
                f"its first type), got {', '.join(sizes)}; make a pool per size"
            )
        for i, itype in enumerate(self.instance_types):
            if itype in self.instance_types[:i]:
                errors.append(f"instanceTypes[{i}]: {itype!r} is listed twice")
        for key, value in self.labels.items():
            errors += [f"labels: {p}" for p in _label_problems(key, value)]
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @property
    def desired(self) -> int:
        return self.min_size if self.desired_size is None else self.desired_size

    @property
    def gpu(self) -> str:
        return gpu_instance(self.instance_types[0]).gpu  # type: ignore[union-attr]

    @property
    def gpus_per_node(self) -> int:
        return min(gpu_instance(t).count for t in self.instance_types)  # type: ignore[union-attr]


class NamespaceQuotaSpec(_Spec):
    """The team namespace's ResourceQuota."""

    gpus: int = Field(default=4, ge=0, le=10000)
    cpu: Quantity = "64"
    memory: Quantity = "256Gi"
    pods: int = Field(default=100, ge=1, le=10000)
    # Persistent volume claims: their total size and their number.
    storage: Quantity = "1Ti"
    volume_claims: int = Field(default=20, ge=0, le=10000)

    @property
    def hard(self) -> dict[str, str]:
        """The ResourceQuota's `spec.hard`: compute requests and limits, counts, storage.

        Limits are capped like requests; the platform's pods set limits equal to requests.
        No LoadBalancer or NodePort services: endpoints are ClusterIP, inside the cluster.
        """
        return {
            # Extended resources are quota'd on requests only (requests == limits).
            f"requests.{GPU_RESOURCE}": str(self.gpus),
            "requests.cpu": self.cpu,
            "limits.cpu": self.cpu,
            "requests.memory": self.memory,
            "limits.memory": self.memory,
            "pods": str(self.pods),
            "requests.storage": self.storage,
            "persistentvolumeclaims": str(self.volume_claims),
            "services.loadbalancers": "0",
            "services.nodeports": "0",
        }


class ClusterAccessSpec(_Spec):
    """Who reaches the cluster API, and from where.

    `deployRole` (the role `pulumi up` runs as: CI's AWS_DEPLOY_ROLE_ARN) and `adminRoles`
    (the platform team) get cluster-admin access entries; `previewRole` (CI's read-only
    AWS_PREVIEW_ROLE_ARN, for previews and drift checks) gets a read-only one.
    `apiAccessCidrs` is the deploy runner's network, admitted on 443 to the private API
    (default: the VPC's own CIDR, a runner inside the VPC). `runnerLabel` is the label of
    the self-hosted runner CI runs this stack's Pulumi jobs on.
    """

    deploy_role: RoleArn | None = None
    admin_roles: list[RoleArn] = Field(default_factory=list)
    preview_role: RoleArn | None = None
    api_access_cidrs: list[str] = Field(default_factory=list)
    runner_label: str = "mlinfra-deploy"

    @model_validator(mode="after")
    def _check(self) -> ClusterAccessSpec:
        errors = []
        for i, cidr in enumerate(self.api_access_cidrs):
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                errors.append(f"apiAccessCidrs[{i}]: {cidr!r} is not a CIDR block")
                continue
            if net.prefixlen == 0:
                errors.append(f"apiAccessCidrs[{i}]: {cidr!r} opens the API to the internet")
        if not _RUNNER_LABEL_RE.fullmatch(self.runner_label):
            errors.append(
                f"runnerLabel: {self.runner_label!r} is not a runner label "
                "(letters, digits, '.', '_' or '-', at most 64)"
            )
        if errors:
            raise ValueError("\n".join(errors))
        return self


class ClusterSpec(_Spec):
    kubernetes_version: Literal[EKS_VERSIONS] = "1.33"  # type: ignore[valid-type]
    # The API server is private by default; CI reaches it from inside the VPC.
    public_endpoint: bool = False
    # EKS takes at most 40 CIDR blocks for public access.
    public_access_cidrs: list[Cidr] = Field(default_factory=list, max_length=40)
    system_pool: SystemPoolSpec = Field(default_factory=SystemPoolSpec)
    gpu_pools: list[GpuPoolSpec] = Field(default_factory=list)
    quota: NamespaceQuotaSpec = Field(default_factory=NamespaceQuotaSpec)
    access: ClusterAccessSpec = Field(default_factory=ClusterAccessSpec)

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        if self.kubernetes_version not in CLUSTER_AUTOSCALER_TAGS:
            raise ValueError(
                f"kubernetesVersion: {self.kubernetes_version!r} has no vetted "
                f"cluster-autoscaler; supported: {', '.join(CLUSTER_AUTOSCALER_TAGS)}"
            )
        names = [p.name for p in self.gpu_pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"gpuPools: pool names must be unique, repeated: {dupes}")
        if "system" in names:
            raise ValueError("gpuPools: 'system' is the system pool's name")
        if self.public_endpoint and not self.public_access_cidrs:
            raise ValueError("publicAccessCidrs: a public endpoint needs the CIDRs allowed in")
        return self


# --- feature store -------------------------------------------------------------------------

FeatureType = Literal["string", "integral", "fractional"]

# The longest description each SageMaker API takes (CreateFeatureGroup.Description: 128;
# CreateModelPackageGroup.ModelPackageGroupDescription: 1024, of which the registry appends
# up to 300 characters naming the approval gate).
MAX_DESCRIPTION = {"featureGroup": 128, "modelGroup": 700}
# Columns Feature Store adds to every record; CreateFeatureGroup refuses features so named.
RESERVED_FEATURE_NAMES = ("is_deleted", "write_time", "api_invocation_time")


def _printable(value: str) -> str:
    """SageMaker descriptions take letters, marks, spaces, symbols, digits and punctuation
    ([\\p{L}\\p{M}\\p{Z}\\p{S}\\p{N}\\p{P}]*): no line breaks, tabs or other controls."""
    if not value.isprintable():
        raise ValueError(f"{value!r} is not allowed: one line of printable characters")
    return value


FeatureGroupDescription = Annotated[
    str, Field(max_length=MAX_DESCRIPTION["featureGroup"]), AfterValidator(_printable)
]
ModelGroupDescription = Annotated[
    str, Field(max_length=MAX_DESCRIPTION["modelGroup"]), AfterValidator(_printable)
]


class FeatureSpec(_Spec):
    name: FeatureName
    type: FeatureType


class FeatureGroupSpec(_Spec):
    name: ResourceName
    description: FeatureGroupDescription = ""
    record_identifier: str
    event_time: str
    features: list[FeatureSpec] = Field(min_length=2)
    online: bool = True
    offline: bool = True
    online_ttl_days: Days | None = None

    @model_validator(mode="after")
    def _check(self) -> FeatureGroupSpec:
        types = {f.name: f.type for f in self.features}
        if len(types) != len(self.features):
            raise ValueError("features: feature names must be unique")
        reserved = sorted(set(types) & set(RESERVED_FEATURE_NAMES))
        if reserved:
            raise ValueError(
                f"features: {', '.join(reserved)} is a column Feature Store adds to every "
                f"record; these names are reserved: {', '.join(RESERVED_FEATURE_NAMES)}"
            )
        if self.record_identifier not in types:
            raise ValueError(
                f"recordIdentifier: {self.record_identifier!r} is not among the features "
                f"({', '.join(types)})"
            )
        if types[self.record_identifier] == "fractional":
            raise ValueError("recordIdentifier: must be a string or integral feature")
        if self.event_time not in types:
            raise ValueError(
                f"eventTime: {self.event_time!r} is not among the features ({', '.join(types)})"
            )
        if types[self.event_time] == "integral":
            raise ValueError(
                "eventTime: must be a string (ISO-8601) or fractional (epoch seconds) feature"
            )
        if not (self.online or self.offline):
            raise ValueError("online/offline: a feature group needs at least one store")
        return self

    @property
    def feature_types(self) -> dict[str, str]:
        return {f.name: f.type for f in self.features}


# --- model registry ------------------------------------------------------------------------


class ApprovalGateSpec(_Spec):
    """A model version is approved automatically when its metric passes the threshold."""

    metric: str = Field(min_length=1, max_length=255)
    threshold: float = Field(allow_inf_nan=False)  # NaN never passes: refuse it
    mode: Literal["max", "min"] = "max"


class ModelGroupSpec(_Spec):
    name: ResourceName
    description: ModelGroupDescription = ""
    approval_gate: ApprovalGateSpec | None = None


class RegistrySpec(_Spec):
    model_groups: list[ModelGroupSpec] = Field(default_factory=list)
    # ECR lifecycle: how many build-tagged images (BUILD_TAG_PATTERNS) to keep, and days
    # before untagged images expire. Release tags are never expired.
    keep_images: int = Field(default=30, ge=1, le=1000)
    untagged_image_expiry_days: Days = 7


# --- endpoints -----------------------------------------------------------------------------


class DataCaptureSpec(_Spec):
    enabled: bool = True
    sampling_percent: int = Field(default=20, ge=1, le=100)
    # When the monitor compares the capture with the model's baseline (a cron schedule, UTC;
    # a Kubernetes CronJob on stacks with a cluster): hourly by default.
    monitor_schedule: str = Field(
        default="0 * * * *", pattern=r"^(@(hourly|daily|weekly)|(\S+\s+){4}\S+)$"
    )


class EndpointSpec(_Spec):
    name: ResourceName
    model_group: str
    kind: Literal["sagemaker", "kubernetes"] = "sagemaker"
    image_tag: str = Field(default="0.1.0", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    # A pinned model package version: the stack serves it once it is registered and approved
    # (until then the endpoint waits). Prod requires one: prod serves only what was approved
    # and reviewed in a pull request. Without one (non-prod), `mlinfra deploy` chooses the
    # version and creates (SageMaker) or scales up (Kubernetes) the endpoint.
    model_version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    min_instances: int = Field(default=1, ge=1, le=MAX_INSTANCES)
    max_instances: int = Field(default=2, ge=1, le=MAX_INSTANCES)
    target_invocations_per_instance: int = Field(default=100, ge=1, le=1_000_000)
    # SageMaker
    instance_type: str = Field(default="ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    data_capture: DataCaptureSpec = Field(default_factory=DataCaptureSpec)
    # SageMaker real-time invocations time out after 60 s: a slower alarm never fires.
    latency_alarm_ms: int = Field(default=500, ge=1, le=60_000)
    max_5xx_errors: int = Field(default=5, ge=1, le=1_000_000, alias="max5xxErrors")  # in 5 min
    # Kubernetes
    node_pool: str = "system"
    gpus: int = Field(default=0, ge=0, le=8)
    cpu: Quantity = "1"
    memory: Quantity = "2Gi"

    @property
    def resources(self) -> dict[str, dict[str, str]]:
        """The serving container's resources on Kubernetes.

        Limits equal requests: Guaranteed QoS, steady latency, nothing evicted first.
        """
        limits = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            limits[GPU_RESOURCE] = str(self.gpus)
        return {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits}

    @property
    def pod_resources(self) -> dict[str, list[dict[str, Any]]]:
        """The containers of the endpoint's pod as the quota counts them."""
        return {
            "containers": [{"name": "serve", "resources": self.resources}],
            "initContainers": [{"name": "fetch-model", "resources": FETCH_MODEL_RESOURCES}],
        }

    @model_validator(mode="after")
    def _check(self) -> EndpointSpec:
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"minInstances: {self.min_instances} must be <= maxInstances ({self.max_instances})"
            )
        return self


# --- budget --------------------------------------------------------------------------------


# AWS Budgets accepts at most five notifications per budget.
MAX_BUDGET_NOTIFICATIONS = 5


class BudgetSpec(_Spec):
    # AWS Budgets takes a decimal string: finite, and bounded so that it prints as one.
    monthly_limit_usd: float = Field(gt=0, le=1_000_000_000, allow_inf_nan=False)
    # AWS Budgets: at most 10 e-mail subscribers per notification.
    alert_emails: list[Email] = Field(min_length=1, max_length=10)
    # Notify when actual spend crosses each of these percentages of the limit, and once
    # when the month's forecast crosses the highest (the early warning).
    thresholds_percent: list[int] = Field(default_factory=lambda: [80, 100])

    @model_validator(mode="after")
    def _check(self) -> BudgetSpec:
        if not self.thresholds_percent or any(not 1 <= t <= 1000 for t in self.thresholds_percent):
            raise ValueError("thresholdsPercent: each threshold must be 1-1000")
        distinct = sorted(set(self.thresholds_percent))
        if len(distinct) + 1 > MAX_BUDGET_NOTIFICATIONS:
            raise ValueError(
                f"thresholdsPercent: at most {MAX_BUDGET_NOTIFICATIONS - 1} thresholds (each "
                f"notifies on actual spend, the highest also on the forecast, and AWS Budgets "
                f"allows {MAX_BUDGET_NOTIFICATIONS} notifications); got {distinct}"
            )
        return self

    @property
    def notifications(self) -> list[tuple[str, int]]:
        """(ACTUAL | FORECASTED, percent) for each notification the budget sends."""
        distinct = sorted(set(self.thresholds_percent))
        return [("ACTUAL", t) for t in distinct] + [("FORECASTED", distinct[-1])]


# --- the whole environment -----------------------------------------------------------------


class PlatformSpec(_Spec):
    team: TeamName
    environment: EnvironmentName
    cost_center: CostCenter
    region: Region = "us-east-1"
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    feature_groups: list[FeatureGroupSpec] = Field(default_factory=list)
    model_registry: RegistrySpec = Field(default_factory=RegistrySpec)
    endpoints: list[EndpointSpec] = Field(default_factory=list)
    budget: BudgetSpec

    @property
    def is_prod(self) -> bool:
        return self.environment == "prod"

    @property
    def prefix(self) -> str:
        """Every physical name starts with this."""
        return f"{self.team}-{self.environment}"

    @property
    def protect_data(self) -> bool:
        return self.is_prod if self.storage.protect is None else self.storage.protect

    @property
    def tags(self) -> dict[str, str]:
        """Carried by every resource; `team` is the cost-allocation tag budgets filter on."""
        return {
            "team": self.team,
            "environment": self.environment,
            "cost-center": self.cost_center,
            "managed-by": "mlinfra",
        }

    @property
    def deploy_runner(self) -> list[str]:
        """GitHub Actions `runs-on` of the jobs that reach this stack's cluster API: the
        self-hosted runner in the network `cluster.access.apiAccessCidrs` admits."""
        return ["self-hosted", "linux", self.cluster.access.runner_label]

    def physical(self, name: str) -> str:
        """The physical name of a named part (pool, endpoint, group): `<prefix>-<name>`."""
        return f"{self.prefix}-{name}"

    def model_group(self, name: str) -> ModelGroupSpec:
        return next(g for g in self.model_registry.model_groups if g.name == name)

    def gpu_pool(self, name: str) -> GpuPoolSpec | None:
        return next((p for p in self.cluster.gpu_pools if p.name == name), None)


# --- parsing and errors ---------------------------------------------------------------------


class SpecError(ValueError):
    """A stack config that cannot be deployed: every problem, with its field path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"invalid stack config {source}:"]
        lines += [f"  {path}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))

    @property
    def fields(self) -> list[str]:
        return [path for path, _ in self.problems]


def _config_key(field: str) -> str:
    return "aws:region" if field == "region" else f"{NAMESPACE}:{field}"


_SUBFIELD_RE = re.compile(r"^([a-zA-Z]+(?:\[\d+\])?(?:\.[a-zA-Z]+(?:\[\d+\])?)*): (.*)$", re.S)


def _path(loc: tuple[Any, ...]) -> str:
    """The config path of a pydantic error location.

    ('cluster', 'gpuPools', 0, 'instanceTypes') -> 'mlinfra:cluster.gpuPools[0].instanceTypes'

    A key with a character that does not print (a line break, a control character: an
    unknown key can be anything) is shown quoted as Python writes it,
    `mlinfra:budget['a\\nb']`, so that each problem stays one line that names the field.
    """
    if not loc:
        return f"{NAMESPACE}:"
    first = str(loc[0])
    out = _config_key(first) if first.isprintable() else f"{NAMESPACE}:[{first!r}]"
    for part in loc[1:]:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).isprintable():
            out += f".{part}"
        else:
            out += f"[{str(part)!r}]"
    return out


# --- physical names --------------------------------------------------------------------------

# The longest name each service takes for a name the platform derives from the spec.
NAME_LIMITS: dict[str, tuple[int, str]] = {
    "nodeGroup": (63, "EKS node group names"),
    "launchTemplate": (128, "EC2 launch template names"),
    "featureGroup": (64, "SageMaker feature group names"),
    "modelGroup": (63, "SageMaker model package group names"),
    "endpoint": (63, "SageMaker endpoint names and Kubernetes DNS labels"),
    # A pinned SageMaker endpoint's model and endpoint config are autonamed by Pulumi,
    # `<endpoint>-<7 random characters>` (so a change creates the new one first); SageMaker
    # takes 63 characters (CreateModel.ModelName, CreateEndpointConfig.EndpointConfigName).
    "autonamed": (63, "SageMaker model and endpoint config names"),
    # The controller appends 11 characters to a CronJob's name for its Jobs (63 at most).
    "cronJob": (52, "Kubernetes CronJob names"),
}
# What Pulumi's autonaming appends to a logical name: "-" and 7 random characters.
AUTONAME_SUFFIX = "-" + "x" * 7


def monitor_job_name(spec: PlatformSpec, endpoint: str) -> str:
    """The CronJob that monitors an endpoint's captured traffic."""
    return f"{spec.physical(endpoint)}-monitor"


def derived_names(spec: PlatformSpec) -> list[tuple[tuple[Any, ...], str, str]]:
    """Every physical name made from a name in the spec: (field location, kind, name).

    Fixed names (`<prefix>-eks-cluster`, `<prefix>-raw`) are short by construction: team
    and environment are bounded. Names made from a name the team chose are listed here,
    made with `PlatformSpec.physical` like the components make them.
    """
    out: list[tuple[tuple[Any, ...], str, str]] = []
    for i, pool in enumerate(spec.cluster.gpu_pools):
        loc = ("cluster", "gpuPools", i, "name")
        out += [(loc, "nodeGroup", spec.physical(pool.name))]
        out += [(loc, "launchTemplate", spec.physical(pool.name))]
    for i, group in enumerate(spec.feature_groups):
        out.append((("featureGroups", i, "name"), "featureGroup", spec.physical(group.name)))
    for i, group in enumerate(spec.model_registry.model_groups):
        loc = ("modelRegistry", "modelGroups", i, "name")
        out.append((loc, "modelGroup", spec.physical(group.name)))
    for i, ep in enumerate(spec.endpoints):
        loc = ("endpoints", i, "name")
        out.append((loc, "endpoint", spec.physical(ep.name)))
        if ep.kind == "sagemaker":
            out.append((loc, "autonamed", spec.physical(ep.name) + AUTONAME_SUFFIX))
        if ep.data_capture.enabled:
            out.append((loc, "cronJob", monitor_job_name(spec, ep.name)))
    return out


def _chosen(spec: PlatformSpec, loc: tuple[Any, ...]) -> str:
    """The value at a field location (camelCase keys, as in the stack file)."""
    value: Any = spec
    for part in loc:
        value = value[part] if isinstance(part, int) else getattr(value, to_snake(part))
    return str(value)


def name_rooms(spec: PlatformSpec) -> dict[tuple[Any, ...], tuple[int, str, str]]:
    """Per field a physical name is made from: (its room, the most characters the field may
    have under the tightest limit of the names made from it; that name's kind; the name)."""
    rooms: dict[tuple[Any, ...], tuple[int, str, str]] = {}
    for loc, kind, name in derived_names(spec):
        room = NAME_LIMITS[kind][0] - (len(name) - len(_chosen(spec, loc)))
        if loc not in rooms or room < rooms[loc][0]:
            rooms[loc] = (room, kind, name)
    return rooms


def _name_problems(spec: PlatformSpec) -> list[tuple[str, str]]:
    """One problem per field: the tightest limit among the names made from it."""
    problems = []
    for loc, (room, kind, name) in name_rooms(spec).items():
        limit, who = NAME_LIMITS[kind]
        if len(name) > limit:
            message = f"{name} is longer than {who} may be ({limit}); use at most {room} characters"
            problems.append((_path(loc), message))
    return problems


_QUOTA_FIELD = {"gpus": GPU_RESOURCE, "memory": "memory", "cpu": "cpu"}


def _quota_problems(spec: PlatformSpec) -> list[tuple[str, str]]:
    """Kubernetes endpoints must fit the team quota: each at its maximum, all at their
    minimum plus one rolling-update surge pod each."""
    problems: list[tuple[str, str]] = []
    quota = spec.cluster.quota
    hard = {k: v for k, v in quota.hard.items() if k.split(".")[0] in ("requests", "limits")}
    minimum = None
    pods = 0
    for i, ep in enumerate(spec.endpoints):
        if ep.kind != "kubernetes":
            continue
        one = admit(ep.pod_resources, {}, hard)
        if not one.admitted:
            first = one.problems[0]
            field = next(f for f in ("gpus", "memory", "cpu") if _QUOTA_FIELD[f] in first)
            problems.append(
                (_path(("endpoints", i, field)), f"one pod is over the team quota: {first}")
            )
            continue
        at_max = admit(ep.pod_resources, {}, hard, replicas=ep.max_instances)
        if not at_max.admitted:
            problems.append(
                (
                    _path(("endpoints", i, "maxInstances")),
                    f"{ep.max_instances} pods are over the team quota: {at_max.problems[0]}",
                )
            )
        usage = one.usage.scaled(ep.min_instances + 1)
        minimum = usage if minimum is None else minimum + usage
        pods += ep.max_instances + 1
    if minimum is not None:
        for problem in over_quota(minimum, hard):
            resource = problem.split(":")[0].partition(".")[2]
            field = "gpus" if resource == GPU_RESOURCE else resource
            problems.append(
                (
                    _path(("cluster", "quota", field)),
                    f"the Kubernetes endpoints at their minimum plus one rollout pod each: "
                    f"{problem}",
                )
            )
            break
        if pods > quota.pods:
            problems.append(
                (
                    _path(("cluster", "quota", "pods")),
                    f"the Kubernetes endpoints may run {pods} pods (maxInstances plus one "
                    f"rollout pod each); the quota is {quota.pods}",
                )
            )
    return problems


def _cross_checks(spec: PlatformSpec) -> list[tuple[str, str]]:
    """Checks that span sections; each names the exact field at fault."""
    problems: list[tuple[str, str]] = []

    def unique(items: list[Any], section: tuple[str, ...]) -> None:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name in seen:
                problems.append((_path((*section, i, "name")), f"{item.name!r} is declared twice"))
            seen.add(item.name)

    unique(spec.feature_groups, ("featureGroups",))
    groups = spec.model_registry.model_groups
    unique(groups, ("modelRegistry", "modelGroups"))
    unique(spec.endpoints, ("endpoints",))
    problems += _name_problems(spec)

    group_names = [g.name for g in groups]
    pool_names = ["system"] + [p.name for p in spec.cluster.gpu_pools]
    for i, ep in enumerate(spec.endpoints):
        if ep.model_group not in group_names:
            problems.append(
                (
                    _path(("endpoints", i, "modelGroup")),
                    f"{ep.model_group!r} is not a declared model group; declared: "
                    f"{', '.join(group_names) or 'none (add modelRegistry.modelGroups)'}",
                )
            )
        if ep.kind == "kubernetes":
            if ep.node_pool not in pool_names:
                problems.append(
                    (
                        _path(("endpoints", i, "nodePool")),
                        f"{ep.node_pool!r} is not a node pool; pools: {', '.join(pool_names)}",
                    )
                )
            elif ep.gpus and spec.gpu_pool(ep.node_pool) is None:
                problems.append(
                    (
                        _path(("endpoints", i, "gpus")),
                        f"asks for {ep.gpus} GPU(s) on {ep.node_pool!r}, which has none; "
                        "use a GPU pool",
                    )
                )
            elif ep.gpus and ep.gpus > spec.gpu_pool(ep.node_pool).gpus_per_node:  # type: ignore[union-attr]
                problems.append(
                    (
                        _path(("endpoints", i, "gpus")),
                        f"asks for {ep.gpus} GPU(s); nodes of {ep.node_pool!r} have "
                        f"{spec.gpu_pool(ep.node_pool).gpus_per_node}",  # type: ignore[union-attr]
                    )
                )
        if any(fnmatch.fnmatchcase(ep.image_tag, p) for p in BUILD_TAG_PATTERNS):
            problems.append(
                (
                    _path(("endpoints", i, "imageTag")),
                    f"{ep.image_tag!r} is a build tag ({', '.join(BUILD_TAG_PATTERNS)}) that "
                    "the ECR lifecycle expires; deploy a release tag such as 1.4.0",
                )
            )
        if spec.is_prod and ep.model_version is None:
            problems.append(
                (
                    _path(("endpoints", i, "modelVersion")),
                    "prod endpoints must pin an approved model package version",
                )
            )
        if spec.is_prod and ep.kind == "sagemaker":
            if not ep.data_capture.enabled:
                problems.append(
                    (
                        _path(("endpoints", i, "dataCapture", "enabled")),
                        "prod endpoints must capture data; set it to true",
                    )
                )

    if not problems:
        problems += _quota_problems(spec)

    if spec.is_prod:
        if spec.storage.protect is False:
            problems.append(
                (_path(("storage", "protect")), "prod data buckets are always protected")
            )
        if spec.cluster.public_endpoint:
            problems.append(
                (_path(("cluster", "publicEndpoint")), "prod clusters have a private API only")
            )
        if spec.cluster.access.deploy_role is None:
            problems.append(
                (
                    _path(("cluster", "access", "deployRole")),
                    "prod clusters name the role `pulumi up` runs as (CI's "
                    "AWS_DEPLOY_ROLE_ARN), so it gets cluster access",
                )
            )
    return problems


def parse_spec(values: dict[str, Any], source: str) -> PlatformSpec:
    """Build the spec from config values keyed like a stack file (`mlinfra:team`, `aws:region`).

    Values may be JSON strings, as Pulumi hands structured config to a program.
    Keys of other namespaces (`aws:profile`, `kubernetes:...`) belong to providers and pass.
    """
    fields: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            # YAML makes `yes:`, `1:` and `~:` a bool, an int and None, not a string.
            raise SpecError(
                source,
                [("config", f"key {key!r} is not a string; keys look like {NAMESPACE}:<name>")],
            )
        namespace, _, name = key.partition(":")
        if key == "aws:region":
            name = "region"
        elif namespace != NAMESPACE:
            continue
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SpecError(source, [(key, f"is not valid JSON: {exc}")]) from None
            except RecursionError:
                raise SpecError(source, [(key, "is nested too deeply")]) from None
        fields[name] = value
    try:
        spec = PlatformSpec.model_validate(fields)
    except RecursionError:
        raise SpecError(source, [(f"{NAMESPACE}:", "a value is nested too deeply")]) from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path, msg = _path(err["loc"]), err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = _unknown_key(err["loc"])
            elif err["type"] == "missing":
                msg = "is required"
            elif err["type"] == "string_pattern_mismatch":
                pattern = err.get("ctx", {}).get("pattern", "")
                msg = f"{err['input']!r} is not allowed; it must match {pattern}"
            elif err["type"] == "literal_error":
                msg = f"{err['input']!r} is not allowed; {msg[:1].lower()}{msg[1:]}"
            elif err["type"] == "value_error":
                # Model validators prefix each problem with the field it is about.
                for line in msg.split("\n"):
                    sub = _SUBFIELD_RE.match(line)
                    problems.append((f"{path}.{sub[1]}", sub[2]) if sub else (path, line))
                continue
            problems.append((path, msg))
        raise SpecError(source, problems) from None
    problems = _cross_checks(spec)
    if problems:
        raise SpecError(source, problems)
    return spec


def _allowed_keys() -> str:
    return ", ".join(_config_key(f.alias or n) for n, f in PlatformSpec.model_fields.items())


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec model a config location points into (list indexes step into items)."""
    model: Any = PlatformSpec
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        field = fields.get(str(part)) or model.model_fields.get(str(part))
        if field is None:
            return None
        model = _inner_model(field.annotation)
        if model is None:
            return None
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside `Model`, `Model | None` or `list[Model]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """'unknown key', with the keys allowed at that place and the likeliest one meant."""
    if len(loc) == 1:
        allowed = [
            k.split(":", 1)[1] if k.startswith(NAMESPACE) else k
            for k in _allowed_keys().split(", ")
        ]
        listing = _allowed_keys()
    else:
        model = _model_at(loc[:-1])
        if model is None:
            return "unknown key"
        allowed = [f.alias or n for n, f in model.model_fields.items()]
        listing = ", ".join(allowed)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown key{hint}; allowed: {listing}"


def stack_file(stack: str, stacks_dir: str | Path = "stacks") -> Path:
    return Path(stacks_dir) / f"Pulumi.{stack}.yaml"


def load_stack_file(path: str | Path) -> PlatformSpec:
    """Parse a `Pulumi.<stack>.yaml` file into the spec."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(str(path), [("file", "is a folder, not a stack config file")])
    if not path.is_file():
        raise SpecError(str(path), [("file", "no such stack config")])
    try:
        doc = read_yaml(path, too_deep="nested too deeply to be a stack config") or {}
    except YamlFileError as exc:
        raise SpecError(str(path), [("file", str(exc))]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config", {}), dict):
        raise SpecError(str(path), [("config", "must be a mapping of config keys")])
    return parse_spec(doc.get("config") or {}, str(path))


def load_stack(stack: str, stacks_dir: str | Path = "stacks") -> PlatformSpec:
    return load_stack_file(stack_file(stack, stacks_dir))
