"""Every stack config in stacks/, rendered by the real program under Pulumi's mock runtime.

Parametrised over the stack files on disk: a new `stacks/Pulumi.<stack>.yaml` is tested
without touching this file. Assertions read what the program registered (type, inputs,
parent, options), compared with the stack's own spec. Feature groups, registry,
endpoints and budget internals are asserted in tests/test_services.py; here they are
covered by the whole-program checks (tags, parents, descriptor, warnings).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.mockrun import (
    ExistingVpc,
    Rendered,
    RenderedResource,
    render_stack,
    stack_config,
)
from components.monitoring import monitored
from components.network import INTERFACE_ENDPOINTS
from components.serving_pod import capture_prefixes
from components.spec import BUCKET_PURPOSES, PlatformSpec, SpecError, load_stack_file
from components.storage import ACCESS_LOGS
from tests.stack_support import STACK_FILES, STACKS_DIR, rendered_stack, stack_name
from workloads.platform import PlatformDescriptor

# Anything the program warns about while it runs fails the test.
pytestmark = pytest.mark.filterwarnings("error")

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
BUCKET = "aws:s3/bucket:Bucket"


@pytest.fixture(params=STACK_FILES, ids=stack_name)
def stack(request) -> tuple[PlatformSpec, Rendered]:
    return load_stack_file(request.param), rendered_stack(stack_name(request.param))


def _by_input(rendered: Rendered, token: str, key: str, value: Any) -> list[RenderedResource]:
    return [r for r in rendered.by_type(token) if r.inputs.get(key) == value]


def _policy(resource: RenderedResource, key: str = "policy") -> dict[str, Any]:
    return json.loads(resource.inputs[key])


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


# --- the descriptor --------------------------------------------------------------------------


def test_platform_output_is_a_valid_descriptor(stack):
    spec, rendered = stack
    descriptor = PlatformDescriptor.model_validate(rendered.outputs["platform"])
    assert descriptor.backend == "aws"
    assert (descriptor.team, descriptor.environment, descriptor.region) == (
        spec.team,
        spec.environment,
        spec.region,
    )
    bucket_names = {r.outputs["bucket"] for r in rendered.by_type(BUCKET)}
    for purpose in BUCKET_PURPOSES:
        uri = getattr(descriptor.buckets, purpose)
        assert uri.startswith("s3://") and uri.removeprefix("s3://") in bucket_names
    assert set(descriptor.feature_store.groups) == {g.name for g in spec.feature_groups}
    for group in spec.feature_groups:
        ref = descriptor.feature_store.groups[group.name]
        assert ref.name.startswith(spec.prefix)
        assert (ref.offline_uri is not None) == group.offline
        if group.offline:
            assert ref.offline_uri.startswith(descriptor.buckets.features + "/")
    workgroups = [w.inputs["name"] for w in rendered.by_type("aws:athena/workgroup:Workgroup")]
    offline = any(g.offline for g in spec.feature_groups)
    assert workgroups == ([descriptor.feature_store.workgroup] if offline else [])
    assert set(descriptor.registry.model_groups) == {
        g.name for g in spec.model_registry.model_groups
    }
    assert set(descriptor.registry.repositories) == {"train", "serve"}
    assert set(descriptor.endpoints) == {e.name for e in spec.endpoints}
    assert descriptor.cluster is not None
    assert descriptor.cluster.name == rendered.one("aws:eks/cluster:Cluster").inputs["name"]
    assert set(descriptor.cluster.node_pools) == {"system"} | {
        p.name for p in spec.cluster.gpu_pools
    }
    registered = {r.inputs["nodeGroupName"] for r in rendered.by_type(NODE_GROUP)}
    assert {p.node_group for p in descriptor.cluster.node_pools.values()} == registered


# --- GPU node pools ---------------------------------------------------------------------------


def test_one_managed_node_group_per_gpu_pool_plus_system(stack):
    spec, rendered = stack
    names = sorted(r.inputs["nodeGroupName"] for r in rendered.by_type(NODE_GROUP))
    expected = [f"{spec.prefix}-{p}" for p in ["system", *(p.name for p in spec.cluster.gpu_pools)]]
    assert names == sorted(expected)


def test_gpu_node_groups_match_their_pool(stack):
    spec, rendered = stack
    templates = {r.id: r for r in rendered.by_type(LAUNCH_TEMPLATE)}
    for pool in spec.cluster.gpu_pools:
        (group,) = _by_input(rendered, NODE_GROUP, "nodeGroupName", f"{spec.prefix}-{pool.name}")
        inputs = group.inputs
        assert inputs["amiType"] == pool.ami_type
        assert "NVIDIA" in inputs["amiType"]
        assert inputs["instanceTypes"] == pool.instance_types
        assert inputs["capacityType"] == ("SPOT" if pool.capacity == "spot" else "ON_DEMAND")
        assert inputs["scalingConfig"] == {
            "minSize": pool.min_size,
            "desiredSize": pool.desired,
            "maxSize": pool.max_size,
        }
        assert inputs["taints"] == [GPU_TAINT]
        labels = inputs["labels"]
        assert labels["mlinfra.io/pool"] == pool.name
        assert labels["mlinfra.io/gpu"] == pool.gpu
        assert pool.labels.items() <= labels.items()

        # Scale from zero: the autoscaler learns labels, taint and GPUs from tags.
        tags = inputs["tags"]
        template_tag = "k8s.io/cluster-autoscaler/node-template"
        assert tags[f"{template_tag}/taint/nvidia.com/gpu"] == "true:NoSchedule"
        assert tags[f"{template_tag}/label/mlinfra.io/pool"] == pool.name
        assert tags[f"{template_tag}/resources/nvidia.com/gpu"] == str(pool.gpus_per_node)
        assert tags["k8s.io/cluster-autoscaler/enabled"] == "true"

        template = templates[inputs["launchTemplate"]["id"]]
        assert template.parent == group.parent
        meta = template.inputs["metadataOptions"]
        assert meta["httpTokens"] == "required"
        assert meta["httpPutResponseHopLimit"] == 2
        (root,) = template.inputs["blockDeviceMappings"]
        assert root["ebs"]["encrypted"] == "true"
        assert root["ebs"]["volumeSize"] == pool.disk_size_gib
        assert root["deviceName"] == (
            "/dev/xvdb" if pool.ami_type.startswith("BOTTLEROCKET") else "/dev/xvda"
        )


def test_system_node_group_is_untainted_on_demand(stack):
    spec, rendered = stack
    (group,) = _by_input(rendered, NODE_GROUP, "nodeGroupName", f"{spec.prefix}-system")
    system = spec.cluster.system_pool
    assert group.inputs["taints"] == []
    assert group.inputs["capacityType"] == "ON_DEMAND"
    assert group.inputs["instanceTypes"] == [system.instance_type]
    assert group.inputs["scalingConfig"]["minSize"] == system.min_size
    assert group.inputs["scalingConfig"]["maxSize"] == system.max_size
    templates = {r.id: r for r in rendered.by_type(LAUNCH_TEMPLATE)}
    template = templates[group.inputs["launchTemplate"]["id"]]
    assert template.inputs["metadataOptions"]["httpTokens"] == "required"
    assert len(templates) == len(spec.cluster.gpu_pools) + 1


# --- the cluster ------------------------------------------------------------------------------


def test_cluster_encrypts_secrets_logs_everything_and_stays_private(stack):
    spec, rendered = stack
    cluster = rendered.one("aws:eks/cluster:Cluster")
    inputs = cluster.inputs
    assert inputs["name"] == spec.prefix
    assert inputs["version"] == spec.cluster.kubernetes_version
    keys = {k.outputs["arn"]: k for k in rendered.by_type("aws:kms/key:Key")}
    secrets_key = keys[inputs["encryptionConfig"]["provider"]["keyArn"]]
    assert secrets_key.inputs["enableKeyRotation"] is True
    assert inputs["encryptionConfig"]["resources"] == ["secrets"]
    role_name = inputs["roleArn"].rsplit("/", 1)[-1]
    (key_use,) = _by_input(rendered, "aws:iam/rolePolicy:RolePolicy", "role", role_name)
    (statement,) = _policy(key_use)["Statement"]
    assert statement["Resource"] == secrets_key.outputs["arn"]
    assert not any("*" in a for a in _actions(statement))
    assert set(inputs["enabledClusterLogTypes"]) == {
        "api",
        "audit",
        "authenticator",
        "controllerManager",
        "scheduler",
    }
    vpc = inputs["vpcConfig"]
    assert vpc["endpointPrivateAccess"] is True
    assert vpc["endpointPublicAccess"] is spec.cluster.public_endpoint
    issuer = cluster.outputs["identities"][0]["oidcs"][0]["issuer"]
    oidc = rendered.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider")
    assert oidc.inputs["url"] == issuer
    assert oidc.inputs["clientIdLists"] == ["sts.amazonaws.com"]


def test_kubernetes_resources_go_through_the_cluster_provider(stack):
    _, rendered = stack
    (provider,) = rendered.by_type("pulumi:providers:kubernetes")
    kubeconfig = json.loads(provider.inputs["kubeconfig"])
    cluster = rendered.one("aws:eks/cluster:Cluster")
    assert kubeconfig["clusters"][0]["cluster"]["server"] == cluster.outputs["endpoint"]
    assert kubeconfig["users"][0]["user"]["exec"]["args"][:2] == ["eks", "get-token"]
    on_cluster = [r for r in rendered.resources if r.type.startswith("kubernetes:")]
    assert on_cluster
    for resource in on_cluster:
        assert resource.provider is not None
        assert resource.provider.startswith(provider.urn + "::"), resource.name


def test_nvidia_device_plugin_tolerates_the_gpu_taint(stack):
    _, rendered = stack
    plugin = rendered.one("kubernetes:apps/v1:DaemonSet")
    pod = plugin.inputs["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    keys = {e["key"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]}
    assert keys == {"mlinfra.io/nvidia-device-plugin"}
    assert "k8s-device-plugin" in pod["containers"][0]["image"]


def test_team_namespace_has_a_gpu_quota_and_limit_range(stack):
    spec, rendered = stack
    namespace = rendered.one("kubernetes:core/v1:Namespace")
    assert namespace.inputs["metadata"]["name"] == spec.team
    labels = namespace.inputs["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == (
        f"v{spec.cluster.kubernetes_version}"
    )
    quota = rendered.one("kubernetes:core/v1:ResourceQuota")
    assert quota.inputs["metadata"]["namespace"] == spec.team
    hard = quota.inputs["spec"]["hard"]
    q = spec.cluster.quota
    assert hard == {
        "requests.nvidia.com/gpu": str(q.gpus),
        "requests.cpu": q.cpu,
        "limits.cpu": q.cpu,
        "requests.memory": q.memory,
        "limits.memory": q.memory,
        "pods": str(q.pods),
        "requests.storage": q.storage,
        "persistentvolumeclaims": str(q.volume_claims),
        "services.loadbalancers": "0",
        "services.nodeports": "0",
    }
    limits = rendered.one("kubernetes:core/v1:LimitRange")
    assert limits.inputs["metadata"]["namespace"] == spec.team
    (container,) = limits.inputs["spec"]["limits"]
    assert container["type"] == "Container" and container["defaultRequest"]


def test_service_account_role_reaches_only_team_resources(stack):
    spec, rendered = stack
    (sa,) = [
        a
        for a in rendered.by_type("kubernetes:core/v1:ServiceAccount")
        if a.inputs["metadata"]["name"] == f"{spec.team}-workloads"
    ]
    (role,) = _by_input(rendered, "aws:iam/role:Role", "name", f"{spec.prefix}-workloads")
    assert (
        sa.inputs["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (role.outputs["arn"])
    )
    (trust,) = _policy(role, "assumeRolePolicy")["Statement"]
    oidc = rendered.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider")
    assert trust["Principal"] == {"Federated": oidc.outputs["arn"]}
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    conditions = trust["Condition"]["StringEquals"]
    host = oidc.inputs["url"].removeprefix("https://")
    subject = f"system:serviceaccount:{spec.team}:{sa.inputs['metadata']['name']}"
    assert conditions == {f"{host}:sub": subject, f"{host}:aud": "sts.amazonaws.com"}

    (policy,) = [
        p
        for p in rendered.by_type("aws:iam/rolePolicy:RolePolicy")
        if p.inputs["role"] == role.outputs["name"]
    ]
    statements = _policy(policy)["Statement"]
    team_arns = [
        *(b.outputs["arn"] for b in rendered.by_type(BUCKET)),
        *(f.outputs["arn"] for f in rendered.by_type("aws:sagemaker/featureGroup:FeatureGroup")),
        *(
            g.outputs["arn"]
            for g in rendered.by_type("aws:sagemaker/modelPackageGroup:ModelPackageGroup")
        ),
    ]
    team_arns += [w.outputs["arn"] for w in rendered.by_type("aws:athena/workgroup:Workgroup")]
    # The offline store's Glue database, its tables, and the account's catalog they live in
    # (Glue authorizes a table call on all three).
    glue = f"arn:aws:glue:{spec.region}:123456789012"
    databases = [
        d.inputs["name"] for d in rendered.by_type("aws:glue/catalogDatabase:CatalogDatabase")
    ]
    glue_arns = {f"{glue}:catalog"} | {f"{glue}:database/{d}" for d in databases}
    glue_tables = tuple(f"{glue}:table/{d}/" for d in databases)
    data_key = rendered.get(rendered.by_type(BUCKET)[0].parent)  # the DataLake
    key_arns = {k.outputs["arn"] for k in rendered.children(data_key) if k.type.endswith("Key")}
    reached = set()
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert not any("*" in action for action in _actions(statement)), statement
        resources = statement["Resource"]
        if resources == "*":
            # Only calls IAM cannot scope to a resource: list calls, and Lake Formation's
            # data access (what it vends stays within its grants on the team's tables).
            assert all(
                a.startswith("sagemaker:List") or a == "lakeformation:GetDataAccess"
                for a in _actions(statement)
            ), statement
            continue
        for arn in resources:
            versions = arn.replace(":model-package/", ":model-package-group/").removesuffix("/*")
            owned = (
                arn in key_arns
                or arn in glue_arns
                or arn.startswith(glue_tables)
                or any(arn == t or arn.startswith(t + "/") or versions == t for t in team_arns)
            )
            assert owned, f"{arn} is not one of {spec.prefix}'s resources"
            reached.add(arn)
    buckets = {b.inputs["tags"]["purpose"]: b.outputs["arn"] for b in rendered.by_type(BUCKET)}
    for purpose, arn in buckets.items():
        # Captured request bodies (logs) are read by the monitoring identity only; the
        # serving pods of capturing Kubernetes endpoints may only put their own captures.
        expected = purpose in ("raw", "features", "artifacts") or (
            purpose == "logs" and bool(capture_prefixes(spec))
        )
        assert any(r == arn or r.startswith(arn + "/") for r in reached) is expected, purpose
    logs = buckets["logs"]
    for statement in statements:
        resources = statement["Resource"]
        if any(str(r).startswith(logs) for r in (resources if resources != "*" else [])):
            assert statement["Action"] == ["s3:PutObject"], statement
            assert statement["Resource"] == [
                f"{logs}/{prefix}*" for prefix in capture_prefixes(spec)
            ], statement
    assert all(arn in reached for arn in team_arns[len(buckets) :])
    if any(g.offline for g in spec.feature_groups):
        assert glue_arns <= reached  # training sets: Athena reads the offline store's tables


# --- storage ----------------------------------------------------------------------------------


def _bucket_config(rendered: Rendered, token: str, bucket: RenderedResource) -> RenderedResource:
    (config,) = _by_input(rendered, token, "bucket", bucket.outputs["bucket"])
    return config


def test_every_bucket_is_encrypted_private_versioned_and_tls_only(stack):
    spec, rendered = stack
    buckets = rendered.by_type(BUCKET)
    purposes = sorted(b.inputs["tags"]["purpose"] for b in buckets)
    assert purposes == sorted([*BUCKET_PURPOSES, ACCESS_LOGS])
    lake = rendered.one("mlinfra:storage:DataLake")
    (key,) = [k for k in rendered.children(lake) if k.type == "aws:kms/key:Key"]
    assert key.inputs["enableKeyRotation"] is True
    for bucket in buckets:
        assert bucket.outputs["bucket"].startswith(spec.prefix + "-")
        (rule,) = _bucket_config(
            rendered,
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            bucket,
        ).inputs["rules"]
        default = rule["applyServerSideEncryptionByDefault"]
        if bucket.inputs["tags"]["purpose"] == ACCESS_LOGS:
            # S3 delivers server access logs only into SSE-S3 buckets.
            assert default == {"sseAlgorithm": "AES256"}
        else:
            assert default == {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": key.outputs["arn"]}

        block = _bucket_config(
            rendered, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket
        ).inputs
        for setting in (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        ):
            assert block[setting] is True, setting

        versioning = _bucket_config(rendered, "aws:s3/bucketVersioning:BucketVersioning", bucket)
        assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"

        ownership = _bucket_config(
            rendered, "aws:s3/bucketOwnershipControls:BucketOwnershipControls", bucket
        )
        assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"

        policy = _policy(_bucket_config(rendered, "aws:s3/bucketPolicy:BucketPolicy", bucket))
        arn = bucket.outputs["arn"]
        deny_plain_http = [
            s
            for s in policy["Statement"]
            if s["Effect"] == "Deny"
            and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            and s["Principal"] == "*"
        ]
        assert deny_plain_http and set(deny_plain_http[0]["Resource"]) == {arn, f"{arn}/*"}


def test_lifecycle_rules_follow_the_spec(stack):
    spec, rendered = stack
    for bucket in rendered.by_type(BUCKET):
        purpose = bucket.inputs["tags"]["purpose"]
        rules = {
            r["id"]: r
            for r in _bucket_config(
                rendered,
                "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
                bucket,
            ).inputs["rules"]
        }
        assert all(r["status"] == "Enabled" for r in rules.values())
        noncurrent = rules["expire-noncurrent-versions"]["noncurrentVersionExpiration"]
        assert noncurrent["noncurrentDays"] == spec.storage.noncurrent_version_expiry_days
        if purpose in ("logs", ACCESS_LOGS):
            assert rules["expire-logs"]["expiration"]["days"] == spec.storage.log_retention_days
        else:
            (transition,) = rules["infrequent-access"]["transitions"]
            assert transition == {
                "days": spec.storage.infrequent_access_after_days,
                "storageClass": "STANDARD_IA",
            }


def test_data_buckets_log_access_into_the_access_log_bucket(stack):
    _, rendered = stack
    buckets = {b.inputs["tags"]["purpose"]: b for b in rendered.by_type(BUCKET)}
    target = buckets[ACCESS_LOGS].outputs["bucket"]
    logged = rendered.by_type("aws:s3/bucketLogging:BucketLogging")
    assert {r.inputs["bucket"] for r in logged} == {
        buckets[p].outputs["bucket"] for p in BUCKET_PURPOSES
    }
    assert all(r.inputs["targetBucket"] == target for r in logged)
    policy = _policy(
        _bucket_config(rendered, "aws:s3/bucketPolicy:BucketPolicy", buckets[ACCESS_LOGS])
    )
    (delivery,) = [
        s for s in policy["Statement"] if s["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    ]
    assert delivery["Effect"] == "Allow" and delivery["Action"] == "s3:PutObject"
    assert set(delivery["Condition"]["ArnLike"]["aws:SourceArn"]) == {
        buckets[p].outputs["arn"] for p in BUCKET_PURPOSES
    }


def test_team_key_lets_only_alarms_use_it_besides_the_account(stack):
    spec, rendered = stack
    lake = rendered.one("mlinfra:storage:DataLake")
    (key,) = [k for k in rendered.children(lake) if k.type == "aws:kms/key:Key"]
    statements = {s["Sid"]: s for s in _policy(key)["Statement"]}
    assert set(statements) == {"AccountAdministersThroughIam", "CloudWatchAlarmsToEncryptedTopic"}
    alarms = statements["CloudWatchAlarmsToEncryptedTopic"]
    assert alarms["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert sorted(alarms["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert "aws:SourceAccount" in alarms["Condition"]["StringEquals"]
    # The alarm topic (there when SageMaker or monitored endpoints are) uses that key.
    topics = rendered.by_type("aws:sns/topic:Topic")
    alarmed = any(e.kind == "sagemaker" for e in spec.endpoints) or monitored(spec)
    assert len(topics) == (1 if alarmed else 0)
    assert all(t.inputs["kmsMasterKeyId"] == key.outputs["arn"] for t in topics)


def test_prod_data_is_protected_and_dev_data_is_disposable(stack):
    spec, rendered = stack
    lake = rendered.one("mlinfra:storage:DataLake")
    (key,) = [k for k in rendered.children(lake) if k.type == "aws:kms/key:Key"]
    for resource in [*rendered.by_type(BUCKET), key]:
        assert resource.protect is spec.protect_data, resource.name
        assert resource.retain_on_delete is spec.protect_data, resource.name
    for bucket in rendered.by_type(BUCKET):
        assert bucket.inputs["forceDestroy"] is (not spec.protect_data)


def test_prod_stacks_are_protected():
    """The rule above must bite somewhere: at least one stack protects, one does not."""
    protect = {load_stack_file(p).protect_data for p in STACK_FILES}
    assert protect == {True, False}


# --- network ----------------------------------------------------------------------------------


def test_network(stack):
    spec, rendered = stack
    net = spec.network
    [sg] = _by_input(
        rendered, "aws:ec2/securityGroup:SecurityGroup", "name", f"{spec.prefix}-endpoints"
    )
    https_in = [  # the endpoints' group (the training group admits only its own job)
        r
        for r in rendered.by_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.inputs["securityGroupId"] == sg.id
    ]
    cidrs = [net.cidr] if net.vpc_id is None else list(ExistingVpc().cidrs)
    # HTTPS from every CIDR block of the VPC (an existing VPC's secondary blocks too).
    assert sorted(r.inputs["cidrIpv4"] for r in https_in) == sorted(cidrs)
    for rule in https_in:
        assert rule.inputs["securityGroupId"] == sg.id
        assert (rule.inputs["fromPort"], rule.inputs["toPort"]) == (443, 443)
    subnets_of_cluster = rendered.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]["subnetIds"]
    if net.vpc_id is not None:
        assert rendered.by_type("aws:ec2/vpc:Vpc") == []
        assert rendered.by_type("aws:ec2/vpcEndpoint:VpcEndpoint") == []
        assert sg.inputs["vpcId"] == net.vpc_id
        assert subnets_of_cluster == net.private_subnet_ids
        return
    vpc = rendered.one("aws:ec2/vpc:Vpc")
    assert vpc.inputs["cidrBlock"] == net.cidr
    assert sg.inputs["vpcId"] == vpc.id
    subnets = rendered.by_type("aws:ec2/subnet:Subnet")
    private = [s for s in subnets if "kubernetes.io/role/internal-elb" in s.inputs["tags"]]
    assert len(private) == len(subnets) // 2 == net.availability_zones
    assert len({s.inputs["availabilityZoneId"] for s in private}) == net.availability_zones
    assert sorted(subnets_of_cluster) == sorted(s.id for s in private)
    nats = rendered.by_type("aws:ec2/natGateway:NatGateway")
    assert len(nats) == (net.availability_zones if net.nat_gateways == "perAz" else 1)

    endpoints = {
        e.inputs["serviceName"]: e for e in rendered.by_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    }
    s3 = endpoints[f"com.amazonaws.{spec.region}.s3"]
    assert s3.inputs["vpcEndpointType"] == "Gateway"
    assert len(s3.inputs["routeTableIds"]) == net.availability_zones
    for service in INTERFACE_ENDPOINTS:
        endpoint = endpoints[f"com.amazonaws.{spec.region}.{service}"]
        assert endpoint.inputs["vpcEndpointType"] == "Interface"
        assert endpoint.inputs["privateDnsEnabled"] is True
        assert endpoint.inputs["securityGroupIds"] == [sg.id]
        assert sorted(endpoint.inputs["subnetIds"]) == sorted(s.id for s in private)


# --- the whole program ------------------------------------------------------------------------


@functools.cache
def _accepts_tags(token: str) -> bool:
    """Whether the pulumi-aws resource class behind a type token takes `tags`."""
    module, _, cls = token.removeprefix("aws:").partition(":")
    package = importlib.import_module(f"pulumi_aws.{module.split('/')[0]}")
    resource_class = getattr(package, cls)
    return "tags" in inspect.signature(resource_class._internal_init).parameters


def test_every_taggable_resource_carries_team_environment_and_cost_center(stack):
    spec, rendered = stack
    required = {
        "team": spec.team,
        "environment": spec.environment,
        "cost-center": spec.cost_center,
    }
    aws_resources = [r for r in rendered.custom_resources if r.type.startswith("aws:")]
    taggable = [r for r in aws_resources if _accepts_tags(r.type)]
    assert len(taggable) > 20 and len(taggable) < len(aws_resources)
    for resource in taggable:
        tags = resource.inputs.get("tags") or {}
        assert required.items() <= tags.items(), f"{resource.type} {resource.name}: {tags}"


def test_children_are_parented_to_their_component(stack):
    _, rendered = stack
    components = [r for r in rendered.resources if not r.custom]
    assert {c.type for c in components} >= {
        "mlinfra:network:Network",
        "mlinfra:storage:DataLake",
        "mlinfra:cluster:GpuCluster",
        "mlinfra:featurestore:FeatureStore",
        "mlinfra:registry:ModelRegistry",
        "mlinfra:endpoints:Endpoints",
        "mlinfra:budget:Budget",
    }
    for component in components:
        assert re.fullmatch(r"mlinfra:[a-z]+:[A-Z][A-Za-z]+", component.type)
        assert component.parent is not None and "pulumi:pulumi:Stack" in component.parent
        assert rendered.children(component), f"{component.type} has no children"
    for resource in rendered.custom_resources:
        assert rendered.component_of(resource) is not None, f"{resource.type} {resource.name}"


def test_physical_names_start_with_the_prefix(stack):
    spec, rendered = stack
    named = {
        "aws:iam/role:Role": "name",
        "aws:eks/nodeGroup:NodeGroup": "nodeGroupName",
        "aws:eks/cluster:Cluster": "name",
        "aws:ec2/launchTemplate:LaunchTemplate": "name",
        "aws:ec2/securityGroup:SecurityGroup": "name",
    }
    for token, key in named.items():
        for resource in rendered.by_type(token):
            assert resource.inputs[key].startswith(spec.prefix), resource.inputs[key]


def test_running_the_program_warns_about_nothing(stack):
    _, rendered = stack
    assert rendered.error is None
    assert rendered.warnings == []
    noisy = [m for level, m in rendered.logs if level in ("warning", "error")]
    assert noisy == []
    assert not [m for _, m in rendered.logs if "deprecat" in m.lower()]


# --- the project file and the mock runner ---------------------------------------------------

PROJECT_FILE = STACKS_DIR.parent / "Pulumi.yaml"


def test_project_config_block_is_valid_pulumi_project_config():
    """What the Pulumi CLI checks in `config:` (project.json schema and Project.Validate)."""
    doc = yaml.safe_load(PROJECT_FILE.read_text())
    assert (
        doc["name"] == "mlinfra" and doc["main"] == "stacks/" and doc["stackConfigDir"] == "stacks"
    )
    for key, decl in doc["config"].items():
        assert ":" not in key, "keys of other namespaces need `value`, not a declaration"
        assert set(decl) <= {"type", "description", "default", "secret", "items"}, key
        assert decl.get("description"), key
        if "type" in decl:
            assert decl["type"] in {"string", "integer", "boolean", "array"}, key
            assert decl["type"] != "array" or "items" in decl, key


@pytest.mark.parametrize("path", STACK_FILES, ids=stack_name)
def test_every_stack_sets_every_required_project_key(path: Path):
    """A declared key without a default must be in every stack, or the CLI refuses to run."""
    doc = yaml.safe_load(PROJECT_FILE.read_text())
    required = {k for k, decl in doc["config"].items() if "default" not in decl}
    config = yaml.safe_load(path.read_text())["config"]
    assert {f"mlinfra:{k}" for k in required} <= set(config)
    for key, decl in doc["config"].items():
        if decl.get("type") == "string" and f"mlinfra:{key}" in config:
            assert isinstance(config[f"mlinfra:{key}"], str), key


def test_stack_config_applies_project_defaults():
    config = stack_config("local", STACKS_DIR)
    assert config["mlinfra:network"] == "{}"  # not in the file: Pulumi.yaml's default
    assert json.loads(config["mlinfra:cluster"])["gpuPools"][0]["name"] == "train-gpu"


def test_rendered_lookup_fails_loudly():
    rendered = rendered_stack("vision-dev")
    with pytest.raises(LookupError):
        rendered.one(BUCKET)  # four of them
    with pytest.raises(LookupError):
        rendered.one("aws:rds/instance:Instance")


def test_program_errors_reach_the_caller():
    config = stack_config("vision-dev", STACKS_DIR)
    config["mlinfra:team"] = "Bad Team"
    with pytest.raises(SpecError):
        render_stack("vision-dev", STACKS_DIR, config=config)
