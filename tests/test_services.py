"""The service components (feature store, registry, endpoints, budget) under Pulumi mocks.

Every stack file in `stacks/` is rendered: the four components are built from its spec
with fake bucket names and a fake KMS key, and the tests assert on what they registered.
A new stack file is tested without touching this file.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime.settings
import pulumi_kubernetes as k8s
import pytest
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from components.budget import Budget, BudgetArgs
from components.endpoints import (
    Endpoints,
    EndpointsArgs,
    has_instance_storage,
    model_annotation_path,
    model_package_arn,
)
from components.feature_store import FeatureStore, FeatureStoreArgs, glue_database_name
from components.monitoring import monitored
from components.readiness import FakeAccount, decide
from components.registry import ModelRegistry, ModelRegistryArgs, lifecycle_policy
from components.serving_pod import MODEL_ANNOTATION, POOL_LABEL, PRESTOP_SLEEP_S
from components.spec import BUILD_TAG_PATTERNS, PlatformSpec, load_stack_file, parse_spec
from workloads.monitoring.layout import endpoint_capture_uri
from workloads.serving.lifecycle import LAST_CALL_S
from workloads.serving.server import DRAIN_TIMEOUT_S, ServeSettings

STACKS = sorted(Path(__file__).resolve().parent.parent.glob("stacks/Pulumi.*.yaml"))
ACCOUNT = "123456789012"
KMS = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/0000-test"
FEATURES, ARTIFACTS, LOGS = "test-features", "test-artifacts", "test-logs"
SUBNETS = ["subnet-a", "subnet-b"]
SG = "sg-endpoints"
NAMESPACE, SERVICE_ACCOUNT = "team-ns", "team-sa"

# AWS types that take no tags; every other AWS type registered here must carry them.
NOT_TAGGABLE = {
    "aws:iam/rolePolicy:RolePolicy",
    "aws:ecr/lifecyclePolicy:LifecyclePolicy",
    "aws:appautoscaling/policy:Policy",
    "aws:sns/topicPolicy:TopicPolicy",
    "aws:sns/topicSubscription:TopicSubscription",
}
COMPONENT_TYPES = {
    "mlinfra:featurestore:FeatureStore",
    "mlinfra:registry:ModelRegistry",
    "mlinfra:endpoints:Endpoints",
    "mlinfra:budget:Budget",
}


# --- the harness ---------------------------------------------------------------------------


class _Mocks(pulumi.runtime.Mocks):
    """Resources echo their inputs plus the computed fields the components read."""

    def new_resource(self, args):
        state = dict(args.inputs)
        if args.typ.startswith("aws:"):
            # Autonamed resources get a suffixed name, as the provider would give them.
            state.setdefault("name", f"{args.name}-a1b2c3d")
            state["arn"] = f"arn:aws:mock:us-east-1:{ACCOUNT}:{args.name}"
        if args.typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{state['name']}"
        return f"{args.name}-id", state

    def call(self, args):
        return {"accountId": ACCOUNT, "partition": "aws"}, []


class _Monitor(MockMonitor):
    """Keeps each registration's parent, provider and protect flag."""

    def __init__(self, mocks):
        super().__init__(mocks)
        self.registered: list[Res] = []

    def RegisterResource(self, request):  # noqa: N802 - the gRPC method name
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registered.append(
                Res(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    custom=request.custom,
                    inputs=rpc.deserialize_properties(request.object),
                    parent=request.parent,
                    provider=request.provider,
                    protect=request.protect,
                    ignore_changes=list(request.ignoreChanges),
                )
            )
        return response


@dataclass
class Res:
    type: str
    name: str
    urn: str
    custom: bool
    inputs: dict[str, Any]
    parent: str
    provider: str
    protect: bool
    ignore_changes: list[str] = field(default_factory=list)


@dataclass
class Render:
    spec: PlatformSpec
    resources: list[Res]
    outputs: dict[str, Any]
    logs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def by_type(self, token: str) -> list[Res]:
        return [r for r in self.resources if r.type == token]

    def named(self, token: str, name: str) -> Res:
        found = [r for r in self.by_type(token) if r.name == name]
        assert len(found) == 1, f"expected one {token} {name}, found {len(found)}"
        return found[0]


class _Logs(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())


def render(spec: PlatformSpec) -> Render:
    """Build the four components from `spec` under mocks; resolve their outputs."""
    logs = _Logs()
    logger = logging.getLogger("test_services.pulumi")
    logger.handlers[:] = [logs]
    logger.propagate = False
    pulumi.runtime.settings.reset_options(project="mlinfra", stack=spec.prefix, preview=False)
    monitor = _Monitor(_Mocks())
    pulumi.runtime.set_mocks(
        monitor.mocks,
        project="mlinfra",
        stack=spec.prefix,
        preview=False,
        logger=logger,
        monitor=monitor,
    )
    pulumi.runtime.settings.SETTINGS.rpc_manager.clear()
    pulumi.runtime.settings.SETTINGS.outputs.clear()
    built: dict[str, Any] = {}

    def program():
        features = FeatureStore("features", FeatureStoreArgs(spec, FEATURES, KMS))
        registry = ModelRegistry("registry", ModelRegistryArgs(spec, KMS))
        provider = k8s.Provider("cluster", kubeconfig="{}")
        endpoints = Endpoints(
            "endpoints",
            EndpointsArgs(
                spec,
                serve_repository_url=registry.repository_urls["serve"],
                artifacts_bucket=ARTIFACTS,
                logs_bucket=LOGS,
                kms_key_arn=KMS,
                subnet_ids=SUBNETS,
                security_group_id=SG,
                model_group_names=registry.group_names,
                readiness=decide(spec, FakeAccount.ready()),
                k8s_provider=provider,
                namespace=NAMESPACE,
                service_account=SERVICE_ACCOUNT,
            ),
        )
        budget = Budget("budget", BudgetArgs(spec))
        built.update(features=features, registry=registry, endpoints=endpoints, budget=budget)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _sync_await(run_pulumi_func(program))

    def resolve(value):
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if value is None:
            return None
        return _sync_await(pulumi.Output.from_input(value).future())

    fs, reg, eps = built["features"], built["registry"], built["endpoints"]
    outputs = {
        "database_name": resolve(fs.database_name),
        "feature_role_arn": resolve(fs.role_arn),
        "group_names": resolve(fs.group_names),
        "offline_uris": resolve(fs.offline_uris),
        "repository_urls": resolve(reg.repository_urls),
        "model_group_names": resolve(reg.group_names),
        "endpoint_names": resolve(eps.endpoint_names),
        "endpoint_urls": resolve(eps.endpoint_urls),
        "budget_name": resolve(built["budget"].budget_name),
    }
    return Render(
        spec=spec,
        resources=monitor.registered,
        outputs=outputs,
        logs=logs.messages,
        warnings=[str(w.message) for w in caught],
    )


_CACHE: dict[Path, Render] = {}


@pytest.fixture(params=STACKS, ids=lambda p: p.name.removeprefix("Pulumi.").removesuffix(".yaml"))
def rendered(request) -> Render:
    if request.param not in _CACHE:
        _CACHE[request.param] = render(load_stack_file(request.param))
    return _CACHE[request.param]


def _policy(r: Res) -> dict:
    return json.loads(r.inputs["policy"])


def _statements(doc: dict) -> list[dict]:
    return [
        {
            **s,
            "Action": [s["Action"]] if isinstance(s["Action"], str) else s["Action"],
            "Resource": [s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"],
        }
        for s in doc["Statement"]
    ]


def _assert_no_wildcard_data_access(doc: dict) -> None:
    """No `*` actions at all, and S3/KMS/Glue/SageMaker actions never on resource `*`."""
    for s in _statements(doc):
        for action in s["Action"]:
            assert action != "*" and not action.endswith(":*"), s
            if action.split(":")[0] in {"s3", "kms", "glue", "sagemaker"}:
                assert "*" not in s["Resource"], s


# --- feature store -------------------------------------------------------------------------


def test_feature_groups_have_the_stores_the_spec_asks_for(rendered: Render):
    spec = rendered.spec
    groups = {
        r.inputs["featureGroupName"]: r.inputs
        for r in rendered.by_type("aws:sagemaker/featureGroup:FeatureGroup")
    }
    assert sorted(groups) == sorted(f"{spec.prefix}-{g.name}" for g in spec.feature_groups)
    role = rendered.named("aws:iam/role:Role", "features-role")
    database = rendered.named("aws:glue/catalogDatabase:CatalogDatabase", "features-offline")
    assert database.inputs["name"] == glue_database_name(spec)
    assert database.inputs["locationUri"] == f"s3://{FEATURES}/offline/"

    sagemaker_type = {"string": "String", "integral": "Integral", "fractional": "Fractional"}
    for group in spec.feature_groups:
        fg = groups[f"{spec.prefix}-{group.name}"]
        assert fg["recordIdentifierFeatureName"] == group.record_identifier
        assert fg["eventTimeFeatureName"] == group.event_time
        assert {d["featureName"]: d["featureType"] for d in fg["featureDefinitions"]} == {
            f.name: sagemaker_type[f.type] for f in group.features
        }
        assert fg["roleArn"] == rendered.outputs["feature_role_arn"]
        assert fg["roleArn"].endswith(role.name)

        online = fg.get("onlineStoreConfig")
        if group.online:
            assert online["enableOnlineStore"] is True
            assert online["securityConfig"]["kmsKeyId"] == KMS
            if group.online_ttl_days:
                assert online["ttlDuration"] == {"unit": "Days", "value": group.online_ttl_days}
            else:
                assert "ttlDuration" not in online
        else:
            assert online is None

        offline = fg.get("offlineStoreConfig")
        if group.offline:
            uri = f"s3://{FEATURES}/offline/{group.name}"
            assert offline["s3StorageConfig"] == {"s3Uri": uri, "kmsKeyId": KMS}
            assert offline["dataCatalogConfig"]["database"] == glue_database_name(spec)
            assert offline["disableGlueTableCreation"] is False
            assert offline["tableFormat"] == "Glue"
            assert rendered.outputs["offline_uris"][group.name] == uri
        else:
            assert offline is None
            assert group.name not in rendered.outputs["offline_uris"]
        assert rendered.outputs["group_names"][group.name] == f"{spec.prefix}-{group.name}"


def test_feature_store_role_is_scoped_to_the_team(rendered: Render):
    spec = rendered.spec
    role = rendered.named("aws:iam/role:Role", "features-role")
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "sagemaker.amazonaws.com"}]
    doc = _policy(rendered.named("aws:iam/rolePolicy:RolePolicy", "features-role-policy"))
    _assert_no_wildcard_data_access(doc)
    resources = {res for s in _statements(doc) for res in s["Resource"]}
    db = glue_database_name(spec)
    assert resources == {
        f"arn:aws:s3:::{FEATURES}/offline/*",
        f"arn:aws:s3:::{FEATURES}",
        KMS,
        f"arn:aws:glue:{spec.region}:{ACCOUNT}:catalog",
        f"arn:aws:glue:{spec.region}:{ACCOUNT}:database/{db}",
        f"arn:aws:glue:{spec.region}:{ACCOUNT}:table/{db}/*",
    }


# --- registry ------------------------------------------------------------------------------


def test_ecr_repositories(rendered: Render):
    spec = rendered.spec
    repos = {r.inputs["name"]: r for r in rendered.by_type("aws:ecr/repository:Repository")}
    assert sorted(repos) == [f"{spec.prefix}-serve", f"{spec.prefix}-train"]
    for repo in repos.values():
        assert repo.inputs["imageScanningConfiguration"] == {"scanOnPush": True}
        assert repo.inputs["imageTagMutability"] == "IMMUTABLE"
        assert repo.inputs["encryptionConfigurations"] == [{"encryptionType": "KMS", "kmsKey": KMS}]
        assert repo.inputs["forceDelete"] is (not spec.is_prod)

    policies = rendered.by_type("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert sorted(p.inputs["repository"] for p in policies) == sorted(repos)
    registry = spec.model_registry
    for p in policies:
        rules = [r["selection"] for r in _policy(p)["rules"]]
        (untagged,) = [r for r in rules if r["tagStatus"] == "untagged"]
        assert untagged["countType"] == "sinceImagePushed"
        assert untagged["countNumber"] == registry.untagged_image_expiry_days
        tagged = [r for r in rules if r["tagStatus"] == "tagged"]
        assert [r["tagPatternList"] for r in tagged] == [[t] for t in BUILD_TAG_PATTERNS]
        assert all(r["countType"] == "imageCountMoreThan" for r in tagged)
        assert all(r["countNumber"] == registry.keep_images for r in tagged)
    assert rendered.outputs["repository_urls"]["serve"].endswith(f"/{spec.prefix}-serve")


def test_model_package_groups(rendered: Render):
    spec = rendered.spec
    groups = {
        r.inputs["modelPackageGroupName"]: r
        for r in rendered.by_type("aws:sagemaker/modelPackageGroup:ModelPackageGroup")
    }
    declared = spec.model_registry.model_groups
    assert sorted(groups) == sorted(f"{spec.prefix}-{g.name}" for g in declared)
    for g in declared:
        group = groups[f"{spec.prefix}-{g.name}"]
        assert group.inputs["modelPackageGroupDescription"]
        if g.approval_gate:
            assert g.approval_gate.metric in group.inputs["modelPackageGroupDescription"]
        assert rendered.outputs["model_group_names"][g.name] == f"{spec.prefix}-{g.name}"


def test_lifecycle_policy_rules_are_valid_for_ecr():
    rules = lifecycle_policy(5, 3)["rules"]
    assert [r["rulePriority"] for r in rules] == list(range(1, len(BUILD_TAG_PATTERNS) + 2))
    # ECR requires a tag pattern or prefix on rules that select tagged images.
    assert all(
        "tagPatternList" in r["selection"] for r in rules if r["selection"]["tagStatus"] == "tagged"
    )


# --- endpoints -----------------------------------------------------------------------------


def test_sagemaker_endpoints(rendered: Render):
    spec = rendered.spec
    wanted = [ep for ep in spec.endpoints if ep.kind == "sagemaker"]
    # The stack creates pinned endpoints; the first `mlinfra deploy` creates unpinned ones.
    pinned = [ep for ep in wanted if ep.model_version is not None]
    for token in (
        "aws:sagemaker/model:Model",
        "aws:sagemaker/endpointConfiguration:EndpointConfiguration",
        "aws:sagemaker/endpoint:Endpoint",
        "aws:appautoscaling/target:Target",
        "aws:appautoscaling/policy:Policy",
    ):
        assert sorted(r.name for r in rendered.by_type(token)) == sorted(
            f"{spec.prefix}-{ep.name}"
            + ("-scaling" if "target" in token else "")
            + ("-invocations" if "policy" in token else "")
            for ep in pinned
        ), token
    # Alarms need no endpoint: every SageMaker endpoint has its two from the first `up`
    # (the dataset-drift alarm of a captured endpoint belongs to its monitor).
    alarms = [
        a
        for a in rendered.by_type("aws:cloudwatch/metricAlarm:MetricAlarm")
        if a.inputs.get("metricName") != "dataset_drift"
    ]
    assert len(alarms) == 2 * len(wanted)
    topics = rendered.by_type("aws:sns/topic:Topic")
    # The topic is there for SageMaker endpoints, and for the drift alarms of captured ones.
    if not wanted and not monitored(spec):
        assert topics == []
        return
    # Alarms mail the team through one topic encrypted with the team key.
    [topic] = topics
    topic_arn = f"arn:aws:mock:us-east-1:{ACCOUNT}:{topic.name}"  # as the mocks answer
    assert topic.inputs["name"] == f"{spec.prefix}-endpoint-alarms"
    assert topic.inputs["kmsMasterKeyId"] == KMS
    subscriptions = rendered.by_type("aws:sns/topicSubscription:TopicSubscription")
    assert sorted(s.inputs["endpoint"] for s in subscriptions) == sorted(spec.budget.alert_emails)
    assert {s.inputs["protocol"] for s in subscriptions} == {"email"}
    assert {s.inputs["topic"] for s in subscriptions} == {topic_arn}
    [policy_resource] = rendered.by_type("aws:sns/topicPolicy:TopicPolicy")
    [topic_policy] = json.loads(policy_resource.inputs["policy"])["Statement"]
    assert topic_policy["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert topic_policy["Action"] == "sns:Publish"
    assert topic_policy["Resource"] == topic_arn
    for ep in wanted:
        physical = f"{spec.prefix}-{ep.name}"
        assert rendered.outputs["endpoint_names"][ep.name] == physical
        assert rendered.outputs["endpoint_urls"][ep.name] is None
        errors = rendered.named("aws:cloudwatch/metricAlarm:MetricAlarm", f"{physical}-5xx")
        assert errors.inputs["name"] == f"{physical}-5xx-errors"
        assert errors.inputs["metricName"] == "Invocation5XXErrors"
        assert errors.inputs["threshold"] == ep.max_5xx_errors
        assert errors.inputs["period"] == 300
        latency = rendered.named("aws:cloudwatch/metricAlarm:MetricAlarm", f"{physical}-latency")
        assert latency.inputs["name"] == f"{physical}-model-latency"
        assert latency.inputs["metricName"] == "ModelLatency"
        assert latency.inputs["threshold"] == ep.latency_alarm_ms * 1000  # microseconds
        for alarm in (errors, latency):
            assert alarm.inputs["alarmActions"] == [topic_arn]
            assert alarm.inputs["okActions"] == [topic_arn]
            assert alarm.inputs["namespace"] == "AWS/SageMaker"
            assert alarm.inputs["treatMissingData"] == "notBreaching"  # before the endpoint too
            assert alarm.inputs["dimensions"] == {
                "EndpointName": physical,
                "VariantName": "AllTraffic",
            }
        if ep.model_version is None:
            continue
        model = rendered.named("aws:sagemaker/model:Model", physical).inputs
        # The package carries its image and artifact, as registered and approved.
        assert model["primaryContainer"] == {
            "modelPackageName": model_package_arn(
                "aws", spec.region, ACCOUNT, f"{spec.prefix}-{ep.model_group}", ep.model_version
            )
        }
        assert model["vpcConfig"] == {"subnets": SUBNETS, "securityGroupIds": [SG]}
        assert model["enableNetworkIsolation"] is True
        assert model["tags"] == spec.tags

        config = rendered.named(
            "aws:sagemaker/endpointConfiguration:EndpointConfiguration", physical
        ).inputs
        [variant] = config["productionVariants"]
        assert variant["instanceType"] == ep.instance_type
        assert variant["initialInstanceCount"] == ep.min_instances
        assert variant["modelName"] == f"{physical}-a1b2c3d"
        if has_instance_storage(ep.instance_type):
            assert "kmsKeyArn" not in config
        else:
            assert config["kmsKeyArn"] == KMS
        capture = config.get("dataCaptureConfig")
        if ep.data_capture.enabled:
            assert capture["enableCapture"] is True
            # SageMaker appends <endpoint>/<variant>/...: the destination must not name it
            assert capture["destinationS3Uri"] == f"s3://{LOGS}/data-capture"
            files = endpoint_capture_uri(capture["destinationS3Uri"], physical, "AllTraffic")
            assert files == f"s3://{LOGS}/data-capture/{physical}/AllTraffic"
            assert capture["kmsKeyId"] == KMS
            assert capture["initialSamplingPercentage"] == ep.data_capture.sampling_percent
            assert {o["captureMode"] for o in capture["captureOptions"]} == {"Input", "Output"}
        else:
            assert capture is None

        endpoint = rendered.named("aws:sagemaker/endpoint:Endpoint", physical).inputs
        assert endpoint["name"] == physical
        assert endpoint["endpointConfigName"] == f"{physical}-a1b2c3d"

        target = rendered.named("aws:appautoscaling/target:Target", f"{physical}-scaling")
        assert target.inputs["resourceId"] == f"endpoint/{physical}/variant/AllTraffic"
        assert target.inputs["scalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
        assert target.inputs["serviceNamespace"] == "sagemaker"
        assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (
            ep.min_instances,
            ep.max_instances,
        )
        policy = rendered.named("aws:appautoscaling/policy:Policy", f"{physical}-invocations")
        assert policy.inputs["policyType"] == "TargetTrackingScaling"
        assert policy.inputs["resourceId"] == target.inputs["resourceId"]
        tracking = policy.inputs["targetTrackingScalingPolicyConfiguration"]
        assert tracking["targetValue"] == ep.target_invocations_per_instance
        assert tracking["predefinedMetricSpecification"] == {
            "predefinedMetricType": "SageMakerVariantInvocationsPerInstance"
        }


def test_sagemaker_execution_role(rendered: Render):
    spec = rendered.spec
    roles = [
        r for r in rendered.by_type("aws:iam/role:Role") if r.name == "endpoints-sagemaker-role"
    ]
    if not any(ep.kind == "sagemaker" for ep in spec.endpoints):
        assert roles == []
        return
    [role] = roles
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "sagemaker.amazonaws.com"}]
    doc = _policy(
        rendered.named("aws:iam/rolePolicy:RolePolicy", "endpoints-sagemaker-role-policy")
    )
    _assert_no_wildcard_data_access(doc)
    by_sid = {s["Sid"]: s for s in _statements(doc)}
    assert by_sid["ReadModels"]["Resource"] == [f"arn:aws:s3:::{ARTIFACTS}/*"]
    assert by_sid["WriteDataCapture"]["Resource"] == [f"arn:aws:s3:::{LOGS}/data-capture/*"]
    assert by_sid["TeamKey"]["Resource"] == [KMS]
    assert by_sid["PullServeImage"]["Resource"] == [
        f"arn:aws:ecr:{spec.region}:{ACCOUNT}:repository/{spec.prefix}-serve"
    ]


def test_kubernetes_endpoints(rendered: Render):
    spec = rendered.spec
    wanted = [ep for ep in spec.endpoints if ep.kind == "kubernetes"]
    for token in (
        "kubernetes:apps/v1:Deployment",
        "kubernetes:core/v1:Service",
        "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
    ):
        assert len(rendered.by_type(token)) == len(wanted), token
    serve_url = rendered.outputs["repository_urls"]["serve"]
    for ep in wanted:
        physical = f"{spec.prefix}-{ep.name}"
        deployment = rendered.named("kubernetes:apps/v1:Deployment", physical).inputs
        assert deployment["metadata"]["namespace"] == NAMESPACE
        pod = deployment["spec"]["template"]["spec"]
        [serve] = pod["containers"]
        assert serve["image"] == f"{serve_url}:{ep.image_tag}"
        assert serve["ports"] == [{"name": "http", "containerPort": 8080}]
        for probe in ("readinessProbe", "livenessProbe"):
            assert serve[probe]["httpGet"] == {"path": "/ping", "port": "http"}
        # SIGTERM only once the Service stopped routing here, and the grace period (counted
        # from preStop) covers the sleep and the server's whole drain.
        assert serve["lifecycle"]["preStop"] == {"sleep": {"seconds": PRESTOP_SLEEP_S}}
        assert PRESTOP_SLEEP_S >= 5
        drain = ServeSettings().drain_s + LAST_CALL_S + DRAIN_TIMEOUT_S
        assert pod["terminationGracePeriodSeconds"] >= PRESTOP_SLEEP_S + drain + 5
        assert serve["resources"]["requests"] == {"cpu": ep.cpu, "memory": ep.memory}
        assert serve["securityContext"]["readOnlyRootFilesystem"] is True
        assert serve["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["nodeSelector"] == {POOL_LABEL: ep.node_pool}
        assert pod["serviceAccountName"] == SERVICE_ACCOUNT
        gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        if ep.gpus:
            assert serve["resources"]["limits"]["nvidia.com/gpu"] == str(ep.gpus)
            assert gpu_toleration in pod["tolerations"]
        else:
            assert "nvidia.com/gpu" not in serve["resources"]["limits"]
            assert gpu_toleration not in pod.get("tolerations", [])
        # The init container fetches the model package the pod's annotation names.
        [fetch] = pod["initContainers"]
        env = {e["name"]: e for e in fetch["env"]}
        assert env["MODEL_PACKAGE_ARN"]["valueFrom"] == {
            "fieldRef": {"fieldPath": f"metadata.annotations['{MODEL_ANNOTATION}']"}
        }
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        ignored = rendered.named("kubernetes:apps/v1:Deployment", physical).ignore_changes
        if ep.model_version is not None:
            # Pinned and approved (FakeAccount.ready): the stack names the version and the
            # HorizontalPodAutoscaler owns the count.
            assert annotations[MODEL_ANNOTATION] == model_package_arn(
                "aws", spec.region, ACCOUNT, f"{spec.prefix}-{ep.model_group}", ep.model_version
            )
            assert "replicas" not in deployment["spec"]
            assert ignored == []
        else:
            # `mlinfra deploy` sets the model and scales up from zero; the stack ignores both.
            assert MODEL_ANNOTATION not in annotations
            assert deployment["spec"]["replicas"] == 0
            assert sorted(ignored) == sorted(["spec.replicas", model_annotation_path()])

        service = rendered.named("kubernetes:core/v1:Service", physical).inputs
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        hpa = rendered.named("kubernetes:autoscaling/v2:HorizontalPodAutoscaler", physical)
        assert hpa.inputs["spec"]["scaleTargetRef"]["name"] == physical
        assert hpa.inputs["spec"]["minReplicas"] == ep.min_instances
        assert hpa.inputs["spec"]["maxReplicas"] == ep.max_instances
        [metric] = hpa.inputs["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"

        assert rendered.outputs["endpoint_names"][ep.name] == physical
        assert rendered.outputs["endpoint_urls"][ep.name] == (
            f"http://{physical}.{NAMESPACE}.svc.cluster.local"
        )


# --- budget --------------------------------------------------------------------------------


def test_budget(rendered: Render):
    spec = rendered.spec
    [budget] = rendered.by_type("aws:budgets/budget:Budget")
    b = budget.inputs
    assert (b["budgetType"], b["timeUnit"], b["limitUnit"]) == ("COST", "MONTHLY", "USD")
    assert float(b["limitAmount"]) == spec.budget.monthly_limit_usd
    assert b["filterExpression"] == {
        "ands": [
            {"tags": {"key": "team", "values": [spec.team], "matchOptions": ["EQUALS"]}},
            {
                "tags": {
                    "key": "environment",
                    "values": [spec.environment],
                    "matchOptions": ["EQUALS"],
                }
            },
        ]
    }
    sent = {(n["notificationType"], n["threshold"]) for n in b["notifications"]}
    top = max(spec.budget.thresholds_percent)
    assert sent == {("ACTUAL", t) for t in spec.budget.thresholds_percent} | {("FORECASTED", top)}
    for n in b["notifications"]:
        assert n["thresholdType"] == "PERCENTAGE"
        assert n["subscriberEmailAddresses"] == spec.budget.alert_emails
    assert rendered.outputs["budget_name"] == f"{spec.prefix}-monthly"


# --- across the components -----------------------------------------------------------------


def test_tags_on_everything_taggable(rendered: Render):
    tags = rendered.spec.tags
    for r in rendered.resources:
        if r.type.startswith("aws:") and r.type not in NOT_TAGGABLE:
            assert tags.items() <= r.inputs.get("tags", {}).items(), f"{r.type} {r.name}"
        elif r.type.startswith("kubernetes:") and r.custom and "metadata" in r.inputs:
            assert tags.items() <= r.inputs["metadata"]["labels"].items(), f"{r.type} {r.name}"


def test_children_are_parented_to_their_component(rendered: Render):
    components = {r.urn: r for r in rendered.resources if r.type in COMPONENT_TYPES}
    assert len(components) == 4
    provider = rendered.named("pulumi:providers:kubernetes", "cluster")
    for r in rendered.resources:
        if r.type in COMPONENT_TYPES or r.type.startswith("pulumi:providers:"):
            continue
        assert r.parent in components, f"{r.type} {r.name} has parent {r.parent}"
        if r.type.startswith("kubernetes:"):
            assert components[r.parent].type == "mlinfra:endpoints:Endpoints"
            assert r.provider.startswith(provider.urn), r.name


def test_prod_protects_feature_groups_and_model_groups(rendered: Render):
    spec = rendered.spec
    for token in (
        "aws:sagemaker/featureGroup:FeatureGroup",
        "aws:glue/catalogDatabase:CatalogDatabase",
        "aws:sagemaker/modelPackageGroup:ModelPackageGroup",
    ):
        for r in rendered.by_type(token):
            assert r.protect is spec.protect_data, f"{token} {r.name}"
    for r in rendered.resources:
        if r.type.startswith("aws:sagemaker/endpoint") or r.type.startswith("aws:ecr"):
            assert r.protect is False


def test_no_deprecation_warnings(rendered: Render):
    deprecated = [m for m in rendered.logs + rendered.warnings if "deprecat" in m.lower()]
    assert deprecated == []


# --- helpers and bad inputs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance_type", "local_nvme"),
    [
        ("ml.m5.large", False),
        ("ml.c6i.xlarge", False),
        ("ml.inf2.xlarge", False),
        ("ml.g5.xlarge", True),
        ("ml.g4dn.xlarge", True),
        ("ml.m5d.large", True),
        ("ml.c6id.2xlarge", True),
        ("ml.p4d.24xlarge", True),
    ],
)
def test_instance_storage_table(instance_type: str, local_nvme: bool):
    assert has_instance_storage(instance_type) is local_nvme


def _spec(endpoint: dict[str, Any]) -> PlatformSpec:
    return parse_spec(
        {
            "mlinfra:team": "ml",
            "mlinfra:environment": "dev",
            "mlinfra:costCenter": "cc-1",
            "mlinfra:modelRegistry": {"modelGroups": [{"name": "churn"}]},
            "mlinfra:endpoints": [endpoint],
            "mlinfra:budget": {"monthlyLimitUsd": 10, "alertEmails": ["a@example.com"]},
        },
        "test",
    )


@pytest.mark.parametrize(
    ("endpoint", "with_cluster", "field_path"),
    [
        (
            {"name": "churn", "modelGroup": "churn", "kind": "kubernetes"},
            False,
            "mlinfra:endpoints[0].kind",
        ),
        (
            {"name": "Churn", "modelGroup": "churn", "kind": "kubernetes"},
            True,
            "mlinfra:endpoints[0].name",
        ),
    ],
)
def test_bad_endpoint_inputs_name_the_field(endpoint, with_cluster, field_path):
    spec = _spec(endpoint)

    def program():
        provider = k8s.Provider("cluster", kubeconfig="{}") if with_cluster else None
        Endpoints(
            "endpoints",
            EndpointsArgs(
                spec,
                serve_repository_url="repo",
                artifacts_bucket=ARTIFACTS,
                logs_bucket=LOGS,
                kms_key_arn=KMS,
                subnet_ids=SUBNETS,
                security_group_id=SG,
                model_group_names={"churn": "ml-dev-churn"},
                readiness=decide(spec, FakeAccount.ready()),
                k8s_provider=provider,
                namespace=NAMESPACE if with_cluster else None,
            ),
        )

    pulumi.runtime.settings.reset_options(project="mlinfra", stack="bad", preview=False)
    monitor = _Monitor(_Mocks())
    pulumi.runtime.set_mocks(monitor.mocks, project="mlinfra", stack="bad", monitor=monitor)
    with pytest.raises(ValueError, match="^" + re.escape(field_path) + ":"):
        _sync_await(run_pulumi_func(program))
    assert not any(r.type.startswith("aws:") for r in monitor.registered)


# --- inside the real program (components.mockrun) ------------------------------------------


@pytest.fixture(params=[p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in STACKS])
def program(request):
    """The whole program (`stacks/__main__.py`) for one stack, rendered under mocks."""
    from tests.stack_support import rendered_stack

    return rendered_stack(request.param)


def test_program_wires_the_services_to_the_lake_network_and_cluster(program):
    from workloads.platform import PlatformDescriptor

    descriptor = PlatformDescriptor.model_validate(program.outputs["platform"])
    spec = load_stack_file(Path("stacks") / f"Pulumi.{program.stack}.yaml")
    kms = program.one("aws:kms/key:Key", "datalake-key").outputs["arn"]
    buckets = {k: v.removeprefix("s3://") for k, v in descriptor.buckets.model_dump().items()}

    for fg in program.by_type("aws:sagemaker/featureGroup:FeatureGroup"):
        offline = fg.inputs.get("offlineStoreConfig")
        if offline:
            assert offline["s3StorageConfig"]["s3Uri"].startswith(f"s3://{buckets['features']}/")
            assert offline["s3StorageConfig"]["kmsKeyId"] == kms
    for group in spec.feature_groups:
        ref = descriptor.feature_store.groups[group.name]
        assert ref.offline_uri == (
            f"s3://{buckets['features']}/offline/{group.name}" if group.offline else None
        )
    for repo in program.by_type("aws:ecr/repository:Repository"):
        assert repo.inputs["encryptionConfigurations"][0]["kmsKey"] == kms

    for config in program.by_type("aws:sagemaker/endpointConfiguration:EndpointConfiguration"):
        capture = config.inputs["dataCaptureConfig"]
        assert capture["destinationS3Uri"] == f"s3://{buckets['logs']}/data-capture"
        assert capture["kmsKeyId"] == kms
    subnets = {s.id for s in program.by_type("aws:ec2/subnet:Subnet")} or set(
        spec.network.private_subnet_ids
    )
    for model in program.by_type("aws:sagemaker/model:Model"):
        assert set(model.inputs["vpcConfig"]["subnets"]) <= subnets
        assert len(model.inputs["vpcConfig"]["securityGroupIds"]) == 1

    [provider] = program.by_type("pulumi:providers:kubernetes")
    endpoints = program.one("mlinfra:endpoints:Endpoints")
    for r in program.resources:
        if r.parent == endpoints.urn and r.type.startswith("kubernetes:"):
            assert r.provider.startswith(provider.urn), r.name
            assert r.inputs["metadata"]["namespace"] == descriptor.cluster.namespace
    for ep in spec.endpoints:
        ref = descriptor.endpoints[ep.name]
        assert ref.name == f"{spec.prefix}-{ep.name}"
        if ep.kind == "kubernetes":
            assert ref.url == (
                f"http://{spec.prefix}-{ep.name}.{descriptor.cluster.namespace}.svc.cluster.local"
            )
        else:
            assert ref.url is None


def test_program_service_resources_are_children_of_their_components(program):
    owned = {t: program.one(t) for t in COMPONENT_TYPES}
    for r in program.resources:
        component = program.component_of(r)
        if component is not None and component.type in COMPONENT_TYPES:
            assert r.parent == component.urn, f"{r.type} {r.name}"
    assert all(c.parent and "pulumi:pulumi:Stack" in c.parent for c in owned.values())
    assert not [w for w in program.warnings if "deprecat" in w.lower()]
    assert not [m for _, m in program.logs if "deprecat" in m.lower()]
