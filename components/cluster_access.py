"""Who can reach the team's EKS API, and from where.

The API is private (prod always): `pulumi up` reaches it from a self-hosted CI runner whose
network the stack names (`cluster.access.apiAccessCidrs`, default: the VPC's own CIDR, a
runner inside the VPC). The cluster gets a security group of its own that admits 443 from
there; the default cluster security group admits only the cluster itself.

With `authenticationMode: API` a principal reaches Kubernetes only through an EKS access
entry. The deploy role (`deployRole`, what CI's AWS_DEPLOY_ROLE_ARN is) and the platform
team's `adminRoles` get cluster-admin entries; the preview role (`previewRole`, CI's
AWS_PREVIEW_ROLE_ARN) gets a read-only one, enough for previews and drift refreshes. When
a deploy role is named, the creator's implicit bootstrap entry is switched off: EKS would
otherwise create an entry for the same role and ours would fail with
ResourceInUseException. Kubernetes resources wait for these associations (through the
provider), so the first `up` does not race its own access.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components.spec import PlatformSpec

API_PORT = 443
# EKS access policies (ARNs `arn:<partition>:eks::aws:cluster-access-policy/<name>`).
CLUSTER_ADMIN = "AmazonEKSClusterAdminPolicy"
# Reads every object (Secrets and RBAC included): what a refresh of this stack reads.
ADMIN_VIEW = "AmazonEKSAdminViewPolicy"


def access_policy_arn(role_arn: str, policy: str) -> str:
    partition = role_arn.split(":")[1]
    return f"arn:{partition}:eks::aws:cluster-access-policy/{policy}"


def cluster_access(spec: PlatformSpec) -> dict[str, str]:
    """{role ARN: access policy}: the deploy role, the admins, then the preview role."""
    access = spec.cluster.access
    roles: dict[str, str] = {}
    for role in [access.deploy_role, *access.admin_roles]:
        if role:
            roles.setdefault(role, CLUSTER_ADMIN)
    if access.preview_role:
        roles.setdefault(access.preview_role, ADMIN_VIEW)
    return roles


def bootstrap_creator_admin(spec: PlatformSpec) -> bool:
    """Whether EKS gives the cluster's creator admin itself: only when no deploy role is named."""
    return spec.cluster.access.deploy_role is None


def api_security_group(
    parent: pulumi.Resource,
    name: str,
    spec: PlatformSpec,
    vpc_id: pulumi.Input[str],
    vpc_cidrs: list[str],
) -> aws.ec2.SecurityGroup:
    """The cluster's extra security group: HTTPS to the API from the deploy runner's network."""
    child = pulumi.ResourceOptions(parent=parent)
    tags = {**spec.tags, "Name": f"{spec.prefix}-eks-api"}
    sg = aws.ec2.SecurityGroup(
        f"{name}-api",
        name=f"{spec.prefix}-eks-api",
        description="HTTPS to the EKS API from the network of the deploy runner",
        vpc_id=vpc_id,
        tags=tags,
        opts=child,
    )
    cidrs = list(spec.cluster.access.api_access_cidrs) or list(vpc_cidrs)
    for i, cidr in enumerate(cidrs):
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-api-https-in-{i}",
            security_group_id=sg.id,
            description="HTTPS to the EKS API from the network of the deploy runner",
            ip_protocol="tcp",
            from_port=API_PORT,
            to_port=API_PORT,
            cidr_ipv4=cidr,
            tags=tags,
            opts=child,
        )
    return sg


def access_entries(
    parent: pulumi.Resource, name: str, spec: PlatformSpec, cluster: aws.eks.Cluster
) -> list[aws.eks.AccessPolicyAssociation]:
    """An access entry and its cluster-wide policy for each role of `cluster_access`."""
    associations = []
    for i, (role, policy) in enumerate(cluster_access(spec).items()):
        entry = aws.eks.AccessEntry(
            f"{name}-access-{i}",
            cluster_name=cluster.name,
            principal_arn=role,
            type="STANDARD",
            tags=spec.tags,
            opts=pulumi.ResourceOptions(parent=parent),
        )
        associations.append(
            aws.eks.AccessPolicyAssociation(
                f"{name}-access-{i}-policy",
                cluster_name=cluster.name,
                principal_arn=entry.principal_arn,
                policy_arn=access_policy_arn(role, policy),
                access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                opts=pulumi.ResourceOptions(parent=parent),
            )
        )
    return associations
