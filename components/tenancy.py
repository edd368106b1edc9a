"""The team's namespace on its cluster: what a tenant gets and what fences it in.

- the Namespace, enforcing the `restricted` Pod Security Standard (pinned to the cluster's
  Kubernetes version, so an upgrade does not change the rules under running workloads);
- a ResourceQuota on GPU, CPU and memory requests *and* limits, pods, persistent volume
  claims and their storage, and no LoadBalancer or NodePort services;
- a LimitRange that gives containers without resources the defaults the quota needs;
- NetworkPolicies: no ingress from outside the namespace (the endpoints and the torchrun
  rendezvous port 29500 are unauthenticated), and no egress to the instance metadata
  service (pods use IRSA; IMDS would hand them the node role);
- the EKS `vpc-cni` add-on with network policy enforcement on: without it a NetworkPolicy
  is stored but nothing enforces it.

Everything here is rendered from `components.admission`, which the tests use to admit
every pod the platform renders.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.admission import limit_range_spec
from components.spec import PlatformSpec

# Link-local instance metadata (IPv4); the cluster's pods are IPv4 only.
IMDS_CIDR = "169.254.169.254/32"
PSS_LEVEL = "restricted"


def namespace_labels(spec: PlatformSpec) -> dict[str, str]:
    """The team namespace's labels: who owns it, and the Pod Security level it enforces."""
    version = f"v{spec.cluster.kubernetes_version}"
    labels = {"team": spec.team, "environment": spec.environment}
    for mode in ("enforce", "audit", "warn"):
        labels[f"pod-security.kubernetes.io/{mode}"] = PSS_LEVEL
        labels[f"pod-security.kubernetes.io/{mode}-version"] = version
    return labels


def network_policies() -> dict[str, dict]:
    """NetworkPolicy specs by name. Policies add up: a pod gets what any of them allows."""
    every_pod: dict = {}
    return {
        # Selecting every pod for Ingress with no rule denies all ingress ...
        "default-deny-ingress": {"podSelector": every_pod, "policyTypes": ["Ingress"]},
        # ... except from the namespace's own pods (endpoints' callers, torchrun peers).
        "allow-same-namespace": {
            "podSelector": every_pod,
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": every_pod}]}],
        },
        # Egress anywhere but the instance metadata service.
        "deny-instance-metadata": {
            "podSelector": every_pod,
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [IMDS_CIDR]}}]}],
        },
    }


def team_namespace(
    name: str,
    spec: PlatformSpec,
    cluster_name: pulumi.Input[str],
    provider: k8s.Provider,
    parent: pulumi.Resource,
) -> k8s.core.v1.Namespace:
    """The namespace and its fences; returns the Namespace (its name is the team's)."""
    # The managed add-on adopts the aws-node DaemonSet EKS installs and turns on its
    # network policy agent (VPC CNI 1.14+, Kubernetes 1.25+).
    aws.eks.Addon(
        f"{name}-vpc-cni",
        cluster_name=cluster_name,
        addon_name="vpc-cni",
        configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        tags=spec.tags,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    on_cluster = pulumi.ResourceOptions(parent=parent, provider=provider)
    ns = k8s.core.v1.Namespace(
        f"{name}-namespace",
        metadata={"name": spec.team, "labels": namespace_labels(spec)},
        opts=on_cluster,
    )
    in_ns = pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=[ns])
    namespace = ns.metadata.name
    k8s.core.v1.ResourceQuota(
        f"{name}-quota",
        metadata={"name": "team-quota", "namespace": namespace},
        spec={"hard": spec.cluster.quota.hard},
        opts=in_ns,
    )
    k8s.core.v1.LimitRange(
        f"{name}-limits",
        metadata={"name": "team-defaults", "namespace": namespace},
        spec=limit_range_spec(),
        opts=in_ns,
    )
    for policy, policy_spec in network_policies().items():
        k8s.networking.v1.NetworkPolicy(
            f"{name}-{policy}",
            metadata={"name": policy, "namespace": namespace},
            spec=policy_spec,
            opts=in_ns,
        )
    return ns
