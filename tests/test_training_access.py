"""What SageMaker training jobs need from the platform, over every stack's render."""

from __future__ import annotations

import json

import pytest

from components.spec import load_stack_file
from policy.mlinfra_policies import _statement_problems
from tests.stack_support import STACK_FILES, rendered_stack, stack_name
from workloads.jobs.base import JobRequest
from workloads.jobs.sagemaker_request import plan_training_job
from workloads.platform import PlatformDescriptor

SG = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"


@pytest.fixture(params=STACK_FILES, ids=stack_name)
def stack(request):
    return load_stack_file(request.param), rendered_stack(stack_name(request.param))


def _policy(rendered, role):
    (policy,) = [
        p
        for p in rendered.by_type("aws:iam/rolePolicy:RolePolicy")
        if p.inputs["role"] == role.outputs["name"]
    ]
    return json.loads(policy.inputs["policy"])


def test_training_role_is_sagemakers_and_reaches_only_the_team(stack):
    spec, rendered = stack
    role = rendered.one("aws:iam/role:Role", "training-role")
    assert role.inputs["name"] == f"{spec.prefix}-training"
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "sagemaker.amazonaws.com"}]
    doc = _policy(rendered, role)
    statements = {s["Sid"]: s for s in doc["Statement"]}
    # The policy pack's rule for data access holds for every statement.
    assert [p for s in doc["Statement"] for p in _statement_problems(s)] == []
    buckets = {b.outputs["arn"] for b in rendered.by_type("aws:s3/bucket:Bucket")}
    for s in doc["Statement"]:
        for action in s["Action"]:
            if action.startswith("s3:"):
                resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
                assert all(r.split("/")[0] in buckets for r in resources), s
    data_key = rendered.one("aws:kms/key:Key", "datalake-key")
    assert statements["UseTeamKey"]["Resource"] == [data_key.outputs["arn"]]
    train_repo = rendered.one("aws:ecr/repository:Repository", "registry-train")
    assert statements["PullTrainingImage"]["Resource"] == [train_repo.outputs["arn"]]
    groups = [
        g.outputs["arn"]
        for g in rendered.by_type("aws:sagemaker/modelPackageGroup:ModelPackageGroup")
    ]
    if groups:
        assert set(groups) <= set(statements["TeamModelRegistry"]["Resource"])


def test_training_security_group_admits_only_its_own_job(stack):
    spec, rendered = stack
    sg = rendered.one(SG, "training-sg")
    vpc_id = (
        spec.network.vpc_id
        if spec.network.vpc_id is not None
        else rendered.one("aws:ec2/vpc:Vpc").id
    )
    assert sg.inputs["vpcId"] == vpc_id
    ingress = [r for r in rendered.by_type(INGRESS) if r.inputs["securityGroupId"] == sg.id]
    assert [r.inputs.get("referencedSecurityGroupId") for r in ingress] == [sg.id]
    assert not any("cidrIpv4" in r.inputs for r in ingress)  # nothing from outside the group
    egress = [r for r in rendered.by_type(EGRESS) if r.inputs["securityGroupId"] == sg.id]
    ports = sorted(
        (r.inputs.get("fromPort"), r.inputs.get("toPort")) for r in egress if "cidrIpv4" in r.inputs
    )
    assert ports == [(443, 443)]


def test_the_descriptor_carries_what_jobs_need(stack):
    spec, rendered = stack
    descriptor = PlatformDescriptor.model_validate(rendered.outputs["platform"])
    training = descriptor.training
    assert training is not None
    assert training.role_arn == rendered.one("aws:iam/role:Role", "training-role").outputs["arn"]
    assert training.security_group_ids == [rendered.one(SG, "training-sg").id]
    assert training.kms_key_arn == rendered.one("aws:kms/key:Key", "datalake-key").outputs["arn"]
    cluster_subnets = rendered.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]["subnetIds"]
    assert sorted(training.subnet_ids) == sorted(cluster_subnets)  # the private subnets
    eks = rendered.one("aws:eks/cluster:Cluster")
    assert descriptor.cluster.endpoint == eks.outputs["endpoint"]
    assert descriptor.cluster.certificate_authority == eks.outputs["certificateAuthority"]["data"]
    # The exported document is enough to plan a SageMaker job.
    plan = plan_training_job(
        descriptor,
        JobRequest(name="smoke", channels={"train": f"{descriptor.buckets.raw}/x"}, image_tag="v1"),
        {},
    )
    assert plan.role_arn == training.role_arn and plan.volume_kms_key_arn == training.kms_key_arn
