"""The service clients rollouts and batch jobs use: given ones (tests pass fakes) or made
here, lazily, for the descriptor's region."""

from __future__ import annotations

from typing import Any

from workloads.platform import PlatformDescriptor


def aws_clients(
    descriptor: PlatformDescriptor, session: Any = None, **given: Any
) -> dict[str, Any]:
    """`given` maps an attribute name to a client or None; a None one is made from `session`
    (boto3's default session for the region if none). Names: `autoscaling` is
    application-autoscaling; every other name is the boto3 service name."""
    services = {"autoscaling": "application-autoscaling"}
    if session is None and any(client is None for client in given.values()):
        import boto3

        session = boto3.Session(region_name=descriptor.region)
    return {
        name: client
        if client is not None
        else session.client(services.get(name, name), region_name=descriptor.region)
        for name, client in given.items()
    }


def kube_api_client(
    descriptor: PlatformDescriptor, api_client: Any = None, session: Any = None
) -> Any:
    """The given ApiClient, or one for the stack's EKS cluster made as the job API makes
    its own (`workloads.jobs.kubernetes.eks_api_client`: the descriptor's endpoint and CA,
    a fresh token per request; no kubeconfig)."""
    if api_client is not None:
        return api_client
    from workloads.jobs.kubernetes import eks_api_client

    return eks_api_client(descriptor, session)
