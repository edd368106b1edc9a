"""Every Kubernetes manifest the platform produces, as the API server would receive it.

Two sources: the objects the Pulumi program registers (collected from the mock runtime's
render of each stack in stacks/), and the Jobs `render_training_job` renders for each node
pool of each stack's own descriptor, in the shapes the platform uses (one node with
defaults, one node with `cpu` only, several nodes with a checkpoint claim).
"""

from __future__ import annotations

import functools
from typing import Any

from components.mockrun import Rendered
from components.spec import PlatformSpec, load_stack_file
from tests.stack_support import STACK_FILES, rendered_stack, stack_name
from workloads.jobs.kubernetes_manifest import render_training_job
from workloads.platform import PlatformDescriptor

STACKS = [stack_name(p) for p in STACK_FILES]
SPECS: dict[str, PlatformSpec] = {stack_name(p): load_stack_file(p) for p in STACK_FILES}
POD_OWNERS = {"Deployment", "DaemonSet", "Job", "StatefulSet", "ReplicaSet", "CronJob"}


def api_version(token: str) -> tuple[str, str]:
    """'kubernetes:apps/v1:Deployment' -> ('apps/v1', 'Deployment'); core/v1 -> 'v1'."""
    _, group_version, kind = token.split(":")
    group, version = group_version.split("/")
    return (version if group == "core" else f"{group}/{version}"), kind


def pulumi_manifests(rendered: Rendered) -> list[dict[str, Any]]:
    out = []
    for resource in rendered.custom_resources:
        if not resource.type.startswith("kubernetes:") or resource.type.startswith(
            "kubernetes:index"
        ):
            continue
        version, kind = api_version(resource.type)
        out.append({"apiVersion": version, "kind": kind, **resource.inputs})
    return out


def descriptor(stack: str) -> PlatformDescriptor:
    return PlatformDescriptor.model_validate(rendered_stack(stack).outputs["platform"])


def job_manifests(stack: str) -> list[dict[str, Any]]:
    """Training Jobs on every pool of the stack, in the shapes the platform renders."""
    desc = descriptor(stack)
    assert desc.cluster is not None
    gpu_quota = SPECS[stack].cluster.quota.gpus
    out: list[dict[str, Any]] = []
    for pool, ref in desc.cluster.node_pools.items():
        base = {
            "pool": pool,
            "train_uri": f"{desc.buckets.features}/train/",
            "tag": "1.0.0",
            "hyperparameters": {"target": "label", "epochs": 3},
        }
        out += render_training_job(desc, name=f"{pool}-defaults"[:52], **base)
        out += render_training_job(desc, name=f"{pool}-cpu"[:52], cpu="1500m", **base)
        # As many nodes as the team's GPU quota admits, at most 3.
        nodes = min(3, gpu_quota // ref.gpus_per_node) if ref.gpus_per_node else 3
        out += render_training_job(
            desc,
            name=f"{pool}-multi"[:52],
            nodes=max(nodes, 1),
            checkpoint_claim="checkpoints",
            **base,
        )
    return out


@functools.cache
def all_manifests(stack: str) -> list[dict[str, Any]]:
    return pulumi_manifests(rendered_stack(stack)) + job_manifests(stack)


def pod_template(manifest: dict[str, Any]) -> dict[str, Any] | None:
    if manifest["kind"] not in POD_OWNERS:
        return None
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]
