"""What each AWS API checks in the inputs we set, over every stack's render.

tests/test_apply_time.py proves the platform's shape works (reachable APIs, zones,
autoscaling). This file checks each input the components set against what the AWS API
reference documents for it: length and count limits, patterns and enums (read from the
API model botocore ships, `tests.aws_api_model`), and rules the reference states in words
(reserved names, allowed values, what a role needs for a key or a service to work).

Every stack is checked twice: as configured, and with every name the spec lets a team
choose at its longest (`tests.longest_names`): a team of 16 characters on `pr-999999`, its
endpoints, groups and pools named as long as the spec accepts. A name the spec accepts
must make names AWS accepts, or the spec must refuse it first.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from components.mockrun import Rendered
from components.spec import (
    AUTONAME_SUFFIX,
    NAME_LIMITS,
    RESERVED_FEATURE_NAMES,
    S3_RESERVED_PREFIXES,
    derived_names,
    parse_spec,
)
from tests.aws_api_model import documentation, problems
from tests.longest_names import LONGEST_TEAM, longest_config, longest_stack
from tests.stack_support import STACK_NAMES, rendered_stack
from tests.test_apply_time import NODE_GROUP, ROLE, ROLE_POLICY, SECURITY_GROUP

pytestmark = pytest.mark.filterwarnings("error")

ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
ENDPOINT_CONFIG = "aws:sagemaker/endpointConfiguration:EndpointConfiguration"
FEATURE_GROUP = "aws:sagemaker/featureGroup:FeatureGroup"
MODEL = "aws:sagemaker/model:Model"
SM = ("sagemaker",)

# (resource type, input path, (service, operation, request member)): the input is sent as
# that request member, so the API's model limits for the member apply to it.
API_INPUTS: list[tuple[str, str, tuple[str, str, str]]] = [
    (ROLE, "name", ("iam", "CreateRole", "RoleName")),
    (ROLE, "description", ("iam", "CreateRole", "Description")),
    (ROLE, "assumeRolePolicy", ("iam", "CreateRole", "AssumeRolePolicyDocument")),
    (ROLE_POLICY, "policy", ("iam", "PutRolePolicy", "PolicyDocument")),
    (FEATURE_GROUP, "featureGroupName", (*SM, "CreateFeatureGroup", "FeatureGroupName")),
    (FEATURE_GROUP, "description", (*SM, "CreateFeatureGroup", "Description")),
    (FEATURE_GROUP, "featureDefinitions", (*SM, "CreateFeatureGroup", "FeatureDefinitions")),
    (
        FEATURE_GROUP,
        "featureDefinitions[].featureName",
        (*SM, "CreateFeatureGroup", "FeatureDefinitions.[].FeatureName"),
    ),
    (
        FEATURE_GROUP,
        "recordIdentifierFeatureName",
        (*SM, "CreateFeatureGroup", "RecordIdentifierFeatureName"),
    ),
    (
        FEATURE_GROUP,
        "featureDefinitions[].featureType",
        (*SM, "CreateFeatureGroup", "FeatureDefinitions.[].FeatureType"),
    ),
    (
        FEATURE_GROUP,
        "onlineStoreConfig.ttlDuration.unit",
        (*SM, "CreateFeatureGroup", "OnlineStoreConfig.TtlDuration.Unit"),
    ),
    (FEATURE_GROUP, "eventTimeFeatureName", (*SM, "CreateFeatureGroup", "EventTimeFeatureName")),
    (FEATURE_GROUP, "roleArn", (*SM, "CreateFeatureGroup", "RoleArn")),
    (
        FEATURE_GROUP,
        "offlineStoreConfig.dataCatalogConfig.tableName",
        (*SM, "CreateFeatureGroup", "OfflineStoreConfig.DataCatalogConfig.TableName"),
    ),
    (
        FEATURE_GROUP,
        "offlineStoreConfig.dataCatalogConfig.database",
        (*SM, "CreateFeatureGroup", "OfflineStoreConfig.DataCatalogConfig.Database"),
    ),
    (
        FEATURE_GROUP,
        "offlineStoreConfig.s3StorageConfig.s3Uri",
        (*SM, "CreateFeatureGroup", "OfflineStoreConfig.S3StorageConfig.S3Uri"),
    ),
    (
        FEATURE_GROUP,
        "offlineStoreConfig.s3StorageConfig.kmsKeyId",
        (*SM, "CreateFeatureGroup", "OfflineStoreConfig.S3StorageConfig.KmsKeyId"),
    ),
    (
        FEATURE_GROUP,
        "onlineStoreConfig.ttlDuration.value",
        (*SM, "CreateFeatureGroup", "OnlineStoreConfig.TtlDuration.Value"),
    ),
    (
        "aws:sagemaker/modelPackageGroup:ModelPackageGroup",
        "modelPackageGroupName",
        (*SM, "CreateModelPackageGroup", "ModelPackageGroupName"),
    ),
    (
        "aws:sagemaker/modelPackageGroup:ModelPackageGroup",
        "modelPackageGroupDescription",
        (*SM, "CreateModelPackageGroup", "ModelPackageGroupDescription"),
    ),
    (MODEL, "executionRoleArn", (*SM, "CreateModel", "ExecutionRoleArn")),
    (MODEL, "vpcConfig.subnets", (*SM, "CreateModel", "VpcConfig.Subnets")),
    (MODEL, "vpcConfig.securityGroupIds", (*SM, "CreateModel", "VpcConfig.SecurityGroupIds")),
    ("aws:sagemaker/endpoint:Endpoint", "name", (*SM, "CreateEndpoint", "EndpointName")),
    (
        ENDPOINT_CONFIG,
        "productionVariants[].variantName",
        (*SM, "CreateEndpointConfig", "ProductionVariants.[].VariantName"),
    ),
    # Instance types: the enums of the installed API models (a type newer than botocore is
    # refused here until botocore is updated; a typo always is).
    (
        ENDPOINT_CONFIG,
        "productionVariants[].instanceType",
        (*SM, "CreateEndpointConfig", "ProductionVariants.[].InstanceType"),
    ),
    (
        ENDPOINT_CONFIG,
        "productionVariants[].initialInstanceCount",
        (*SM, "CreateEndpointConfig", "ProductionVariants.[].InitialInstanceCount"),
    ),
    (NODE_GROUP, "instanceTypes[]", ("ec2", "RunInstances", "InstanceType")),
    (ENDPOINT_CONFIG, "kmsKeyArn", (*SM, "CreateEndpointConfig", "KmsKeyId")),
    (
        ENDPOINT_CONFIG,
        "dataCaptureConfig.destinationS3Uri",
        (*SM, "CreateEndpointConfig", "DataCaptureConfig.DestinationS3Uri"),
    ),
    (
        ENDPOINT_CONFIG,
        "dataCaptureConfig.initialSamplingPercentage",
        (*SM, "CreateEndpointConfig", "DataCaptureConfig.InitialSamplingPercentage"),
    ),
    (
        ENDPOINT_CONFIG,
        "dataCaptureConfig.kmsKeyId",
        (*SM, "CreateEndpointConfig", "DataCaptureConfig.KmsKeyId"),
    ),
    (
        ENDPOINT_CONFIG,
        "dataCaptureConfig.captureOptions",
        (*SM, "CreateEndpointConfig", "DataCaptureConfig.CaptureOptions"),
    ),
    *[
        (
            ENDPOINT_CONFIG,
            f"dataCaptureConfig.captureContentTypeHeader.{kind}ContentTypes{items}",
            (
                *SM,
                "CreateEndpointConfig",
                f"DataCaptureConfig.CaptureContentTypeHeader.{kind.title()}ContentTypes{dot}",
            ),
        )
        for kind in ("csv", "json")
        for items, dot in (("", ""), ("[]", ".[]"))
    ],
    (ALARM, "name", ("cloudwatch", "PutMetricAlarm", "AlarmName")),
    (ALARM, "alarmDescription", ("cloudwatch", "PutMetricAlarm", "AlarmDescription")),
    (ALARM, "namespace", ("cloudwatch", "PutMetricAlarm", "Namespace")),
    (ALARM, "metricName", ("cloudwatch", "PutMetricAlarm", "MetricName")),
    (ALARM, "alarmActions", ("cloudwatch", "PutMetricAlarm", "AlarmActions")),
    (ALARM, "okActions", ("cloudwatch", "PutMetricAlarm", "OKActions")),
    (ALARM, "dimensions", ("cloudwatch", "PutMetricAlarm", "Dimensions")),
    (ALARM, "evaluationPeriods", ("cloudwatch", "PutMetricAlarm", "EvaluationPeriods")),
    (ALARM, "comparisonOperator", ("cloudwatch", "PutMetricAlarm", "ComparisonOperator")),
    (ALARM, "statistic", ("cloudwatch", "PutMetricAlarm", "Statistic")),
    (ALARM, "datapointsToAlarm", ("cloudwatch", "PutMetricAlarm", "DatapointsToAlarm")),
    ("aws:eks/cluster:Cluster", "name", ("eks", "CreateCluster", "name")),
    *[
        ("aws:autoscaling/tag:Tag", path, ("autoscaling", "CreateOrUpdateTags", api))
        for path, api in [
            ("tag.key", "Tags.[].Key"),
            ("tag.value", "Tags.[].Value"),
            ("autoscalingGroupName", "Tags.[].ResourceId"),
        ]
    ],
    *[
        (NODE_GROUP, path, ("eks", "CreateNodegroup", api))
        for path, api in [
            ("labels", "labels"),
            ("taints[].key", "taints.[].key"),
            ("taints[].value", "taints.[].value"),
            ("taints[].effect", "taints.[].effect"),
            ("scalingConfig.minSize", "scalingConfig.minSize"),
            ("scalingConfig.maxSize", "scalingConfig.maxSize"),
            ("scalingConfig.desiredSize", "scalingConfig.desiredSize"),
            ("updateConfig.maxUnavailable", "updateConfig.maxUnavailable"),
            ("amiType", "amiType"),
            ("capacityType", "capacityType"),
        ]
    ],
    ("aws:ecr/repository:Repository", "name", ("ecr", "CreateRepository", "repositoryName")),
    (
        "aws:ecr/lifecyclePolicy:LifecyclePolicy",
        "policy",
        ("ecr", "PutLifecyclePolicy", "lifecyclePolicyText"),
    ),
    (
        "aws:glue/catalogDatabase:CatalogDatabase",
        "name",
        ("glue", "CreateDatabase", "DatabaseInput.Name"),
    ),
    (
        "aws:glue/catalogDatabase:CatalogDatabase",
        "description",
        ("glue", "CreateDatabase", "DatabaseInput.Description"),
    ),
    (
        "aws:glue/catalogDatabase:CatalogDatabase",
        "locationUri",
        ("glue", "CreateDatabase", "DatabaseInput.LocationUri"),
    ),
    ("aws:athena/workgroup:Workgroup", "name", ("athena", "CreateWorkGroup", "Name")),
    ("aws:athena/workgroup:Workgroup", "description", ("athena", "CreateWorkGroup", "Description")),
    (
        "aws:athena/workgroup:Workgroup",
        "configuration.resultConfiguration.outputLocation",
        ("athena", "CreateWorkGroup", "Configuration.ResultConfiguration.OutputLocation"),
    ),
    ("aws:kms/alias:Alias", "name", ("kms", "CreateAlias", "AliasName")),
    ("aws:kms/key:Key", "description", ("kms", "CreateKey", "Description")),
    ("aws:kms/key:Key", "policy", ("kms", "CreateKey", "Policy")),
    (
        "aws:kms/key:Key",
        "deletionWindowInDays",
        ("kms", "ScheduleKeyDeletion", "PendingWindowInDays"),
    ),
    ("aws:cloudwatch/logGroup:LogGroup", "name", ("logs", "CreateLogGroup", "logGroupName")),
    ("aws:budgets/budget:Budget", "name", ("budgets", "CreateBudget", "Budget.BudgetName")),
    (
        "aws:appautoscaling/policy:Policy",
        "name",
        ("application-autoscaling", "PutScalingPolicy", "PolicyName"),
    ),
    *[
        (f"aws:appautoscaling/{kind}", path, ("application-autoscaling", operation, api))
        for kind, operation in (
            ("target:Target", "RegisterScalableTarget"),
            ("policy:Policy", "PutScalingPolicy"),
        )
        for path, api in (
            ("resourceId", "ResourceId"),
            ("scalableDimension", "ScalableDimension"),
            ("serviceNamespace", "ServiceNamespace"),
        )
    ],
    (
        "aws:appautoscaling/policy:Policy",
        "policyType",
        ("application-autoscaling", "PutScalingPolicy", "PolicyType"),
    ),
    (
        "aws:appautoscaling/policy:Policy",
        "targetTrackingScalingPolicyConfiguration.predefinedMetricSpecification."
        "predefinedMetricType",
        (
            "application-autoscaling",
            "PutScalingPolicy",
            "TargetTrackingScalingPolicyConfiguration.PredefinedMetricSpecification."
            "PredefinedMetricType",
        ),
    ),
    (
        "aws:appautoscaling/target:Target",
        "maxCapacity",
        ("application-autoscaling", "RegisterScalableTarget", "MaxCapacity"),
    ),
]

# Resources the program leaves to Pulumi's autonaming (`<logical name>-<7 characters>`):
# the name they get must fit the API's name member too.
AUTONAMED = {
    MODEL: (*SM, "CreateModel", "ModelName"),
    ENDPOINT_CONFIG: (*SM, "CreateEndpointConfig", "EndpointConfigName"),
}


RENDERS = [(stack, variant) for stack in STACK_NAMES for variant in ("as-is", "longest")]


def _render(stack: str, variant: str) -> Rendered:
    return rendered_stack(stack) if variant == "as-is" else longest_stack(stack)


@pytest.fixture(params=RENDERS, ids=[f"{s}-{v}" for s, v in RENDERS])
def rendered(request) -> Rendered:
    return _render(*request.param)


def values_at(inputs: Any, path: str) -> Iterator[Any]:
    """The values at a dotted input path (`a.b[].c`); none where a part is unset."""
    if not path:
        yield inputs
        return
    head, _, rest = path.partition(".")
    key, many = head.removesuffix("[]"), head.endswith("[]")
    value = inputs.get(key) if isinstance(inputs, dict) else None
    if value is None:
        return
    for item in value if many else [value]:
        yield from values_at(item, rest)


def _statements(rendered: Rendered) -> dict[str, list[dict[str, Any]]]:
    """Each role's inline policy statements, by role name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for policy in rendered.by_type(ROLE_POLICY):
        statements = json.loads(policy.inputs["policy"])["Statement"]
        out.setdefault(policy.inputs["role"], []).extend(statements)
    return out


def _list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def allows(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    """Whether an Allow statement grants the action on the resource (no Deny is used)."""
    return any(
        s["Effect"] == "Allow"
        and any(fnmatch.fnmatchcase(action, a) for a in _list(s["Action"]))
        and any(fnmatch.fnmatchcase(resource, r) for r in _list(s["Resource"]))
        for s in statements
    )


def _role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


# --- the API models' limits ------------------------------------------------------------------


def test_every_input_is_within_its_api_members_limits(rendered):
    found = []
    for token, path, api in API_INPUTS:
        for resource in rendered.by_type(token):
            for value in values_at(resource.inputs, path):
                found += [f"{resource.name}.{path}: {p}" for p in problems(value, *api)]
    assert not found, "the API refuses these at `pulumi up`:\n" + "\n".join(found)


def test_autonamed_resources_get_names_the_api_takes(rendered):
    found = []
    for token, api in AUTONAMED.items():
        for resource in rendered.by_type(token):
            name = resource.inputs.get("name") or resource.name + AUTONAME_SUFFIX
            found += [f"{resource.name}: {p}" for p in problems(name, *api)]
    assert not found, "Pulumi would autoname these beyond what the API takes:\n" + "\n".join(found)


def test_the_input_table_names_inputs_the_program_sets():
    """A row whose input no stack sets checks nothing: each must be found in some render."""
    unused = [
        (token, path)
        for token, path, _ in API_INPUTS
        if not any(
            list(values_at(r.inputs, path))
            for stack in STACK_NAMES
            for r in rendered_stack(stack).by_type(token)
        )
    ]
    assert not unused


def test_the_longest_renders_carry_the_longest_names():
    """The second pass must stretch what it claims to: the spec's longest team name, and
    every chosen name to the very limit of the tightest name made from it."""
    for stack in STACK_NAMES:
        config = longest_config(stack)
        spec = parse_spec(config, stack)
        assert spec.team == LONGEST_TEAM
        tightest: dict[tuple[Any, ...], int] = {}
        for loc, kind, name in derived_names(spec):
            tightest[loc] = min(NAME_LIMITS[kind][0] - len(name), tightest.get(loc, 99))
        assert tightest and set(tightest.values()) == {0}, (stack, tightest)
        cluster = longest_stack(stack).one("aws:eks/cluster:Cluster")
        assert cluster.inputs["name"].startswith(LONGEST_TEAM)


# --- tags ------------------------------------------------------------------------------------

# AWS tagging ("Tag naming limits and requirements", and each API's Tag shape, e.g.
# sagemaker Tag): at most 50 user tags a resource, keys 1-128 and values 0-256 characters of
# letters, digits, spaces and _.:/=+-@, and no key starting with `aws:`.
MAX_TAGS = 50


def test_tags_are_within_aws_tagging_limits(rendered):
    found = []
    for resource in rendered.custom_resources:
        tags = resource.inputs.get("tags")
        if not resource.type.startswith("aws:") or not isinstance(tags, dict):
            continue
        if len(tags) > MAX_TAGS:
            found.append(f"{resource.name}: {len(tags)} tags")
        for key, value in tags.items():
            found += [f"{resource.name}: {p}" for p in problems(key, *SM, "AddTags", "Tags.[].Key")]
            found += [
                f"{resource.name}: {p}" for p in problems(value, *SM, "AddTags", "Tags.[].Value")
            ]
            if key.lower().startswith("aws:"):
                found.append(f"{resource.name}: tag key {key!r} uses the reserved aws: prefix")
    assert not found, "\n".join(found)


# --- rules the API reference states in words -------------------------------------------------


def test_feature_names_avoid_the_columns_feature_store_adds(rendered):
    doc = documentation(*SM, "CreateFeatureGroup", "FeatureDefinitions")
    assert "cannot be any of the following: " + ", ".join(RESERVED_FEATURE_NAMES) in doc
    for group in rendered.by_type(FEATURE_GROUP):
        names = {d["featureName"] for d in group.inputs["featureDefinitions"]}
        assert not names & set(RESERVED_FEATURE_NAMES), (group.name, names)


def test_log_retention_is_a_value_cloudwatch_logs_accepts(rendered):
    doc = documentation("logs", "PutRetentionPolicy", "retentionInDays")
    allowed = {
        int(v) for v in re.findall(r"\d+", doc.split("Possible values are:")[1].split(".")[0])
    }
    assert {1, 30, 365, 731, 3653} <= allowed
    for group in rendered.by_type("aws:cloudwatch/logGroup:LogGroup"):
        days = group.inputs.get("retentionInDays")
        assert days is None or int(days) in allowed, (
            f"{group.inputs['name']}: PutRetentionPolicy refuses {days} days; "
            f"one of {sorted(allowed)}"
        )


_SG_TEXT = re.compile(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{0,255}")
_PREFIX_LIST_RULE_TEXT = re.compile(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=;{}!$*]{0,255}")  # no "&"
RULES = (
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
)


def test_security_group_texts_use_what_ec2_allows(rendered):
    """Group names and descriptions, and rule descriptions: 255 characters of letters, digits,
    spaces and ._-:/()#,@[]+=&;{}!$* (no apostrophe); a rule on a prefix list not even "&"."""
    for member in ("GroupName", "Description"):
        doc = documentation("ec2", "CreateSecurityGroup", member)
        assert "Up to 255 characters in length" in doc
        assert "a-z, A-Z, 0-9, spaces, and ._-:/()#,@[]+=&;{}!$*" in doc
    rule = "IpPermissions.[].{}.[].Description"
    assert documentation("ec2", "AuthorizeSecurityGroupIngress", rule.format("IpRanges")).endswith(
        "a-z, A-Z, 0-9, spaces, and ._-:/()#,@[]+=&;{}!$*"
    )
    assert documentation(
        "ec2", "AuthorizeSecurityGroupIngress", rule.format("PrefixListIds")
    ).endswith("a-z, A-Z, 0-9, spaces, and ._-:/()#,@[]+=;{}!$*")
    for group in rendered.by_type(SECURITY_GROUP):
        name, description = group.inputs["name"], group.inputs.get("description", "")
        assert _SG_TEXT.fullmatch(name) and not name.startswith("sg-"), name
        assert _SG_TEXT.fullmatch(description), (
            f"{name}: CreateSecurityGroup refuses the description {description!r}"
        )
    for token in RULES:
        for rule_ in rendered.by_type(token):
            text = rule_.inputs.get("description", "")
            allowed = _PREFIX_LIST_RULE_TEXT if "prefixListId" in rule_.inputs else _SG_TEXT
            assert allowed.fullmatch(text), f"{rule_.name}: EC2 refuses the description {text!r}"


def test_access_entries_and_aliases_use_what_eks_and_kms_allow(rendered):
    """CreateAccessEntry: one entry per principal ARN, and no STS session principal;
    CreateAlias: `alias/<name>`, never under the `alias/aws/` prefix AWS keeps for itself."""
    doc = documentation("eks", "CreateAccessEntry", "principalArn")
    assert "can't specify the same ARN in more than one access entry" in doc
    assert "can't use the STS session principal type" in doc
    principals = [
        e.inputs["principalArn"] for e in rendered.by_type("aws:eks/accessEntry:AccessEntry")
    ]
    assert len(principals) == len(set(principals)), principals
    assert not any(":assumed-role/" in p for p in principals), principals
    assert "cannot begin with alias/aws/" in documentation("kms", "CreateAlias", "AliasName")
    for alias in rendered.by_type("aws:kms/alias:Alias"):
        name = alias.inputs["name"]
        assert name.startswith("alias/") and not name.startswith("alias/aws/"), name


# S3 user guide, "General purpose bucket naming rules".
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def test_bucket_names_follow_the_s3_naming_rules(rendered):
    buckets = [b.inputs["bucket"] for b in rendered.by_type("aws:s3/bucket:Bucket")]
    assert buckets
    for name in buckets:
        assert _BUCKET.fullmatch(name) and ".." not in name, name
        assert not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name), name
        assert not name.startswith(_BUCKET_RESERVED_PREFIXES), name
        assert not name.endswith(_BUCKET_RESERVED_SUFFIXES), name


def test_the_spec_keeps_teams_off_the_reserved_bucket_prefixes():
    assert set(S3_RESERVED_PREFIXES) == set(_BUCKET_RESERVED_PREFIXES)


def test_sns_topic_names_use_what_sns_allows(rendered):
    doc = documentation("sns", "CreateTopic", "Name")
    assert "uppercase and lowercase ASCII letters, numbers, underscores, and hyphens" in doc
    assert "between 1 and 256 characters" in doc
    for topic in rendered.by_type("aws:sns/topic:Topic"):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,256}", topic.inputs["name"]), topic.inputs["name"]


def test_alarm_periods_are_ones_cloudwatch_evaluates(rendered):
    doc = documentation("cloudwatch", "PutMetricAlarm", "Period")
    assert "Valid values are 10, 20, 30, and any multiple of 60" in doc
    assert "can't be more than 604,800 seconds" in doc
    assert "less than one hour (3,600 seconds), the total evaluation period can't be" in doc
    for alarm in rendered.by_type(ALARM):
        period, periods = int(alarm.inputs["period"]), int(alarm.inputs["evaluationPeriods"])
        name = alarm.inputs["name"]
        assert period in (10, 20, 30) or period % 60 == 0, (name, period)
        assert period * periods <= (604_800 if period >= 3600 else 86_400), (name, period, periods)
        assert int(alarm.inputs.get("datapointsToAlarm", periods)) <= periods, name
        assert ("statistic" in alarm.inputs) != ("extendedStatistic" in alarm.inputs), (
            f"{name}: PutMetricAlarm takes exactly one of Statistic and ExtendedStatistic"
        )


def test_node_groups_leave_to_their_launch_template_what_eks_says_it_owns(rendered):
    """CreateNodegroup with a launchTemplate: no diskSize or remoteAccess (the template's
    block devices and keys); no instanceTypes when the template names one; no amiType when
    it names a custom AMI ("or the node group deployment will fail")."""
    eks = ("eks", "CreateNodegroup")
    assert "don't specify diskSize, or the node group deployment will fail" in documentation(
        *eks, "diskSize"
    )
    assert "don't directly specify instanceTypes, diskSize, or remoteAccess" in documentation(
        *eks, "launchTemplate"
    )
    assert "custom AMI, then don't specify amiType" in documentation(*eks, "amiType")
    templates = {t.id: t for t in rendered.by_type("aws:ec2/launchTemplate:LaunchTemplate")}
    for group in rendered.by_type(NODE_GROUP):
        spec = group.inputs.get("launchTemplate")
        if not spec:
            continue
        template = templates[spec["id"]].inputs
        name = group.inputs["nodeGroupName"]
        assert "diskSize" not in group.inputs and "remoteAccess" not in group.inputs, name
        assert not ("instanceType" in template and group.inputs.get("instanceTypes")), name
        assert not ("imageId" in template and "amiType" in group.inputs), name
        # EC2 API reference, CreateLaunchTemplate: LaunchTemplateName 3-128 of [a-zA-Z0-9().-/_].
        assert re.fullmatch(r"[a-zA-Z0-9().\-/_]{3,128}", template["name"]), template["name"]


# --- what a service needs from the roles it acts with ----------------------------------------


def test_feature_store_roles_can_use_the_offline_and_online_keys(rendered):
    """CreateFeatureGroup: the RoleArn needs kms:GenerateDataKey on the offline store's key;
    every caller of PutRecord/GetRecord needs kms:Decrypt on the online store's key."""
    assert '"kms:GenerateDataKey"' in documentation(
        *SM, "CreateFeatureGroup", "OfflineStoreConfig.S3StorageConfig.KmsKeyId"
    )
    assert '"kms:Decrypt"' in documentation(
        *SM, "CreateFeatureGroup", "OnlineStoreConfig.SecurityConfig.KmsKeyId"
    )
    statements = _statements(rendered)
    for group in rendered.by_type(FEATURE_GROUP):
        arn = group.outputs["arn"]
        role = _role_name(group.inputs["roleArn"])
        for key in values_at(group.inputs, "offlineStoreConfig.s3StorageConfig.kmsKeyId"):
            assert allows(statements.get(role, []), "kms:GenerateDataKey", key), (
                f"{role} cannot write {group.name}'s offline store with its key"
            )
        online = list(values_at(group.inputs, "onlineStoreConfig.securityConfig.kmsKeyId"))
        writers = [r for r, s in statements.items() if allows(s, "sagemaker:PutRecord", arn)]
        assert online and writers or not online, f"nobody can ingest into {group.name}"
        for key in online:
            for writer in writers:
                assert allows(statements[writer], "kms:Decrypt", key), (
                    f"{writer} may PutRecord into {group.name} but not decrypt its online key"
                )


def test_endpoints_can_write_captures_with_their_key(rendered):
    """Data capture: SageMaker writes each capture file as the execution role, encrypted with
    DataCaptureConfig.KmsKeyId (S3 SSE-KMS: a PutObject needs kms:GenerateDataKey)."""
    statements = _statements(rendered)
    for config in rendered.by_type(ENDPOINT_CONFIG):
        capture = config.inputs.get("dataCaptureConfig")
        if not capture:
            continue
        # Its variants' models (autonamed: the mocks leave their names unknown).
        roles = {
            _role_name(m.inputs["executionRoleArn"])
            for m in rendered.by_type(MODEL)
            if m.urn in config.dependencies
        }
        assert roles, config.name
        destination = capture["destinationS3Uri"].removeprefix("s3://")
        obj = f"arn:aws:s3:::{destination.rstrip('/')}/x/AllTraffic/2026/11/30/23/capture.jsonl"
        for role in roles:
            assert allows(statements[role], "s3:PutObject", obj), (role, obj)
            assert allows(statements[role], "kms:GenerateDataKey", capture["kmsKeyId"]), (
                f"{role} cannot encrypt {config.name}'s captures with {capture['kmsKeyId']}"
            )


# SageMaker developer guide, "Give SageMaker AI hosted endpoints access to resources in your
# Amazon VPC": what the execution role of a model with a VpcConfig needs to attach to it.
VPC_ENI_ACTIONS = [
    f"ec2:{verb}NetworkInterface{what}"
    for verb in ("Create", "Delete")
    for what in ("", "Permission")
] + [
    f"ec2:Describe{what}"
    for what in ("NetworkInterfaces", "Vpcs", "DhcpOptions", "Subnets", "SecurityGroups")
]
# EKS user guide: the cluster role ("Amazon EKS cluster IAM role") and the node role ("Amazon
# EKS node IAM role"; the CNI policy while vpc-cni runs without a role of its own).
CLUSTER_POLICIES = {"AmazonEKSClusterPolicy"}
NODE_POLICIES = {
    "AmazonEKSWorkerNodePolicy",
    "AmazonEC2ContainerRegistryReadOnly",
    "AmazonEKS_CNI_Policy",
}


def _trusted_services(rendered: Rendered, role: str) -> set[str]:
    (resource,) = [r for r in rendered.by_type(ROLE) if r.inputs["name"] == role]
    trust = json.loads(resource.inputs["assumeRolePolicy"])["Statement"]
    return {
        service
        for s in trust
        if s["Effect"] == "Allow" and "sts:AssumeRole" in _list(s["Action"])
        for service in _list(s["Principal"].get("Service", []))
    }


def test_service_roles_trust_their_service_and_hold_what_it_needs(rendered):
    statements = _statements(rendered)
    attached: dict[str, set[str]] = {}
    for a in rendered.by_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment"):
        attached.setdefault(a.inputs["role"], set()).add(a.inputs["policyArn"].rsplit("/", 1)[-1])
    for model in rendered.by_type(MODEL):
        role = _role_name(model.inputs["executionRoleArn"])
        assert "sagemaker.amazonaws.com" in _trusted_services(rendered, role), role
        if model.inputs.get("vpcConfig"):
            for action in VPC_ENI_ACTIONS:
                assert allows(statements[role], action, "*"), f"{role}: {action}"
    for group in rendered.by_type(FEATURE_GROUP):
        role = _role_name(group.inputs["roleArn"])
        assert "sagemaker.amazonaws.com" in _trusted_services(rendered, role), role
    for cluster in rendered.by_type("aws:eks/cluster:Cluster"):
        role = _role_name(cluster.inputs["roleArn"])
        assert "eks.amazonaws.com" in _trusted_services(rendered, role), role
        assert CLUSTER_POLICIES <= attached.get(role, set()), role
    cni_role = any(
        a.inputs.get("serviceAccountRoleArn")
        for a in rendered.by_type("aws:eks/addon:Addon")
        if a.inputs["addonName"] == "vpc-cni"
    )
    for group in rendered.by_type(NODE_GROUP):
        role = _role_name(group.inputs["nodeRoleArn"])
        assert "ec2.amazonaws.com" in _trusted_services(rendered, role), role
        needed = NODE_POLICIES - ({"AmazonEKS_CNI_Policy"} if cni_role else set())
        assert needed <= attached.get(role, set()), (role, attached.get(role))


def test_athena_callers_may_get_lake_formation_data_access(rendered):
    """Where Lake Formation governs the Glue catalog (many accounts turn it on for the whole
    catalog), Athena reads the offline store with credentials Lake Formation vends to the
    caller: every role that starts Athena queries needs lakeformation:GetDataAccess (Athena
    user guide, "Manage Lake Formation and Athena user permissions")."""
    statements = _statements(rendered)
    workgroups = [w.outputs["arn"] for w in rendered.by_type("aws:athena/workgroup:Workgroup")]
    callers = [
        role
        for role, s in statements.items()
        if any(allows(s, "athena:StartQueryExecution", w) for w in workgroups)
    ]
    assert callers or not workgroups, "a workgroup nobody may query"
    for role in callers:
        assert allows(statements[role], "lakeformation:GetDataAccess", "*"), (
            f"{role} queries Athena but cannot get Lake Formation's data access"
        )


# Athena user guide: what a caller needs on the query results location ("Amazon S3
# permissions for Athena query results locations") and, for SSE_KMS results and KMS-encrypted
# source data, on the key ("Permissions to encrypted data": kms:GenerateDataKey, kms:Decrypt).
RESULTS_ACTIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
)
RESULTS_BUCKET_ACTIONS = ("s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads")


def test_athena_callers_can_read_the_offline_store_and_write_results(rendered):
    statements = _statements(rendered)
    groups = rendered.by_type(FEATURE_GROUP)
    for workgroup in rendered.by_type("aws:athena/workgroup:Workgroup"):
        results = workgroup.inputs["configuration"]["resultConfiguration"]
        bucket, _, prefix = results["outputLocation"].removeprefix("s3://").partition("/")
        result_key = results["encryptionConfiguration"]["kmsKeyArn"]
        assert results["encryptionConfiguration"]["encryptionOption"] == "SSE_KMS"
        callers = [
            r
            for r, s in statements.items()
            if allows(s, "athena:StartQueryExecution", workgroup.outputs["arn"])
        ]
        for role in callers:
            granted = statements[role]
            for action in RESULTS_ACTIONS:
                obj = f"arn:aws:s3:::{bucket}/{prefix}x.csv"
                assert allows(granted, action, obj), f"{role}: {action} on {obj}"
            for action in RESULTS_BUCKET_ACTIONS:
                assert allows(granted, action, f"arn:aws:s3:::{bucket}"), f"{role}: {action}"
            for action in ("kms:GenerateDataKey", "kms:Decrypt"):
                assert allows(granted, action, result_key), f"{role}: {action} on the result key"
            for group in groups:
                store = group.inputs.get("offlineStoreConfig")
                if not store:
                    continue
                uri = store["s3StorageConfig"]["s3Uri"].removeprefix("s3://").rstrip("/")
                assert allows(granted, "s3:GetObject", f"arn:aws:s3:::{uri}/data/x.parquet")
                assert allows(granted, "kms:Decrypt", store["s3StorageConfig"]["kmsKeyId"])


def test_athena_queries_name_lowercase_databases_and_tables(rendered):
    """Athena: database and table names may hold only lowercase letters, digits and
    underscores (Athena user guide, "Name databases, tables, and columns"); Glue folds
    others to lowercase and a query by the configured name misses."""
    for db in rendered.by_type("aws:glue/catalogDatabase:CatalogDatabase"):
        assert re.fullmatch(r"[a-z0-9_]{1,255}", db.inputs["name"]), db.inputs["name"]
    for group in rendered.by_type(FEATURE_GROUP):
        for table in values_at(group.inputs, "offlineStoreConfig.dataCatalogConfig.tableName"):
            assert re.fullmatch(r"[a-z0-9_]{1,255}", table), table


# IAM quotas: the inline policies of one role may hold 10,240 characters in all, whitespace
# not counted (IAM user guide, "IAM and AWS STS quotas": role policy size).
MAX_INLINE_POLICY_CHARS = 10_240


def test_each_roles_inline_policies_fit_the_iam_quota(rendered):
    sizes: dict[str, int] = {}
    for policy in rendered.by_type(ROLE_POLICY):
        size = len(re.sub(r"\s", "", policy.inputs["policy"]))
        sizes[policy.inputs["role"]] = sizes.get(policy.inputs["role"], 0) + size
    over = {role: size for role, size in sizes.items() if size > MAX_INLINE_POLICY_CHARS}
    assert not over, f"PutRolePolicy fails with LimitExceeded: {over}"


# --- Kubernetes names ------------------------------------------------------------------------

# Kubernetes docs, "Object Names and IDs" and "Labels and Selectors"; the API reference for
# ContainerPort.name (an IANA_SVC_NAME: at most 15 characters).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_PORT_NAME = re.compile(r"(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?")
# Kinds whose name must be a DNS label (1035: starting with a letter, for a Service).
_NAME_RULES = {"Namespace": _DNS_LABEL, "Service": _DNS_1035_LABEL}


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return bool(_LABEL_NAME.fullmatch(name)) and (
        not prefix or (len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(prefix)))
    )


def _kubernetes_problems(where: str, value: Any) -> Iterator[str]:
    """Names, labels, container and port names anywhere in a manifest."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _kubernetes_problems(f"{where}[{i}]", item)
        return
    if not isinstance(value, dict):
        return
    for key in ("labels", "matchLabels"):
        for label, text in (value.get(key) or {}).items():
            if not _label_key_ok(label) or not _LABEL_VALUE.fullmatch(str(text)):
                yield f"{where}.{key}: {label}={text!r}"
    for key in ("containers", "initContainers"):
        for container in value.get(key) or []:
            if not _DNS_LABEL.fullmatch(container["name"]):
                yield f"{where}.{key}: container name {container['name']!r}"
            for port in container.get("ports") or []:
                if "name" in port and not _PORT_NAME.fullmatch(port["name"]):
                    yield f"{where}: port name {port['name']!r} (an IANA_SVC_NAME)"
    for key, item in value.items():
        yield from _kubernetes_problems(f"{where}.{key}", item)


def test_kubernetes_names_and_labels_are_ones_the_api_server_takes(rendered):
    found = []
    for resource in rendered.custom_resources:
        if not resource.type.startswith("kubernetes:") or "metadata" not in resource.inputs:
            continue
        kind = resource.type.rsplit(":", 1)[-1]
        name = resource.inputs["metadata"]["name"]
        rule = _NAME_RULES.get(kind, _DNS_SUBDOMAIN)
        if len(name) > 253 or not rule.fullmatch(name):
            found.append(f"{kind} {name!r}: not a valid name for a {kind}")
        found += list(_kubernetes_problems(f"{kind} {name}", resource.inputs))
    assert not found, "the API server refuses:\n" + "\n".join(found)
