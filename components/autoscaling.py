"""Capacity that follows the work: cluster-autoscaler on the managed node groups, and the
metrics API for HorizontalPodAutoscalers.

Why cluster-autoscaler and not Karpenter: each GPU pool of the spec stays one EKS managed
node group, so the pool's `minSize`/`maxSize` are the Auto Scaling group's bounds, the
policy pack's GPU node limits and `mlinfra plan`'s cost ranges read the same numbers, and
EKS keeps doing what it does for managed groups (AMI updates, draining on spot rebalance
recommendations). Everything here is plain Kubernetes objects and AWS resources, rendered
and tested offline; Karpenter would need its chart (CRDs) at deploy time and NodePools
that the policy pack and the plan cannot bound the same way.

Scale from zero: with no node running, the autoscaler learns what a node of a pool would
offer (labels, the GPU taint, `nvidia.com/gpu`) from node-template tags on the pool's
Auto Scaling group. EKS does not copy node group tags to the ASG, so each tag is put on
the ASG itself (`aws.autoscaling.Tag`). The autoscaler assumes every node of a group has
one shape, so the spec allows one instance size per pool.

Scale to zero: a GPU node whose GPUs no pod requests is unneeded; it is drained and
removed after SCALE_DOWN_UNNEEDED (5 minutes), and not within SCALE_DOWN_DELAY_AFTER_ADD
of a scale-up. DaemonSet pods (the device plugin) do not keep a node.

The metrics API comes from the metrics-server EKS community add-on: an EKS-managed install
with no chart to fetch and no Kubernetes provider call, so it does not depend on reaching
the API from where `pulumi up` runs.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.iam import irsa_role
from components.spec import CLUSTER_AUTOSCALER_TAGS, PlatformSpec

NAMESPACE = "kube-system"
AUTOSCALER = "cluster-autoscaler"
AUTOSCALER_IMAGE = "registry.k8s.io/autoscaling/cluster-autoscaler"
HEALTH_PORT = 8085  # cluster-autoscaler's default --address
AUTOSCALER_TAG_PREFIX = "k8s.io/cluster-autoscaler"
NODE_TEMPLATE = f"{AUTOSCALER_TAG_PREFIX}/node-template"
GPU_RESOURCE = "nvidia.com/gpu"
SCALE_DOWN_UNNEEDED = "5m"
SCALE_DOWN_DELAY_AFTER_ADD = "5m"
MAX_NODE_PROVISION_TIME = "15m"  # a p5 can take this long; then another pool is tried
METRICS_SERVER_ADDON = "metrics-server"
POOL_LABEL = "mlinfra.io/pool"
SYSTEM_POOL = "system"


def autoscaler_tags(
    cluster_name: str, labels: dict[str, str], taint: str | None, gpus: int
) -> dict[str, str]:
    """Tags cluster-autoscaler reads to scale a node group up from zero nodes.

    With no node running, the autoscaler cannot see the labels, taints or GPUs a new node
    would have; these node-template tags tell it.
    """
    tags = {
        f"{AUTOSCALER_TAG_PREFIX}/enabled": "true",
        f"{AUTOSCALER_TAG_PREFIX}/{cluster_name}": "owned",
    }
    for key, value in labels.items():
        tags[f"{NODE_TEMPLATE}/label/{key}"] = value
    if taint is not None:
        tags[f"{NODE_TEMPLATE}/taint/{GPU_RESOURCE}"] = taint
    if gpus:
        tags[f"{NODE_TEMPLATE}/resources/{GPU_RESOURCE}"] = str(gpus)
    return tags


def node_template_tags(tags: dict[str, str]) -> dict[str, str]:
    """The scale-from-zero hints among a node group's tags: what the ASG must carry."""
    return {k: v for k, v in tags.items() if k.startswith(f"{NODE_TEMPLATE}/")}


def propagate_to_asg(
    parent: pulumi.Resource, name: str, group: aws.eks.NodeGroup, tags: dict[str, str]
) -> None:
    """Put the node group's scale-from-zero hints on its Auto Scaling group."""
    asg = group.resources.apply(lambda rs: rs[0].autoscaling_groups[0].name)
    for key, value in sorted(node_template_tags(tags).items()):
        slug = re.sub(r"[^a-z0-9]+", "-", key.removeprefix(f"{NODE_TEMPLATE}/").lower())
        aws.autoscaling.Tag(
            f"{name}-asg-{slug.strip('-')}",
            autoscaling_group_name=asg,
            # Only the ASG needs it; instances get their labels and taints from EKS.
            tag=aws.autoscaling.TagTagArgs(key=key, value=value, propagate_at_launch=False),
            opts=pulumi.ResourceOptions(parent=parent),
        )


def autoscaler_policy(spec: PlatformSpec, account: str, cluster_name: str) -> dict[str, Any]:
    """What cluster-autoscaler needs on AWS: describe everything, scale only this cluster's
    groups (the ASGs EKS tags `k8s.io/cluster-autoscaler/<cluster>`)."""
    partition = {"cn": "aws-cn", "us-gov": "aws-us-gov"}.get(spec.region.rsplit("-", 2)[0], "aws")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                # Describe calls take no resource in IAM.
                "Sid": "DiscoverNodeGroups",
                "Effect": "Allow",
                "Action": [
                    "autoscaling:DescribeAutoScalingGroups",
                    "autoscaling:DescribeAutoScalingInstances",
                    "autoscaling:DescribeLaunchConfigurations",
                    "autoscaling:DescribeScalingActivities",
                    "autoscaling:DescribeTags",
                    "ec2:DescribeImages",
                    "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplateVersions",
                    "ec2:GetInstanceTypesFromInstanceRequirements",
                ],
                "Resource": "*",
            },
            {
                "Sid": "DescribeOwnNodeGroups",
                "Effect": "Allow",
                "Action": ["eks:DescribeNodegroup"],
                "Resource": (
                    f"arn:{partition}:eks:{spec.region}:{account}:nodegroup/{cluster_name}/*"
                ),
            },
            {
                "Sid": "ScaleOwnNodeGroups",
                "Effect": "Allow",
                "Action": [
                    "autoscaling:SetDesiredCapacity",
                    "autoscaling:TerminateInstanceInAutoScalingGroup",
                ],
                "Resource": "*",
                "Condition": {
                    "StringEquals": {
                        f"aws:ResourceTag/{AUTOSCALER_TAG_PREFIX}/{cluster_name}": "owned"
                    }
                },
            },
        ],
    }


def autoscaler_args(cluster_name: str) -> list[str]:
    return [
        "./cluster-autoscaler",
        "--cloud-provider=aws",
        f"--namespace={NAMESPACE}",
        "--node-group-auto-discovery=asg:tag="
        f"{AUTOSCALER_TAG_PREFIX}/enabled,{AUTOSCALER_TAG_PREFIX}/{cluster_name}",
        # Of the pools that fit a pending pod, grow the one that wastes least.
        "--expander=least-waste",
        "--balance-similar-node-groups",
        "--skip-nodes-with-system-pods=false",
        "--skip-nodes-with-local-storage=false",
        f"--scale-down-unneeded-time={SCALE_DOWN_UNNEEDED}",
        f"--scale-down-delay-after-add={SCALE_DOWN_DELAY_AFTER_ADD}",
        f"--max-node-provision-time={MAX_NODE_PROVISION_TIME}",
        "--logtostderr=true",
        "--stderrthreshold=info",
        "--v=2",
    ]


_READ = ["get", "list", "watch"]
AUTOSCALER_CLUSTER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["events", "endpoints"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["update"]},
    {
        "apiGroups": [""],
        "resources": ["endpoints"],
        "resourceNames": [AUTOSCALER],
        "verbs": ["get", "update"],
    },
    {"apiGroups": [""], "resources": ["nodes"], "verbs": [*_READ, "update"]},
    {
        "apiGroups": [""],
        "resources": [
            "namespaces",
            "pods",
            "services",
            "replicationcontrollers",
            "persistentvolumeclaims",
            "persistentvolumes",
        ],
        "verbs": _READ,
    },
    {
        "apiGroups": ["apps"],
        "resources": ["statefulsets", "replicasets", "daemonsets"],
        "verbs": _READ,
    },
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": _READ},
    {
        "apiGroups": ["storage.k8s.io"],
        "resources": [
            "storageclasses",
            "csinodes",
            "csidrivers",
            "csistoragecapacities",
            "volumeattachments",
        ],
        "verbs": _READ,
    },
    {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": [*_READ, "patch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [AUTOSCALER],
        "verbs": ["get", "update"],
    },
]
AUTOSCALER_NAMESPACE_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "list", "watch"]},
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["cluster-autoscaler-status", "cluster-autoscaler-priority-expander"],
        "verbs": ["delete", "get", "update", "watch"],
    },
]


def cluster_autoscaler(
    parent: pulumi.Resource,
    name: str,
    spec: PlatformSpec,
    *,
    cluster: aws.eks.Cluster,
    oidc_arn: pulumi.Input[str],
    issuer: pulumi.Input[str],
    provider: k8s.Provider,
    system_nodes: aws.eks.NodeGroup,
) -> k8s.apps.v1.Deployment:
    """cluster-autoscaler in kube-system on the system pool, with its own IRSA role."""
    cluster_name = spec.prefix
    account = aws.get_caller_identity_output(
        opts=pulumi.InvokeOutputOptions(parent=parent)
    ).account_id
    role = irsa_role(
        parent,
        f"{name}-autoscaler",
        role_name=f"{spec.prefix}-cluster-autoscaler",
        oidc_arn=oidc_arn,
        issuer=issuer,
        namespace=NAMESPACE,
        service_account=AUTOSCALER,
        policy=account.apply(lambda a: autoscaler_policy(spec, a, cluster_name)),
        tags=spec.tags,
    )

    on_cluster = pulumi.ResourceOptions(parent=parent, provider=provider)
    labels = {"app.kubernetes.io/name": AUTOSCALER}
    meta = {"name": AUTOSCALER, "namespace": NAMESPACE, "labels": labels}
    sa = k8s.core.v1.ServiceAccount(
        f"{name}-autoscaler",
        metadata={**meta, "annotations": {"eks.amazonaws.com/role-arn": role.arn}},
        opts=on_cluster,
    )
    cluster_meta = {"name": AUTOSCALER, "labels": labels}
    cluster_role = k8s.rbac.v1.ClusterRole(
        f"{name}-autoscaler",
        metadata=cluster_meta,
        rules=AUTOSCALER_CLUSTER_RULES,
        opts=on_cluster,
    )
    ns_role = k8s.rbac.v1.Role(
        f"{name}-autoscaler", metadata=meta, rules=AUTOSCALER_NAMESPACE_RULES, opts=on_cluster
    )
    subjects = [{"kind": "ServiceAccount", "name": AUTOSCALER, "namespace": NAMESPACE}]
    for binding, kind, role_name, binding_meta in (
        (k8s.rbac.v1.ClusterRoleBinding, "ClusterRole", cluster_role.metadata.name, cluster_meta),
        (k8s.rbac.v1.RoleBinding, "Role", ns_role.metadata.name, meta),
    ):
        binding(
            f"{name}-autoscaler",
            metadata=binding_meta,
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role_name},
            subjects=subjects,
            opts=on_cluster,
        )
    image = f"{AUTOSCALER_IMAGE}:{CLUSTER_AUTOSCALER_TAGS[spec.cluster.kubernetes_version]}"
    return k8s.apps.v1.Deployment(
        f"{name}-autoscaler",
        metadata=meta,
        spec={
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    # Never evicted by itself while it drains a node.
                    "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
                },
                "spec": {
                    "serviceAccountName": sa.metadata.name,
                    "priorityClassName": "system-cluster-critical",
                    # On the system pool, never on a GPU node it may remove.
                    "nodeSelector": {POOL_LABEL: SYSTEM_POOL},
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65534,
                        "fsGroup": 65534,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": AUTOSCALER,
                            "image": image,
                            "imagePullPolicy": "Always",
                            "command": autoscaler_args(cluster_name),
                            "env": [{"name": "AWS_REGION", "value": spec.region}],
                            # Its default --address: metrics and /health-check.
                            "ports": [{"name": "http", "containerPort": HEALTH_PORT}],
                            "livenessProbe": {
                                "httpGet": {"path": "/health-check", "port": HEALTH_PORT},
                                "initialDelaySeconds": 30,
                                "periodSeconds": 20,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/health-check", "port": HEALTH_PORT},
                                "periodSeconds": 10,
                            },
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "600Mi"},
                                "limits": {"cpu": "1", "memory": "600Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
        # Its pod needs a system node to run on before the rollout can finish.
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=[system_nodes]),
    )


def metrics_server(
    parent: pulumi.Resource,
    name: str,
    spec: PlatformSpec,
    cluster: aws.eks.Cluster,
    system_nodes: aws.eks.NodeGroup,
) -> aws.eks.Addon:
    """The metrics API (`metrics.k8s.io`) HorizontalPodAutoscalers read, as an EKS add-on."""
    return aws.eks.Addon(
        f"{name}-metrics-server",
        cluster_name=cluster.name,
        addon_name=METRICS_SERVER_ADDON,
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        tags=spec.tags,
        # The add-on is degraded until a node can run it.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[system_nodes]),
    )
