"""The mlinfra CrossGuard policies: what the platform promises, checked on every preview/up.

Every policy is MANDATORY. `__main__.py` only builds the `PolicyPack` from `POLICIES`;
keeping the policies here makes each `validate` function callable directly from tests and
from the offline `mlinfra plan` (see `evaluate`).

Properties are the engine's: camelCase keys, as a Pulumi program sends them. The policies
depend only on `pulumi_policy` (plus the installed pulumi_aws sources, read as text, to
know which AWS resource types take tags).

Config (`pulumi preview --policy-pack policy --policy-pack-config config.json`), with
defaults that the real stacks satisfy:
    gpu-instance-types-allowed: {"allowedGpuInstanceTypes": ["g5.*", "p5.48xlarge", ...]}
    gpu-nodes-per-team: {"maxGpuNodesPerTeam": 16, "maxGpuNodesByTeam": {"vision": 24}}
    required-tags: {"requiredTags": ["team", "environment", "cost-center"]}
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

MANDATORY = EnforcementLevel.MANDATORY

# --- type tokens (pulumi-aws 7 names, plus the v6 "V2" names that still resolve) -----------

BUCKET = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
BUCKET_SSE = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
)
BUCKET_PAB = ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",)
BUCKET_POLICY = ("aws:s3/bucketPolicy:BucketPolicy",)
BUCKET_LOGGING = (
    "aws:s3/bucketLogging:BucketLogging",
    "aws:s3/bucketLoggingV2:BucketLoggingV2",
)
FEATURE_GROUP = "aws:sagemaker/featureGroup:FeatureGroup"
ENDPOINT_CONFIG = "aws:sagemaker/endpointConfiguration:EndpointConfiguration"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
KMS_KEY = "aws:kms/key:Key"
IAM_POLICY_DOCS = {  # type -> the property holding a policy document
    "aws:iam/policy:Policy": "policy",
    "aws:iam/rolePolicy:RolePolicy": "policy",
    "aws:iam/userPolicy:UserPolicy": "policy",
    "aws:iam/groupPolicy:GroupPolicy": "policy",
}
IAM_ROLE = "aws:iam/role:Role"
IAM_ATTACHMENTS = (
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    "aws:iam/policyAttachment:PolicyAttachment",
    "aws:iam/userPolicyAttachment:UserPolicyAttachment",
    "aws:iam/groupPolicyAttachment:GroupPolicyAttachment",
)

# --- defaults of the policy config ----------------------------------------------------------

DEFAULT_ALLOWED_GPU_INSTANCE_TYPES = [
    "g4dn.*",
    "g5.*",
    "g6.*",
    "g6e.*",
    "p4d.24xlarge",
    "p4de.24xlarge",
    "p5.48xlarge",
]
DEFAULT_MAX_GPU_NODES_PER_TEAM = 16
DEFAULT_REQUIRED_TAGS = ["team", "environment", "cost-center"]

# A family with a GPU (or other accelerator that is billed like one): g*, p*, and the
# AWS Trainium/Inferentia families.
_GPU_FAMILY_RE = re.compile(r"^(g[0-9]+[a-z]*|p[0-9]+[a-z]*|trn[0-9]+[a-z]*|inf[0-9]+[a-z]*)$")

# IAM: services that hold the team's data, and actions that AWS scopes to no resource.
DATA_SERVICES = frozenset(
    {
        "s3",
        "kms",
        "sagemaker",
        "sagemaker-featurestore-runtime",
        "glue",
        "ecr",
        "dynamodb",
        "athena",
        "secretsmanager",
    }
)
RESOURCELESS_ACTIONS = frozenset(
    {
        "ecr:getauthorizationtoken",
        "s3:listallmybuckets",
        "kms:listkeys",
        "kms:listaliases",
        "sagemaker:listmodelpackages",
        "sagemaker:listmodelpackagegroups",
        "sagemaker:listfeaturegroups",
        "sagemaker:search",
    }
)
BROAD_MANAGED_POLICIES = frozenset(
    {
        "AdministratorAccess",
        "PowerUserAccess",
        "AmazonS3FullAccess",
        "AmazonSageMakerFullAccess",
        "AmazonEC2ContainerRegistryFullAccess",
        "AmazonDynamoDBFullAccess",
        "AWSGlueConsoleFullAccess",
        "AWSKeyManagementServicePowerUser",
    }
)


# --- small helpers --------------------------------------------------------------------------


def _get(props: Any, *path: str | int, default: Any = None) -> Any:
    """props["a"]["b"][0]... or `default` when any step is missing."""
    value = props
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return default
        if value is None:
            return default
    return value


def _true(value: Any) -> bool:
    # pulumi-aws carries some booleans as strings ("true") in launch templates.
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _list(value: Any) -> list:
    if value is None:
        return []
    # The engine wraps lists in a read-only Sequence proxy, so test for Sequence, not list.
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return [value]


def _tags(props: Mapping[str, Any]) -> Mapping[str, Any]:
    return _get(props, "tags", default={}) or {}


def _is_prod(props: Mapping[str, Any]) -> bool:
    return _tags(props).get("environment") == "prod"


def _config(args: ResourceValidationArgs | StackValidationArgs, defaults: dict) -> dict:
    """The policy's config with defaults filled in (direct calls pass no config)."""
    return {**defaults, **dict(args.get_config() or {})}


def is_gpu_instance_type(instance_type: str) -> bool:
    family = instance_type.removeprefix("ml.").split(".")[0]
    return bool(_GPU_FAMILY_RE.match(family))


def _gpu_node_group(props: Mapping[str, Any]) -> bool:
    ami = str(_get(props, "amiType", default=""))
    types = [str(t) for t in _list(_get(props, "instanceTypes"))]
    return "NVIDIA" in ami or "GPU" in ami or any(is_gpu_instance_type(t) for t in types)


@cache
def _pulumi_aws_dir() -> Path | None:
    found = importlib.util.find_spec("pulumi_aws")
    return Path(found.origin).parent if found and found.origin else None


@cache
def is_taggable(resource_type: str) -> bool | None:
    """Whether an AWS resource type takes `tags`, read from the pulumi_aws sources.

    None when pulumi_aws is not installed next to the pack (then only resources that set
    some tags are checked).
    """
    root = _pulumi_aws_dir()
    match = re.match(r"^aws:([a-zA-Z0-9]+)/([a-zA-Z0-9]+):[A-Za-z0-9]+$", resource_type)
    if root is None or not match:
        return None
    module, member = match.groups()
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", member).lower()
    source = root / module / f"{snake}.py"
    if not source.is_file():
        return None
    return '__props__.__dict__["tags"] = tags' in source.read_text()


def _sagemaker_has_instance_storage(instance_type: str) -> bool:
    """SageMaker rejects KmsKeyId for instance types with local NVMe volumes, which are
    hardware-encrypted: families with a `d` (ml.m5d, ml.g4dn, ml.c6id) and the newer
    GPU/accelerator families whose every size has one."""
    family = instance_type.removeprefix("ml.").split(".")[0]
    return family in {"g5", "g6", "g6e", "p5", "p5e", "p5en", "trn1", "trn1n"} or bool(
        re.match(r"^[a-z]+[0-9]+[a-z]*d[a-z]*$", family)
    )


# --- encryption at rest ----------------------------------------------------------------------


def _access_log_targets(resources: list[PolicyResource]) -> set[str]:
    """Keys of the buckets that receive S3 server access logs."""
    keys: set[str] = set()
    for r in resources:
        if r.resource_type in BUCKET_LOGGING:
            deps = (r.property_dependencies or {}).get("targetBucket", [])
            keys |= {d.urn for d in deps}
            target = _get(r.props, "targetBucket")
            if isinstance(target, str):
                keys.add(target)
    return keys


def validate_bucket_encryption(args: StackValidationArgs, report: ReportViolation) -> None:
    """SSE-KMS on every bucket but a server access log destination, which S3 documents as
    SSE-S3 only (it does not deliver access logs into an SSE-KMS bucket)."""
    log_targets = _access_log_targets(args.resources)
    for sse in (r for r in args.resources if r.resource_type in BUCKET_SSE):
        rules = _list(_get(sse.props, "rules"))
        log_target = bool(_points_at(sse) & log_targets)
        if not rules:
            report("bucket encryption config has no rules; use SSE-KMS (sseAlgorithm aws:kms)")
        for i, rule in enumerate(rules):
            algorithm = _get(rule, "applyServerSideEncryptionByDefault", "sseAlgorithm")
            if log_target and algorithm != "AES256":
                report(
                    f"rules[{i}]: sseAlgorithm is {algorithm!r} on a server access log "
                    "bucket; S3 delivers access logs only into SSE-S3 (AES256) buckets",
                    sse.urn,
                )
            elif not log_target and algorithm not in ("aws:kms", "aws:kms:dsse"):
                report(
                    f"rules[{i}]: sseAlgorithm is {algorithm!r}; data buckets must use aws:kms",
                    sse.urn,
                )


def validate_feature_group_encryption(args: ResourceValidationArgs, report: ReportViolation):
    if args.resource_type != FEATURE_GROUP:
        return
    online = _get(args.props, "onlineStoreConfig")
    if online is not None and _true(_get(online, "enableOnlineStore")):
        if not _get(online, "securityConfig", "kmsKeyId"):
            report("online store without a KMS key (onlineStoreConfig.securityConfig.kmsKeyId)")
    offline = _get(args.props, "offlineStoreConfig")
    if offline is not None and not _get(offline, "s3StorageConfig", "kmsKeyId"):
        report("offline store without a KMS key (offlineStoreConfig.s3StorageConfig.kmsKeyId)")


def validate_endpoint_config_encryption(args: ResourceValidationArgs, report: ReportViolation):
    if args.resource_type != ENDPOINT_CONFIG:
        return
    variants = _list(_get(args.props, "productionVariants"))
    types = [str(_get(v, "instanceType", default="")) for v in variants]
    hardware_encrypted = bool(types) and all(_sagemaker_has_instance_storage(t) for t in types)
    if not _get(args.props, "kmsKeyArn") and not hardware_encrypted:
        report(
            f"endpoint config without kmsKeyArn: the ML storage volumes of {types} are "
            "unencrypted by the team key"
        )
    capture = _get(args.props, "dataCaptureConfig")
    if capture is not None and _true(_get(capture, "enableCapture", default=True)):
        if not _get(capture, "kmsKeyId"):
            report("captured data is written without a KMS key (dataCaptureConfig.kmsKeyId)")


def validate_node_volume_encryption(args: ResourceValidationArgs, report: ReportViolation):
    if args.resource_type == NODE_GROUP and not _get(args.props, "launchTemplate"):
        report(
            "node group without a launch template: its root volume encryption and IMDSv2 "
            "cannot be enforced"
        )
    if args.resource_type != LAUNCH_TEMPLATE:
        return
    mappings = _list(_get(args.props, "blockDeviceMappings"))
    if not any(_get(m, "ebs") for m in mappings):
        report("launch template sets no EBS root volume, so it is not encrypted")
    for i, mapping in enumerate(mappings):
        ebs = _get(mapping, "ebs")
        if ebs is not None and not _true(_get(ebs, "encrypted")):
            device = _get(mapping, "deviceName", default="?")
            report(f"blockDeviceMappings[{i}] ({device}): EBS volume is not encrypted")


# --- S3 access --------------------------------------------------------------------------------

PUBLIC_ACCESS_FLAGS = (
    "blockPublicAcls",
    "blockPublicPolicy",
    "ignorePublicAcls",
    "restrictPublicBuckets",
)


def validate_public_access_block(args: ResourceValidationArgs, report: ReportViolation):
    if args.resource_type not in BUCKET_PAB:
        return
    off = [flag for flag in PUBLIC_ACCESS_FLAGS if not _true(_get(args.props, flag))]
    if off:
        report(f"public access block leaves {', '.join(off)} off; all four must be true")


def _policy_doc(value: Any) -> dict | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, Mapping) else None


def _denies_insecure_transport(statement: Mapping[str, Any]) -> bool:
    if statement.get("Effect") != "Deny":
        return False
    principal = statement.get("Principal")
    if principal not in ("*", {"AWS": "*"}, {"AWS": ["*"]}):
        return False
    actions = {str(a).lower() for a in _list(statement.get("Action"))}
    if not actions & {"*", "s3:*"}:
        return False
    secure = _get(statement, "Condition", "Bool", "aws:SecureTransport")
    return str(secure).lower() == "false"


def validate_tls_only_bucket_policy(args: ResourceValidationArgs, report: ReportViolation):
    if args.resource_type not in BUCKET_POLICY:
        return
    doc = _policy_doc(_get(args.props, "policy"))
    if doc is None:
        report("bucket policy is not a JSON policy document")
        return
    statements = _list(doc.get("Statement"))
    if not any(isinstance(s, Mapping) and _denies_insecure_transport(s) for s in statements):
        report(
            "bucket policy does not deny requests without TLS (a Deny of s3:* for Principal "
            '"*" on Bool aws:SecureTransport = false)'
        )


def _bucket_keys(resource: PolicyResource) -> set[str]:
    """Everything another resource may use to point at a bucket."""
    keys = {resource.urn}
    for prop in ("bucket", "id", "arn"):
        value = _get(resource.props, prop)
        if isinstance(value, str):
            keys.add(value)
    return keys


def _points_at(resource: PolicyResource) -> set[str]:
    refs = {r.urn for r in (resource.property_dependencies or {}).get("bucket", [])}
    value = _get(resource.props, "bucket")
    if isinstance(value, str):
        refs.add(value)
    return refs


def validate_bucket_safeguards(args: StackValidationArgs, report: ReportViolation) -> None:
    """Every bucket has the three companions that make it safe: SSE-KMS, a full public
    access block and a TLS-only policy (each companion's own settings are checked by the
    resource policies)."""
    companions = {
        "an encryption config": BUCKET_SSE,
        "a public access block": BUCKET_PAB,
        "a TLS-only bucket policy": BUCKET_POLICY,
    }
    for bucket in (r for r in args.resources if r.resource_type in BUCKET):
        keys = _bucket_keys(bucket)
        for what, types in companions.items():
            attached = [
                r for r in args.resources if r.resource_type in types and _points_at(r) & keys
            ]
            if not attached:
                report(f"bucket {bucket.name} has no {what}", bucket.urn)


# --- nodes ------------------------------------------------------------------------------------


def validate_imdsv2(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != LAUNCH_TEMPLATE:
        return
    options = _get(args.props, "metadataOptions") or {}
    if _get(options, "httpEndpoint") == "disabled":
        return
    if _get(options, "httpTokens") != "required":
        report("instance metadata allows IMDSv1: set metadataOptions.httpTokens = required")


def validate_gpu_instance_types(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != NODE_GROUP:
        return
    allowed = _config(args, {"allowedGpuInstanceTypes": DEFAULT_ALLOWED_GPU_INSTANCE_TYPES})[
        "allowedGpuInstanceTypes"
    ]
    types = [str(t) for t in _list(_get(args.props, "instanceTypes"))]
    if not _gpu_node_group(args.props):
        return
    for itype in types:
        if not any(fnmatch.fnmatchcase(itype, pattern) for pattern in allowed):
            report(f"GPU instance type {itype} is not allowed; allowed: {', '.join(allowed)}")


def validate_gpu_nodes_per_team(args: StackValidationArgs, report: ReportViolation) -> None:
    config = _config(
        args,
        {"maxGpuNodesPerTeam": DEFAULT_MAX_GPU_NODES_PER_TEAM, "maxGpuNodesByTeam": {}},
    )
    per_team: dict[str, list[PolicyResource]] = {}
    for r in args.resources:
        if r.resource_type == NODE_GROUP and _gpu_node_group(r.props):
            per_team.setdefault(str(_tags(r.props).get("team", "<untagged>")), []).append(r)
    for team, groups in sorted(per_team.items()):
        limit = int(config["maxGpuNodesByTeam"].get(team, config["maxGpuNodesPerTeam"]))
        nodes = sum(int(_get(g.props, "scalingConfig", "maxSize", default=0)) for g in groups)
        if nodes > limit:
            pools = ", ".join(
                f"{g.name}={_get(g.props, 'scalingConfig', 'maxSize', default=0)}" for g in groups
            )
            report(f"team {team} can scale to {nodes} GPU nodes ({pools}); the maximum is {limit}")


# --- tags -------------------------------------------------------------------------------------


def validate_required_tags(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not args.resource_type.startswith("aws:"):
        return
    taggable = is_taggable(args.resource_type)
    has_tags = "tags" in args.props and args.props["tags"] is not None
    if taggable is False or (taggable is None and not has_tags):
        return
    required = _config(args, {"requiredTags": DEFAULT_REQUIRED_TAGS})["requiredTags"]
    tags = _tags(args.props)
    missing = [t for t in required if not tags.get(t)]
    if missing:
        report(f"missing tags: {', '.join(missing)} (required on every taggable resource)")


# --- IAM --------------------------------------------------------------------------------------


def unscoped(resource: str) -> bool:
    """A resource pattern that names every resource of its kind: `*`, `arn:aws:s3:::*`,
    `arn:aws:kms:us-east-1:123:key/*`. `arn:aws:s3:::team-bucket/*` (the objects of one
    bucket) and `.../model-package/team-group/*` are scoped."""
    if resource == "*":
        return True
    parts = resource.split(":", 5)
    if len(parts) < 6 or parts[0] != "arn":
        return False
    service, segment = parts[2], parts[5]
    if service == "s3":  # bucket[/key]: the bucket names the scope
        return segment.split("/")[0] in ("*", "")
    kind, _, rest = segment.partition("/")
    return segment == "*" or (bool(kind) and rest == "*")


def _statement_problems(statement: Mapping[str, Any]) -> list[str]:
    if statement.get("Effect") != "Allow":
        return []
    sid = statement.get("Sid") or "<no Sid>"
    if "NotAction" in statement or "NotResource" in statement:
        return [f"{sid}: Allow with NotAction/NotResource grants everything else"]
    problems = []
    actions = [str(a) for a in _list(statement.get("Action"))]
    resources = [str(r) for r in _list(statement.get("Resource"))]
    for action in actions:
        service, _, verb = action.lower().partition(":")
        if action == "*":
            problems.append(f"{sid}: Action '*'")
        elif service in DATA_SERVICES and "*" in verb:
            problems.append(f"{sid}: wildcard action {action} on a data service")
        elif (
            service in DATA_SERVICES
            and any(unscoped(r) for r in resources)
            and action.lower() not in RESOURCELESS_ACTIONS
        ):
            wide = next(r for r in resources if unscoped(r))
            problems.append(f"{sid}: {action} on Resource {wide!r} (scope it to the team's ARNs)")
    return problems


def _documents(args: ResourceValidationArgs) -> list[tuple[str, Any]]:
    if args.resource_type in IAM_POLICY_DOCS:
        return [("policy", _get(args.props, IAM_POLICY_DOCS[args.resource_type]))]
    if args.resource_type == IAM_ROLE:
        inline = _list(_get(args.props, "inlinePolicies"))
        return [(f"inlinePolicies[{i}]", _get(p, "policy")) for i, p in enumerate(inline)]
    return []


def validate_iam_data_access(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type in IAM_ATTACHMENTS:
        arn = str(_get(args.props, "policyArn", default=""))
        if arn.rsplit("/", 1)[-1] in BROAD_MANAGED_POLICIES:
            report(f"attaches the broad managed policy {arn}; grant scoped actions instead")
        return
    for where, raw in _documents(args):
        doc = _policy_doc(raw)
        if doc is None:
            if raw:
                report(f"{where} is not a JSON policy document")
            continue
        for statement in _list(doc.get("Statement")):
            if isinstance(statement, Mapping):
                for problem in _statement_problems(statement):
                    report(f"{where}: {problem}")


# --- prod ---------------------------------------------------------------------------------


def validate_prod_data_capture(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != ENDPOINT_CONFIG or not _is_prod(args.props):
        return
    capture = _get(args.props, "dataCaptureConfig")
    if capture is None or not _true(_get(capture, "enableCapture", default=True)):
        report("prod endpoint configuration without data capture (dataCaptureConfig)")
    elif int(_get(capture, "initialSamplingPercentage", default=0)) < 1:
        report("prod endpoint data capture samples 0% of requests")


def _data_keys(resources: list[PolicyResource]) -> set[str]:
    """URNs and ARNs/ids of the KMS keys that bucket encryption configs use."""
    refs: set[str] = set()
    for r in resources:
        if r.resource_type in BUCKET_SSE:
            refs |= {d.urn for d in (r.property_dependencies or {}).get("rules", [])}
            for rule in _list(_get(r.props, "rules")):
                key = _get(rule, "applyServerSideEncryptionByDefault", "kmsMasterKeyId")
                if isinstance(key, str):
                    refs.add(key)
    return refs


def validate_prod_data_protected(args: StackValidationArgs, report: ReportViolation) -> None:
    """Prod buckets, and the KMS keys that encrypt them, are protected: a `pulumi destroy`
    or a replacement must not take the data (or the means to read it) with it."""
    data_keys = _data_keys(list(args.resources))
    for r in args.resources:
        is_key = r.resource_type == KMS_KEY and bool(
            {r.urn, str(_get(r.props, "arn")), str(_get(r.props, "keyId"))} & data_keys
        )
        if (r.resource_type in BUCKET or is_key) and _is_prod(r.props) and not r.opts.protect:
            what = "data key" if is_key else "bucket"
            report(f"prod {what} {r.name} is not protected (protect=True)", r.urn)


# --- the policies -------------------------------------------------------------------------


def _resource(name: str, description: str, validate: Callable, **kw: Any):
    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=MANDATORY, **kw
    )


def _stack(name: str, description: str, validate: Callable, **kw: Any):
    return StackValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=MANDATORY, **kw
    )


POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    _stack(
        "s3-encryption-kms",
        "S3 bucket default encryption uses SSE-KMS (SSE-S3 on server access log buckets only).",
        validate_bucket_encryption,
    ),
    _resource(
        "featurestore-encryption",
        "Feature group online and offline stores are encrypted with a KMS key.",
        validate_feature_group_encryption,
    ),
    _resource(
        "endpoint-config-encryption",
        "SageMaker endpoint configurations encrypt their volumes and captured data with KMS.",
        validate_endpoint_config_encryption,
    ),
    _resource(
        "node-volume-encryption",
        "Node groups use a launch template whose EBS volumes are encrypted.",
        validate_node_volume_encryption,
    ),
    _resource(
        "s3-public-access-blocked",
        "All four S3 public access blocks are on.",
        validate_public_access_block,
    ),
    _resource(
        "s3-tls-only",
        "Bucket policies deny every request not made over TLS.",
        validate_tls_only_bucket_policy,
    ),
    _stack(
        "s3-bucket-safeguards",
        "Every bucket has an encryption config, a public access block and a bucket policy.",
        validate_bucket_safeguards,
    ),
    _resource(
        "imdsv2-required",
        "Node launch templates require IMDSv2 (session tokens).",
        validate_imdsv2,
    ),
    _resource(
        "gpu-instance-types-allowed",
        "GPU node pools use only the allowed instance types.",
        validate_gpu_instance_types,
        config_schema=PolicyConfigSchema(
            properties={
                "allowedGpuInstanceTypes": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": DEFAULT_ALLOWED_GPU_INSTANCE_TYPES,
                }
            }
        ),
    ),
    _stack(
        "gpu-nodes-per-team",
        "A team's GPU node pools together scale to at most its maximum number of nodes.",
        validate_gpu_nodes_per_team,
        config_schema=PolicyConfigSchema(
            properties={
                "maxGpuNodesPerTeam": {
                    "type": "integer",
                    "minimum": 0,
                    "default": DEFAULT_MAX_GPU_NODES_PER_TEAM,
                },
                "maxGpuNodesByTeam": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 0},
                    "default": {},
                },
            }
        ),
    ),
    _resource(
        "required-tags",
        "Every taggable AWS resource carries the team, environment and cost-center tags.",
        validate_required_tags,
        config_schema=PolicyConfigSchema(
            properties={
                "requiredTags": {
                    "type": "array",
                    "items": {"type": "string"},
                    "default": DEFAULT_REQUIRED_TAGS,
                }
            }
        ),
    ),
    _resource(
        "iam-no-wildcard-data-access",
        "IAM policies grant no wildcard actions on data services and scope data actions to "
        "resources.",
        validate_iam_data_access,
    ),
    _resource(
        "prod-endpoint-data-capture",
        "Prod SageMaker endpoint configurations capture request and response data.",
        validate_prod_data_capture,
    ),
    _stack(
        "prod-data-protected",
        "Prod data buckets and the KMS keys that encrypt them are protected from deletion.",
        validate_prod_data_protected,
    ),
]


# --- running the policies outside the engine (tests, `mlinfra plan`) -----------------------


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str  # logical name ("" for a stack policy that names none)
    message: str


def _options(protect: bool, parent: str | None) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=protect,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=parent,
    )


def resource_args(
    resource_type: str,
    props: Mapping[str, Any],
    *,
    name: str = "r",
    urn: str | None = None,
    protect: bool = False,
    parent: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> ResourceValidationArgs:
    """The engine's argument object for one resource, built by hand."""
    urn = urn or f"urn:pulumi:test::mlinfra::{resource_type}::{name}"
    return ResourceValidationArgs(
        resource_type, props, urn, name, _options(protect, parent), None, config
    )


def policy_resource(
    resource_type: str,
    props: Mapping[str, Any],
    *,
    name: str = "r",
    urn: str | None = None,
    protect: bool = False,
    parent: str | None = None,
) -> PolicyResource:
    urn = urn or f"urn:pulumi:test::mlinfra::{resource_type}::{name}"
    return PolicyResource(
        resource_type, props, urn, name, _options(protect, parent), None, None, [], {}
    )


def run_resource_policy(
    policy: ResourceValidationPolicy, args: ResourceValidationArgs
) -> list[str]:
    messages: list[str] = []
    policy.validate(args, lambda message, urn=None: messages.append(message))
    return messages


def run_stack_policy(
    policy: StackValidationPolicy,
    resources: list[PolicyResource],
    config: Mapping[str, Any] | None = None,
) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []

    def report(message: str, urn: str | None = None) -> None:
        found.append((message, urn))

    policy.validate(StackValidationArgs(resources, config), report)
    return found


def evaluate(
    resources: Iterable[Any], config: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, list[Violation]]:
    """Run every policy on rendered resources; {policy name: violations} (empty: passed).

    A resource is anything with `type`, `name`, `urn`, `inputs`, `protect` and `parent`
    attributes, such as `components.mockrun.RenderedResource`. Only custom resources
    (not ComponentResources) are checked, as the engine does.
    """
    config = config or {}
    rendered = [r for r in resources if getattr(r, "custom", True)]
    by_urn = {r.urn: r for r in rendered}
    stack_resources = [
        # The engine hands stack policies the resources' state: inputs plus computed outputs.
        policy_resource(
            r.type,
            {**getattr(r, "outputs", {}), **r.inputs},
            name=r.name,
            urn=r.urn,
            protect=r.protect,
            parent=r.parent,
        )
        for r in rendered
    ]
    results: dict[str, list[Violation]] = {}
    for policy in POLICIES:
        found: list[Violation] = []
        if isinstance(policy, ResourceValidationPolicy):
            for r in rendered:
                args = resource_args(
                    r.type,
                    r.inputs,
                    name=r.name,
                    urn=r.urn,
                    protect=r.protect,
                    parent=r.parent,
                    config=config.get(policy.name),
                )
                messages = run_resource_policy(policy, args)
                found += [Violation(policy.name, r.name, m) for m in messages]
        else:
            for message, urn in run_stack_policy(policy, stack_resources, config.get(policy.name)):
                name = by_urn[urn].name if urn in by_urn else ""
                found.append(Violation(policy.name, name, message))
        results[policy.name] = found
    return results
