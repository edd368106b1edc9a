"""Rollout to a Kubernetes endpoint, with the official `kubernetes` client (imported lazily).

The stack's Deployment fetches its model in an init container from the model package named
by the pod template's model annotation (`mlinfra.io/model-package`). Deploying sets that
annotation to the approved version's package ARN, which rolls the pods (maxUnavailable 0:
the old pods serve until new ones are ready); a Deployment at zero replicas (the stack made
it before any model existed) is scaled to the endpoint's minimum, after which its
HorizontalPodAutoscaler keeps the count. The rollout is followed as `kubectl rollout status`
follows it; one that does not become ready in time, or that exceeds its progress deadline,
is undone (annotation, images and replica count put back) and reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workloads.jobs.rollout import Deployer, DeployResult, RolloutError
from workloads.jobs.rollout.clients import aws_clients, kube_api_client
from workloads.jobs.rollout.images import check_image, image_with_tag
from workloads.platform import EndpointRef, KubernetesEndpointRef, PlatformDescriptor
from workloads.registry.store import ModelVersion

POLL_S = 5.0
TIMEOUT_S = 1200.0  # GPU pools scale from zero: a first pod may wait minutes for a node


@dataclass
class _Plan:
    endpoint: str
    ref: KubernetesEndpointRef
    version: ModelVersion
    image: str | None
    previous: dict[str, Any]  # annotation, replicas and containers before the rollout
    replicas: int


def rollout_state(deployment: dict[str, Any]) -> tuple[str, str]:
    """("done" | "progressing" | "failed", why) for a Deployment, as kubectl decides it."""
    spec, status = deployment.get("spec", {}), deployment.get("status") or {}
    generation = deployment.get("metadata", {}).get("generation") or 0
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and (
            condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return "failed", condition.get("message") or "progress deadline exceeded"
    if generation > (status.get("observedGeneration") or 0):
        return "progressing", "waiting for the controller to see the change"
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas") or 0
    if updated < want:
        return "progressing", f"{updated} of {want} pods updated"
    if (status.get("replicas") or 0) > updated:
        return "progressing", f"{status['replicas'] - updated} old pods still terminating"
    if (status.get("availableReplicas") or 0) < updated:
        return "progressing", f"{status.get('availableReplicas') or 0} of {updated} pods ready"
    return "done", f"{updated} pods ready"


class KubernetesDeployer(Deployer):
    kind = "kubernetes"

    def __init__(
        self,
        descriptor: PlatformDescriptor,
        registry: Any,
        *,
        api_client: Any = None,
        ecr: Any = None,
        session: Any = None,
        poll_s: float = POLL_S,
        timeout_s: float = TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(descriptor, registry)
        from kubernetes import client

        self.apps = client.AppsV1Api(kube_api_client(descriptor, api_client, session))
        self.api_exception = client.ApiException
        self.ecr = aws_clients(descriptor, session, ecr=ecr)["ecr"]
        self.poll_s, self.timeout_s, self.sleep = poll_s, timeout_s, sleep

    def read(self, ref: KubernetesEndpointRef) -> dict[str, Any]:
        deployment = self.apps.read_namespaced_deployment(ref.deployment, ref.namespace)
        return self.apps.api_client.sanitize_for_serialization(deployment)

    def _prepare(
        self, endpoint: str, ref: EndpointRef, version: ModelVersion, image_tag: str | None
    ) -> _Plan:
        k8s = ref.kubernetes
        if k8s is None:
            raise RolloutError(
                f"endpoint {endpoint!r}: the descriptor has no Kubernetes section (a stack "
                "deployed before model annotations); run `pulumi up` for the stack first"
            )
        if not version.arn:
            raise RolloutError(f"{version.group} v{version.version} has no model package ARN")
        image = None
        if image_tag:
            image = image_with_tag(self.descriptor.registry.repositories.get("serve"), image_tag)
            check_image(self.ecr, image)
        try:
            current = self.read(k8s)
        except self.api_exception as exc:
            if exc.status == 404:
                raise RolloutError(
                    f"endpoint {endpoint!r}: no Deployment {k8s.deployment!r} in namespace "
                    f"{k8s.namespace!r}; run `pulumi up` for the stack first"
                ) from None
            raise
        template = current["spec"]["template"]
        annotations = template.get("metadata", {}).get("annotations") or {}
        replicas = current["spec"].get("replicas")
        minimum = ref.scaling.min_instances if ref.scaling else 1
        previous = {
            "annotation": annotations.get(k8s.model_annotation, ""),
            "replicas": replicas,
            "initContainers": template["spec"].get("initContainers") or [],
            "containers": template["spec"]["containers"],
        }
        # From zero (no model until now): the endpoint's minimum; else what the HPA set.
        wanted = minimum if not replicas else replicas
        return _Plan(endpoint, k8s, version, image, previous, wanted)

    def _patch(self, plan: _Plan, annotation: str, replicas: int | None, image: str | None) -> None:
        pod_spec: dict[str, Any] = {}
        if image is not None or plan.image is not None:
            # Whole lists: a merge by name would need strategic merge; this works under both.
            for key in ("initContainers", "containers"):
                pod_spec[key] = [{**c, "image": image} if image else c for c in plan.previous[key]]
        body: dict[str, Any] = {
            "spec": {
                "template": {
                    "metadata": {"annotations": {plan.ref.model_annotation: annotation}},
                    **({"spec": pod_spec} if pod_spec else {}),
                }
            }
        }
        if replicas is not None:
            body["spec"]["replicas"] = replicas
        self.apps.patch_namespaced_deployment(plan.ref.deployment, plan.ref.namespace, body)

    def _roll(self, plan: _Plan) -> DeployResult:
        version, ref = plan.version, plan.ref
        first = not plan.previous["replicas"]
        self._patch(plan, version.arn or "", plan.replicas, plan.image)
        messages = [
            f"Deployment {ref.namespace}/{ref.deployment}: model {version.arn}"
            + (f", scaled from zero to {plan.replicas}" if first else "")
        ]
        state, why = self.wait(ref)
        if state != "done":
            self._undo(plan)
            raise RolloutError(
                f"{version.group} v{version.version} did not become ready on "
                f"{ref.namespace}/{ref.deployment} ({why}); rolled back to "
                f"{plan.previous['annotation'] or 'no model'}"
            )
        messages.append(f"rollout complete: {why}")
        return DeployResult(
            endpoint=plan.endpoint,
            physical=ref.deployment,
            version=version.version,
            outcome="created" if first else "deployed",
            messages=messages,
        )

    def _undo(self, plan: _Plan) -> None:
        # image=None with plan.image set: the previous container lists go back as they were.
        previous = plan.previous
        self._patch(plan, previous["annotation"], previous["replicas"] or 0, None)

    def wait(self, ref: KubernetesEndpointRef) -> tuple[str, str]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            state, why = rollout_state(self.read(ref))
            if state != "progressing":
                return state, why
            if time.monotonic() > deadline:
                return "failed", f"not ready after {self.timeout_s:.0f} s: {why}"
            self.sleep(self.poll_s)
