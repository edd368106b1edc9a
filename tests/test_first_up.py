"""What AWS and Kubernetes need for a stack's first `pulumi up` and for `pulumi up` and
`mlinfra deploy` to live side by side, as rules over the rendered resources of every stack.

Parametrised over the stack files like tests/test_stacks.py. Each rule fails with its
reason: what would break in a real account.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from components.mockrun import ExistingVpc, Rendered, s3_prefix_list_id
from components.readiness import FakeAccount
from components.serving_pod import MODEL_ANNOTATION
from components.spec import PlatformSpec, load_stack_file
from tests.stack_support import (
    STACK_NAMES,
    STACKS_DIR,
    first_up_stack,
    rendered_stack,
)
from workloads.platform import PlatformDescriptor

SERVING = (
    "aws:sagemaker/model:Model",
    "aws:sagemaker/endpointConfiguration:EndpointConfiguration",
    "aws:sagemaker/endpoint:Endpoint",
    "aws:appautoscaling/target:Target",
    "aws:appautoscaling/policy:Policy",
)
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SG = "aws:ec2/securityGroup:SecurityGroup"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"


def _spec(stack: str) -> PlatformSpec:
    return load_stack_file(STACKS_DIR / f"Pulumi.{stack}.yaml")


def _descriptor(rendered: Rendered) -> PlatformDescriptor:
    return PlatformDescriptor.model_validate(rendered.outputs["platform"])


# --- the first `up` (issue: a fresh stack cannot come up) -----------------------------------


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_a_first_up_references_nothing_that_cannot_exist_yet(stack: str):
    spec, rendered = _spec(stack), first_up_stack(stack)
    assert rendered.error is None, rendered.error
    for token in SERVING:
        assert rendered.by_type(token) == [], (
            f"{token}: on a first up no model version is registered, so SageMaker could not "
            "create it (and nothing may reference an artifact nothing wrote)"
        )
    for r in rendered.resources:
        text = json.dumps(r.inputs)
        assert "model.tar.gz" not in text, f"{r.type} {r.name} points at an artifact nothing writes"
        if re.search(r"model-package/[^\"/]+/\d+", text):  # a version (IAM names `/*`)
            assert r.type == DEPLOYMENT and r.inputs["spec"]["replicas"] == 0, (
                f"{r.type} {r.name} references a model package that is not registered yet"
            )
    # The team's endpoint Deployments (cluster add-ons such as cluster-autoscaler run public
    # images and need no model).
    endpoints = [
        d for d in rendered.by_type(DEPLOYMENT) if d.inputs["metadata"]["namespace"] == spec.team
    ]
    for deployment in endpoints:
        assert deployment.inputs["spec"].get("replicas") == 0, (
            f"{deployment.name}: a pod now would pull an image not yet pushed and fetch a model "
            "not yet registered (and Pulumi would wait 20 minutes for it)"
        )
    descriptor = _descriptor(rendered)
    warnings = [m for level, m in rendered.logs if level == "warning"]
    for ep in spec.endpoints:
        ref = descriptor.endpoints[ep.name]
        if ep.model_version is None:
            assert ref.version_owner == "deploy" and ref.waiting_for is None
            assert ref.created_by == ("deploy" if ep.kind == "sagemaker" else "stack")
            continue
        waits = f"model package {spec.prefix}-{ep.model_group}/{ep.model_version}"
        assert ref.waiting_for and ref.waiting_for.startswith(waits), (
            "the descriptor must say what a pinned endpoint waits for"
        )
        assert any(f"{ref.name} waits for {waits}" in m for m in warnings), (
            f"pulumi preview must say what {ref.name} waits for; warnings: {warnings}"
        )


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_in_the_steady_state_the_stack_serves_exactly_its_pinned_endpoints(stack: str):
    spec, rendered = _spec(stack), rendered_stack(stack)
    pinned = {f"{spec.prefix}-{e.name}" for e in spec.endpoints if e.model_version is not None}
    sagemaker = {f"{spec.prefix}-{e.name}" for e in spec.endpoints if e.kind == "sagemaker"}
    created = {r.inputs["name"] for r in rendered.by_type("aws:sagemaker/endpoint:Endpoint")}
    assert created == pinned & sagemaker, (
        "the stack creates the pinned SageMaker endpoints; `mlinfra deploy` the others"
    )
    for d in rendered.by_type(DEPLOYMENT):
        if d.inputs["metadata"]["namespace"] != spec.team:
            continue  # a cluster add-on (cluster-autoscaler), not an endpoint
        annotations = d.inputs["spec"]["template"]["metadata"].get("annotations", {})
        if d.inputs["metadata"]["name"] in pinned:
            assert "replicas" not in d.inputs["spec"], "the HPA owns a serving Deployment's count"
            assert MODEL_ANNOTATION in annotations
        else:
            assert d.inputs["spec"]["replicas"] == 0 and MODEL_ANNOTATION not in annotations


# --- `mlinfra deploy`, then `pulumi preview --refresh` ---------------------------------------


def _paths(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by Pulumi property path: `spec.replicas`, `metadata.annotations["a/b"]`."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            step = f".{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f'["{key}"]'
            out.update(_paths(item, (prefix + step).lstrip(".")))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, item in enumerate(value):
            out.update(_paths(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _changed(live: dict[str, Any], desired: dict[str, Any], ignored: tuple[str, ...]) -> list:
    """Paths where the program's inputs differ from the live object, except ignored ones."""
    a, b = _paths(live), _paths(desired)
    return sorted(
        p
        for p in set(a) | set(b)
        if a.get(p) != b.get(p) and not any(p == i or p.startswith(i + ".") for i in ignored)
    )


def _accounts(spec: PlatformSpec) -> tuple[FakeAccount, FakeAccount]:
    """The account before and after `mlinfra deploy` of every unpinned endpoint."""
    before = FakeAccount(
        packages={
            (f"{spec.prefix}-{e.model_group}", e.model_version): "Approved"
            for e in spec.endpoints
            if e.model_version is not None
        },
        images={(f"{spec.prefix}-serve", e.image_tag) for e in spec.endpoints},
        endpoints={
            f"{spec.prefix}-{e.name}"
            for e in spec.endpoints
            if e.model_version is not None and e.kind == "sagemaker"
        },
    )
    after = FakeAccount(
        packages={
            **before.packages,
            **{(f"{spec.prefix}-{e.model_group}", 7): "Approved" for e in spec.endpoints},
        },
        images=set(before.images),
        endpoints=before.endpoints
        | {f"{spec.prefix}-{e.name}" for e in spec.endpoints if e.kind == "sagemaker"},
    )
    return before, after


def _deploy(spec: PlatformSpec, rendered: Rendered) -> dict[str, dict[str, Any]]:
    """The live objects after `mlinfra deploy` (version 7) of every unpinned endpoint, as
    `pulumi refresh` reads them: the stack's inputs plus what deploy changed."""
    descriptor = _descriptor(rendered)
    live = {r.urn: json.loads(json.dumps(r.inputs)) for r in rendered.resources}
    for ep in spec.endpoints:
        ref = descriptor.endpoints[ep.name]
        if ref.version_owner != "deploy" or ref.kubernetes is None:
            continue  # SageMaker: deploy creates resources the stack does not have
        [deployment] = [
            r for r in rendered.by_type(DEPLOYMENT) if r.inputs["metadata"]["name"] == ref.name
        ]
        obj = live[deployment.urn]
        obj["spec"]["replicas"] = ep.min_instances
        obj["spec"]["template"]["metadata"].setdefault("annotations", {})[
            ref.kubernetes.model_annotation
        ] = f"arn:aws:sagemaker:{spec.region}:123456789012:model-package/x/7"
    return live


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_a_preview_after_a_deploy_changes_nothing(stack: str):
    """`pulumi up` must not undo what `mlinfra deploy` did, and the nightly
    `preview --refresh --expect-no-changes` must not report it as drift."""
    from components.mockrun import render_stack

    spec = _spec(stack)
    account_before, account_after = _accounts(spec)
    before = render_stack(stack, STACKS_DIR, account=account_before)
    live = _deploy(spec, before)
    after = render_stack(stack, STACKS_DIR, account=account_after)

    assert sorted(r.urn for r in after.resources) == sorted(r.urn for r in before.resources), (
        "after a deploy the program must register the same resources (no endpoint, scaling "
        "target or alarm of deploy's appears, none disappears)"
    )
    by_urn = {r.urn: r for r in after.resources}
    for urn, state in live.items():
        resource = by_urn[urn]
        changed = _changed(state, resource.inputs, resource.ignore_changes)
        assert changed == [], f"{resource.type} {resource.name}: pulumi up would change {changed}"
    # The deploy really touched fields the stack declares: without ignoreChanges they differ.
    for r in before.by_type(DEPLOYMENT):
        if r.ignore_changes:
            assert _changed(live[r.urn], r.inputs, ()) != []


# --- SageMaker's network (issue: endpoints with network isolation cannot reach S3) ------------


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_sagemaker_endpoints_reach_s3_and_the_vpc_through_their_own_group(stack: str):
    spec, rendered = _spec(stack), rendered_stack(stack)
    descriptor = _descriptor(rendered)
    groups = {
        sg
        for ref in descriptor.endpoints.values()
        if ref.sagemaker is not None
        for sg in ref.sagemaker.security_groups
    }
    for model in rendered.by_type("aws:sagemaker/model:Model"):
        groups |= set(model.inputs["vpcConfig"]["securityGroupIds"])
    if not any(e.kind == "sagemaker" for e in spec.endpoints):
        return
    assert groups, "SageMaker endpoints need a security group"
    interface = {
        r.id for r in rendered.by_type(SG) if r.inputs["name"] == f"{spec.prefix}-endpoints"
    }
    cidrs = [spec.network.cidr] if spec.network.vpc_id is None else list(ExistingVpc().cidrs)
    for group in groups:
        assert group not in interface, "SageMaker endpoints get a group of their own"
        egress = [
            r.inputs for r in rendered.by_type(EGRESS) if r.inputs["securityGroupId"] == group
        ]
        https = [
            e for e in egress if (e["ipProtocol"], e["fromPort"], e["toPort"]) == ("tcp", 443, 443)
        ]
        assert any(e.get("prefixListId") == s3_prefix_list_id(spec.region) for e in https), (
            "with network isolation SageMaker downloads the model and uploads captured data "
            "through the endpoint's interfaces; the S3 gateway endpoint routes to S3's prefix "
            "list, so the group must allow 443 to it"
        )
        assert sorted(e["cidrIpv4"] for e in https if "cidrIpv4" in e) == sorted(cidrs), (
            "443 to every CIDR block of the VPC (the interface endpoints), not only the primary"
        )
        assert len(egress) == len(https), "nothing else leaves an isolated endpoint"
        assert [r for r in rendered.by_type(INGRESS) if r.inputs["securityGroupId"] == group] == []
    if spec.network.vpc_id is not None:
        return  # checked by the program itself (below)
    # A new VPC: every private subnet routes S3 through the gateway endpoint.
    [s3] = [
        e
        for e in rendered.by_type("aws:ec2/vpcEndpoint:VpcEndpoint")
        if e.inputs["serviceName"] == f"com.amazonaws.{spec.region}.s3"
    ]
    tables = {
        a.inputs["subnetId"]: a.inputs["routeTableId"]
        for a in rendered.by_type("aws:ec2/routeTableAssociation:RouteTableAssociation")
    }
    subnets = {
        s for ref in descriptor.endpoints.values() if ref.sagemaker for s in ref.sagemaker.subnets
    }
    assert subnets and all(tables[s] in s3.inputs["routeTableIds"] for s in subnets), (
        "every subnet of a SageMaker endpoint needs the S3 gateway endpoint in its route table"
    )


EXISTING = [s for s in STACK_NAMES if _spec(s).network.vpc_id is not None]


@pytest.mark.parametrize(
    ("vpc", "message"),
    [
        (ExistingVpc(dns_hostnames=False), "DNS support and DNS hostnames must both be enabled"),
        (ExistingVpc(dns_support=False), "DNS support and DNS hostnames must both be enabled"),
        (ExistingVpc(unrouted_subnets=("{subnet}",)), "subnets {subnet} have no route to S3"),
    ],
    ids=["dns-hostnames", "dns-support", "no-s3-route"],
)
@pytest.mark.parametrize("stack", EXISTING)
def test_an_existing_vpc_unfit_for_endpoints_fails_before_anything_is_created(
    stack: str, vpc: ExistingVpc, message: str
):
    from components.mockrun import render_stack

    spec = _spec(stack)
    subnet = spec.network.private_subnet_ids[1]
    vpc = ExistingVpc(
        dns_hostnames=vpc.dns_hostnames,
        dns_support=vpc.dns_support,
        unrouted_subnets=tuple(s.format(subnet=subnet) for s in vpc.unrouted_subnets),
    )
    rendered = render_stack(stack, STACKS_DIR, existing_vpc=vpc, raise_errors=False)
    assert isinstance(rendered.error, ValueError), rendered.error
    text = str(rendered.error)
    assert text.startswith(f"mlinfra:network.vpcId: {spec.network.vpc_id}: "), text
    assert message.format(subnet=subnet) in text
    assert [r for r in rendered.resources if r.custom] == []


@pytest.mark.parametrize("status", ["PendingManualApproval", None])
def test_a_pin_that_must_not_be_served_fails_before_anything_is_created(status):
    """Pending: prod serves only approved versions. Gone while the endpoint serves: the
    stack never drops a serving endpoint because of what the registry says."""
    from components.mockrun import render_stack

    spec = _spec("nlp-prod")
    ep = spec.endpoints[0]
    group = f"{spec.prefix}-{ep.model_group}"
    account = FakeAccount(
        packages={(group, ep.model_version): status} if status else {},
        endpoints=set() if status else {f"{spec.prefix}-{ep.name}"},
    )
    rendered = render_stack("nlp-prod", STACKS_DIR, account=account, raise_errors=False)
    assert isinstance(rendered.error, ValueError), rendered.error
    assert str(rendered.error).startswith("mlinfra:endpoints[0].modelVersion: ")
    assert [r for r in rendered.resources if r.custom] == [], "a failed preview creates nothing"


def test_the_rules_cover_both_network_modes_and_both_endpoint_owners():
    """Passing is vacuous unless the stacks contain what the rules read."""
    specs = [_spec(s) for s in STACK_NAMES]
    assert EXISTING and any(s.network.vpc_id is None for s in specs)
    endpoints = [(e.kind, e.model_version is None) for s in specs for e in s.endpoints]
    for kind in ("sagemaker", "kubernetes"):
        assert (kind, True) in endpoints and (kind, False) in endpoints, kind
