"""What a real `pulumi up` would hit: AWS and Kubernetes rules, checked on every stack's render.

The mock runtime accepts anything; AWS and Kubernetes do not. Each test here is one rule
from the AWS API references, the EKS user guide or the provider docs, checked over the
resources the real program registers for every `stacks/Pulumi.*.yaml` (a new stack is
checked without touching this file). Each assertion says why the rule exists, so a
failure reads as what the real `up` (or the first day of running) would do.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

import pytest

from components.autoscaling import (
    AUTOSCALER,
    NODE_TEMPLATE,
    SCALE_DOWN_UNNEEDED,
    node_template_tags,
)
from components.cluster_access import ADMIN_VIEW, CLUSTER_ADMIN, cluster_access
from components.mockrun import (
    ExistingVpc,
    Rendered,
    RenderedResource,
    render_stack,
    stack_config,
    zone_map,
)
from components.monitoring_identity import CAPTURE_PREFIX, monitoring_service_account
from components.network import EKS_UNSUPPORTED_ZONE_IDS
from components.spec import (
    BUILD_TAG_PATTERNS,
    CLUSTER_AUTOSCALER_TAGS,
    EKS_VERSIONS,
    MAX_BUDGET_NOTIFICATIONS,
    PlatformSpec,
    load_stack_file,
    parse_spec,
)
from components.storage import ACCESS_LOGS
from tests.longest_names import longest_config, longest_stack
from tests.stack_support import STACK_FILES, STACKS_DIR, rendered_stack, stack_name

pytestmark = pytest.mark.filterwarnings("error")

CLUSTER = "aws:eks/cluster:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ASG_TAG = "aws:autoscaling/tag:Tag"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
BUCKET = "aws:s3/bucket:Bucket"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


@pytest.fixture(
    params=[(p, longest) for p in STACK_FILES for longest in (False, True)],
    ids=lambda p: stack_name(p[0]) + ("-longest" if p[1] else ""),
)
def stack(request) -> tuple[PlatformSpec, Rendered]:
    """Each stack as configured, and with its team and every chosen name at the longest the
    spec accepts (`tests.longest_names`): what holds for one must hold for the other."""
    path, longest = request.param
    if longest:
        name = stack_name(path)
        return parse_spec(longest_config(name), str(path)), longest_stack(name)
    return load_stack_file(path), rendered_stack(stack_name(path))


def _policy(resource: RenderedResource, key: str = "policy") -> dict[str, Any]:
    return json.loads(resource.inputs[key])


def _list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _gpu_groups(spec: PlatformSpec, rendered: Rendered) -> dict[str, RenderedResource]:
    groups = {g.inputs["nodeGroupName"]: g for g in rendered.by_type(NODE_GROUP)}
    return {p.name: groups[f"{spec.prefix}-{p.name}"] for p in spec.cluster.gpu_pools}


# --- 1. the cluster API is reachable, by the roles that deploy and administer it --------------


def test_the_private_api_admits_the_deploy_runners_network(stack):
    spec, rendered = stack
    cluster = rendered.one(CLUSTER)
    vpc = cluster.inputs["vpcConfig"]
    groups = {g.id: g for g in rendered.by_type(SECURITY_GROUP)}
    attached = [groups[i] for i in vpc.get("securityGroupIds", []) if i in groups]
    admitted = {
        rule.inputs["cidrIpv4"]
        for rule in rendered.by_type(INGRESS)
        if rule.inputs["securityGroupId"] in {g.id for g in attached}
        and rule.inputs["ipProtocol"] == "tcp"
        and rule.inputs["fromPort"] <= 443 <= rule.inputs["toPort"]
    }
    expected = set(spec.cluster.access.api_access_cidrs)
    if not expected:  # the default: a runner inside the cluster's VPC, any of its blocks
        expected = set(ExistingVpc().cidrs) if spec.network.vpc_id else {spec.network.cidr}
    assert admitted == expected, (
        "the API is private and EKS's own cluster security group admits only the cluster: "
        f"without 443 from the deploy runner's network ({sorted(expected)}) every Kubernetes "
        f"resource of `pulumi up` times out; admitted: {sorted(admitted)}"
    )
    if not vpc["endpointPublicAccess"]:
        assert vpc["endpointPrivateAccess"] is True


def test_deploy_admin_and_preview_roles_have_access_entries(stack):
    spec, rendered = stack
    cluster = rendered.one(CLUSTER)
    entries = {
        e.inputs["principalArn"]: e for e in rendered.by_type("aws:eks/accessEntry:AccessEntry")
    }
    associations = {
        a.inputs["principalArn"]: a
        for a in rendered.by_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
    }
    wanted = cluster_access(spec)
    access = spec.cluster.access
    assert set(wanted) == {
        r for r in [access.deploy_role, access.preview_role, *access.admin_roles] if r
    }
    assert set(entries) == set(associations) == set(wanted), (
        "with authenticationMode API a role reaches Kubernetes only through an access entry"
    )
    for role, policy in wanted.items():
        assert entries[role].inputs["clusterName"] == cluster.inputs["name"]
        assert entries[role].inputs["type"] == "STANDARD"
        association = associations[role].inputs
        assert association["policyArn"].endswith(f":cluster-access-policy/{policy}")
        assert association["accessScope"] == {"type": "cluster"}
    for role in [access.deploy_role, *access.admin_roles]:
        if role:
            assert wanted[role] == CLUSTER_ADMIN, "deploying creates cluster-scoped objects"
    if access.preview_role and access.preview_role not in access.admin_roles:
        assert wanted[access.preview_role] == ADMIN_VIEW, "previews and drift checks only read"

    bootstrap = cluster.inputs["accessConfig"]["bootstrapClusterCreatorAdminPermissions"]
    assert cluster.inputs["accessConfig"]["authenticationMode"] == "API"
    # EKS's own bootstrap entry for the creator and ours for the same deploy role would
    # collide (ResourceInUseException); without a named deploy role, the creator needs it.
    assert bootstrap is (access.deploy_role is None), (
        "bootstrap creator admin must be on exactly when no deploy role is named"
    )


def test_kubernetes_calls_wait_for_the_deploy_roles_access(stack):
    _, rendered = stack
    provider = rendered.one("pulumi:providers:kubernetes")
    associations = {
        a.urn for a in rendered.by_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
    }
    assert associations <= set(provider.dependencies), (
        "the first `up` must not call the API before the deploy role's access entry works"
    )


def test_prod_stacks_name_their_deploy_role():
    """The rule above must bite: prod names a deploy role, and some stack a preview role."""
    specs = [load_stack_file(p) for p in STACK_FILES]
    assert all(s.cluster.access.deploy_role for s in specs if s.is_prod)
    assert any(s.cluster.access.preview_role for s in specs)


# --- 3. subnets only in zones EKS supports, chosen by zone ID ---------------------------------


def test_subnets_are_chosen_by_zone_id_where_eks_accepts_them(stack):
    spec, rendered = stack
    subnets = rendered.by_type("aws:ec2/subnet:Subnet")
    if spec.network.vpc_id is not None:
        assert subnets == []  # the program checks each given subnet's zone ID (below)
        return
    known = {zone_id for _, zone_id in zone_map(spec.region)}
    for subnet in subnets:
        assert "availabilityZone" not in subnet.inputs, (
            "zone names map to different zone IDs in every account: choose by ID"
        )
        zone_id = subnet.inputs["availabilityZoneId"]
        assert zone_id in known
        assert zone_id not in EKS_UNSUPPORTED_ZONE_IDS, (
            f"{subnet.name} is in {zone_id}, where CreateCluster fails with "
            "UnsupportedAvailabilityZoneException"
        )


def test_us_east_1_has_only_five_zones_for_eks():
    config = stack_config("vision-prod", STACKS_DIR)
    network = json.loads(config["mlinfra:network"])
    config["mlinfra:network"] = json.dumps({**network, "availabilityZones": 6})
    rendered = render_stack("vision-prod", STACKS_DIR, config=config, raise_errors=False)
    assert "mlinfra:network.availabilityZones" in str(rendered.error)
    assert "only 5 that EKS supports" in str(rendered.error)


def test_an_existing_subnet_in_an_unsupported_zone_is_refused(monkeypatch):
    from components import mockrun

    real = mockrun.PlatformMocks.call

    def in_use1_az3(self, args):
        if args.token == "aws:ec2/getSubnet:getSubnet":
            return {"id": args.args["id"], "availabilityZoneId": "use1-az3"}
        return real(self, args)

    monkeypatch.setattr(mockrun.PlatformMocks, "call", in_use1_az3)
    rendered = render_stack("nlp-prod", STACKS_DIR, raise_errors=False)
    assert "mlinfra:network.privateSubnetIds[0]" in str(rendered.error)
    assert "use1-az3" in str(rendered.error)


# --- 5. GPU pools scale from zero and back, through a real autoscaler -------------------------


def test_every_gpu_pool_carries_its_scale_from_zero_hints_on_its_asg(stack):
    spec, rendered = stack
    on_asg: dict[str, dict[str, str]] = {}
    for tag in rendered.by_type(ASG_TAG):
        on_asg.setdefault(tag.inputs["autoscalingGroupName"], {})[tag.inputs["tag"]["key"]] = (
            tag.inputs["tag"]["value"]
        )
    for pool in spec.cluster.gpu_pools:
        group = _gpu_groups(spec, rendered)[pool.name]
        (asg,) = group.outputs["resources"][0]["autoscalingGroups"]
        hints = node_template_tags(group.inputs["tags"])
        assert hints[f"{NODE_TEMPLATE}/resources/nvidia.com/gpu"] == str(pool.gpus_per_node)
        assert hints[f"{NODE_TEMPLATE}/taint/nvidia.com/gpu"] == "true:NoSchedule"
        assert on_asg.get(asg["name"]) == hints, (
            f"EKS does not copy node group tags to the Auto Scaling group: without them on "
            f"{asg['name']} the autoscaler cannot tell that a node of {pool.name} would "
            "offer nvidia.com/gpu, and a GPU pod stays Pending forever"
        )
    for tag in rendered.by_type(ASG_TAG):
        assert tag.inputs["tag"]["propagateAtLaunch"] is False


def test_cluster_autoscaler_runs_on_the_system_pool_and_finds_every_group(stack):
    spec, rendered = stack
    (deployment,) = [
        d for d in rendered.by_type(DEPLOYMENT) if d.inputs["metadata"]["name"] == AUTOSCALER
    ]
    assert deployment.inputs["metadata"]["namespace"] == "kube-system"
    pod = deployment.inputs["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"mlinfra.io/pool": "system"}, (
        "on a GPU node the autoscaler could remove the node it runs on"
    )
    (container,) = pod["containers"]
    tag = CLUSTER_AUTOSCALER_TAGS[spec.cluster.kubernetes_version]
    assert container["image"].endswith(f"/cluster-autoscaler:{tag}")
    assert tag.startswith(f"v{spec.cluster.kubernetes_version}."), (
        "cluster-autoscaler's minor version must match the control plane's"
    )
    args = container["command"]
    discovery = next(a for a in args if a.startswith("--node-group-auto-discovery="))
    assert discovery.endswith(f"k8s.io/cluster-autoscaler/{spec.prefix}")
    assert f"--scale-down-unneeded-time={SCALE_DOWN_UNNEEDED}" in args
    assert {"name": "AWS_REGION", "value": spec.region} in container["env"]
    for group in rendered.by_type(NODE_GROUP):
        # EKS puts both discovery tags on managed node groups' ASGs itself.
        assert group.inputs["tags"][f"k8s.io/cluster-autoscaler/{spec.prefix}"] == "owned"
    assert pod["serviceAccountName"] == AUTOSCALER


def test_every_eks_version_a_spec_may_ask_for_has_a_matching_autoscaler():
    """A spec may name any version EKS creates clusters with; each needs an autoscaler of the
    same minor, or a valid spec would be refused (or scaled by a mismatched release)."""
    assert set(CLUSTER_AUTOSCALER_TAGS) == set(EKS_VERSIONS)
    for minor, tag in CLUSTER_AUTOSCALER_TAGS.items():
        assert re.fullmatch(rf"v{re.escape(minor)}\.\d+", tag), (minor, tag)


def test_cluster_autoscaler_may_scale_only_this_clusters_groups(stack):
    spec, rendered = stack
    sa = next(
        a
        for a in rendered.by_type("kubernetes:core/v1:ServiceAccount")
        if a.inputs["metadata"]["name"] == AUTOSCALER
    )
    (role,) = [
        r for r in rendered.by_type(ROLE) if r.inputs["name"] == f"{spec.prefix}-{AUTOSCALER}"
    ]
    assert sa.inputs["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role.outputs["arn"]
    (trust,) = _policy(role, "assumeRolePolicy")["Statement"]
    assert (
        f"system:serviceaccount:kube-system:{AUTOSCALER}"
        in trust["Condition"]["StringEquals"].values()
    )
    (policy,) = [
        p for p in rendered.by_type(ROLE_POLICY) if p.inputs["role"] == role.outputs["name"]
    ]
    statements = {s["Sid"]: s for s in _policy(policy)["Statement"]}
    scale = statements["ScaleOwnNodeGroups"]
    assert "autoscaling:SetDesiredCapacity" in scale["Action"]
    assert scale["Condition"] == {
        "StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{spec.prefix}": "owned"}
    }, "without the condition the autoscaler could resize every ASG of the account"
    assert statements["DescribeOwnNodeGroups"]["Resource"].endswith(f":nodegroup/{spec.prefix}/*")
    binding = rendered.one("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding")
    assert binding.inputs["subjects"] == [
        {"kind": "ServiceAccount", "name": AUTOSCALER, "namespace": "kube-system"}
    ]
    rules = rendered.one("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole").inputs["rules"]
    assert any("pods/eviction" in r["resources"] for r in rules), "it drains nodes it removes"


def test_gpu_pools_have_one_instance_size(stack):
    spec, rendered = stack
    for pool, group in _gpu_groups(spec, rendered).items():
        sizes = {t.partition(".")[2] for t in group.inputs["instanceTypes"]}
        assert len(sizes) == 1, (
            f"{pool}: the autoscaler sizes a node group by its first instance type; mixed "
            f"sizes ({sorted(sizes)}) make its estimate wrong"
        )


# --- 6. the metrics API behind every HorizontalPodAutoscaler ----------------------------------


def test_metrics_server_is_installed_for_the_hpas(stack):
    _, rendered = stack
    cluster = rendered.one(CLUSTER)
    addons = {a.inputs["addonName"]: a for a in rendered.by_type("aws:eks/addon:Addon")}
    assert "metrics-server" in addons, (
        "EKS does not install metrics-server; without metrics.k8s.io an HPA never scales"
    )
    addon = addons["metrics-server"]
    assert addon.inputs["clusterName"] == cluster.inputs["name"]
    system = next(g for g in rendered.by_type(NODE_GROUP) if g.name == "cluster-system")
    assert system.urn in addon.dependencies, "the add-on is degraded until a node can run it"


# --- 7. access logs in an SSE-S3 bucket of their own ------------------------------------------


def test_server_access_logs_go_to_an_sse_s3_bucket_captures_stay_in_kms(stack):
    _, rendered = stack
    buckets = {b.outputs["bucket"]: b for b in rendered.by_type(BUCKET)}
    sse = {
        s.inputs["bucket"]: s.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
        for s in rendered.by_type(SSE)
    }
    targets = {
        r.inputs["targetBucket"] for r in rendered.by_type("aws:s3/bucketLogging:BucketLogging")
    }
    assert targets, "data buckets log their access"
    for target in targets:
        assert sse[target] == {"sseAlgorithm": "AES256"}, (
            "S3 documents SSE-S3 as the only default encryption of a server access log "
            f"destination; {target} has {sse[target]}"
        )
        assert buckets[target].inputs["tags"]["purpose"] == ACCESS_LOGS
    captures = [
        c.inputs["dataCaptureConfig"]["destinationS3Uri"]
        for c in rendered.by_type("aws:sagemaker/endpointConfiguration:EndpointConfiguration")
        if c.inputs.get("dataCaptureConfig")
    ]
    for uri in captures:
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        assert bucket not in targets
        assert sse[bucket]["sseAlgorithm"] == "aws:kms", "captured bodies stay KMS-encrypted"


# --- 8. ECR never expires an image a deployed endpoint runs -----------------------------------


def test_ecr_lifecycle_never_expires_a_deployed_image(stack):
    spec, rendered = stack
    tags = {ep.image_tag for ep in spec.endpoints} | {"1.4.0", "v2.0.1"}
    for policy in rendered.by_type("aws:ecr/lifecyclePolicy:LifecyclePolicy"):
        for rule in _policy(policy)["rules"]:
            selection = rule["selection"]
            assert selection["tagStatus"] != "any", "an `any` rule expires release images too"
            if selection["tagStatus"] != "tagged":
                continue
            patterns = selection["tagPatternList"]
            assert len(patterns) == 1, "ECR selects only images matching every pattern of a rule"
            for tag in tags:
                assert not fnmatch.fnmatchcase(tag, patterns[0]), (
                    f"rule {rule['rulePriority']} of {policy.inputs['repository']} would expire "
                    f"{tag!r}, which an endpoint's next scale-out pulls"
                )
            assert patterns[0] in BUILD_TAG_PATTERNS


# --- 9. only the monitoring identity reads captured request bodies ----------------------------


def test_only_the_monitoring_identity_reads_captures(stack):
    spec, rendered = stack
    logs = next(b for b in rendered.by_type(BUCKET) if b.inputs["tags"]["purpose"] == "logs")
    arn = logs.outputs["arn"]
    roles = {r.outputs["name"]: r for r in rendered.by_type(ROLE)}
    readers = set()
    for policy in rendered.by_type(ROLE_POLICY):
        for statement in _policy(policy)["Statement"]:
            actions = _list(statement["Action"])
            resources = _list(statement["Resource"])
            reads = any(a in ("s3:GetObject", "s3:*") for a in actions)
            if reads and any(r in (f"{arn}/*", f"{arn}/{CAPTURE_PREFIX}*", "*") for r in resources):
                readers.add(policy.inputs["role"])
    assert readers == {f"{spec.prefix}-monitoring"}, (
        f"captured request and response bodies must be readable by the monitoring job only; "
        f"readers: {sorted(readers)}"
    )
    (trust,) = _policy(roles[f"{spec.prefix}-monitoring"], "assumeRolePolicy")["Statement"]
    subject = f"system:serviceaccount:{spec.team}:{monitoring_service_account(spec)}"
    assert subject in trust["Condition"]["StringEquals"].values()
    # The scheduled job looks up the served version (and its baseline) in the registry:
    # read-only, on the team's own model groups and their versions.
    monitoring = [
        s
        for p in rendered.by_type(ROLE_POLICY)
        if p.inputs["role"] == f"{spec.prefix}-monitoring"
        for s in _policy(p)["Statement"]
    ]
    registry = [s for s in monitoring if s.get("Sid") == "ReadTeamModelRegistry"]
    if spec.model_registry.model_groups:
        (statement,) = registry
        assert all(a.startswith("sagemaker:Describe") for a in _list(statement["Action"]))
        groups = [spec.physical(g.name) for g in spec.model_registry.model_groups]
        for resource in _list(statement["Resource"]):
            assert any(f"/{group}" in resource for group in groups), resource


# --- 10. AWS Budgets: at most five notifications ----------------------------------------------


def test_budget_stays_within_five_notifications(stack):
    _, rendered = stack
    budget = rendered.one("aws:budgets/budget:Budget")
    notifications = budget.inputs["notifications"]
    assert 1 <= len(notifications) <= MAX_BUDGET_NOTIFICATIONS, (
        f"AWS Budgets accepts at most {MAX_BUDGET_NOTIFICATIONS} notifications per budget; "
        f"this one has {len(notifications)}"
    )
    kinds = {(n["notificationType"], n["threshold"]) for n in notifications}
    assert len(kinds) == len(notifications), "AWS refuses duplicate notifications"


# --- 12. non-prod clusters never bill for extended support ------------------------------------


def test_non_prod_clusters_upgrade_on_standard_support(stack):
    spec, rendered = stack
    policy = rendered.one(CLUSTER).inputs["upgradePolicy"]["supportType"]
    expected = "EXTENDED" if spec.is_prod else "STANDARD"
    assert policy == expected, (
        "a non-prod cluster left on EXTENDED bills extended support once standard support "
        "ends; prod keeps EXTENDED so an upgrade that slips does not force one"
    )
