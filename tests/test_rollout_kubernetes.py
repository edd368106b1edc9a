"""`mlinfra deploy` to a Kubernetes endpoint: the official client against kmock's Kubernetes
API emulator over real HTTP on loopback (tests/kube_emulator.py starts and stops it).
Nothing runs in the emulator, so the test plays the Deployment controller: between polls it
writes the status a controller would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.kube_emulator import kube_emulator
from tests.rollout_support import ARN, SERVE_REPO, FakeEcr, FakeRegistry, aws_descriptor
from workloads.jobs.rollout import RolloutError, deployer_for
from workloads.jobs.rollout.kubernetes import KubernetesDeployer, rollout_state

NS, NAME, ANNOTATION = "team", "team-dev-ranker", "mlinfra.io/model-package"


@pytest.fixture
def api() -> Iterator[client.ApiClient]:
    with kube_emulator() as emulated:
        yield emulated.api


def create_deployment(api: client.ApiClient, replicas: int, annotation: str = "") -> None:
    container = {"name": "serve", "image": f"{SERVE_REPO}:abc"}
    client.AppsV1Api(api).create_namespaced_deployment(
        NS,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NS, "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": NAME}},
                "template": {
                    "metadata": {"labels": {"app": NAME}, "annotations": {ANNOTATION: annotation}},
                    "spec": {
                        "initContainers": [{**container, "name": "fetch-model"}],
                        "containers": [container],
                    },
                },
            },
        },
    )


def controller(api: client.ApiClient, ready: bool) -> Callable[[float], None]:
    """A stand-in for the Deployment controller, run between the deployer's polls: it sees
    the new template and brings the pods up (or reports the progress deadline exceeded)."""
    apps = client.AppsV1Api(api)

    def step(_seconds: float) -> None:
        current = api.sanitize_for_serialization(apps.read_namespaced_deployment(NAME, NS))
        want = current["spec"].get("replicas", 1)
        status: dict[str, Any] = {"observedGeneration": current["metadata"].get("generation", 0)}
        if ready:
            status |= {"replicas": want, "updatedReplicas": want, "availableReplicas": want}
        else:
            status |= {
                "replicas": want + 1,
                "updatedReplicas": 1,
                "availableReplicas": want,
                "conditions": [
                    {"type": "Progressing", "status": "False",
                     "reason": "ProgressDeadlineExceeded",
                     "message": 'ReplicaSet "team-dev-ranker-2" has timed out progressing.'}
                ],
            }  # fmt: skip
        apps.patch_namespaced_deployment_status(NAME, NS, {"status": status})

    return step


def deployer(api, registry, sleep, ecr=None) -> KubernetesDeployer:
    built = deployer_for(
        aws_descriptor(), "ranker", registry, api_client=api, ecr=ecr or object(),
        poll_s=0, timeout_s=30, sleep=sleep,
    )  # fmt: skip
    assert isinstance(built, KubernetesDeployer)
    return built


def template(api) -> dict[str, Any]:
    apps = client.AppsV1Api(api)
    return api.sanitize_for_serialization(apps.read_namespaced_deployment(NAME, NS))


def test_first_deploy_sets_the_model_and_scales_up_from_zero(api):
    create_deployment(api, replicas=0)
    registry = FakeRegistry({1: "Approved", 2: "PendingManualApproval"})
    result = deployer(api, registry, controller(api, ready=True)).deploy("ranker")
    current = template(api)
    assert current["spec"]["replicas"] == 2  # the endpoint's minInstances
    annotations = current["spec"]["template"]["metadata"]["annotations"]
    assert annotations[ANNOTATION] == ARN.format(1)
    assert (result.outcome, result.version) == ("created", 1)
    assert "scaled from zero to 2" in result.messages[0]


def test_a_rollout_that_does_not_become_ready_is_undone(api):
    create_deployment(api, replicas=3, annotation=ARN.format(1))
    registry = FakeRegistry({1: "Approved", 2: "Approved"})
    with pytest.raises(RolloutError, match="v2 did not become ready .*timed out progressing.*"
                       "rolled back to .*team-dev-churn/1"):  # fmt: skip
        deployer(api, registry, controller(api, ready=False)).deploy("ranker", 2)
    current = template(api)
    assert current["spec"]["template"]["metadata"]["annotations"][ANNOTATION] == ARN.format(1)
    assert current["spec"]["replicas"] == 3  # what the HPA had set, kept


def test_bad_input_is_refused_and_nothing_is_changed(api):
    create_deployment(api, replicas=0)
    registry = FakeRegistry({1: "Rejected"})

    def never(_seconds: float) -> None:
        raise AssertionError("nothing should be waited for")

    with pytest.raises(RolloutError, match="v1 is Rejected, not Approved"):
        deployer(api, registry, never).deploy("ranker", 1)
    with pytest.raises(RolloutError, match="has no approved version to deploy"):
        deployer(api, registry, never).deploy("ranker")
    client.AppsV1Api(api).delete_namespaced_deployment(NAME, NS)
    with pytest.raises(RolloutError, match="no Deployment 'team-dev-ranker' in namespace 'team'"):
        deployer(api, FakeRegistry({1: "Approved"}), never).deploy("ranker", 1)


def test_rollout_state_reads_the_deployment_as_kubectl_does():
    base = {"metadata": {"generation": 2}, "spec": {"replicas": 2}}
    assert rollout_state({**base, "status": {"observedGeneration": 1}})[0] == "progressing"
    status = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}
    assert rollout_state({**base, "status": status}) == (
        "progressing",
        "1 old pods still terminating",
    )
    status["replicas"] = 2
    assert rollout_state({**base, "status": status}) == ("done", "2 pods ready")


def test_an_image_tag_is_checked_in_ecr_then_set_on_every_container(api):
    create_deployment(api, replicas=1, annotation=ARN.format(1))
    registry = FakeRegistry({1: "Approved", 2: "Approved"})

    def never(_seconds: float) -> None:
        raise AssertionError("nothing should be waited for")

    refused = deployer(api, registry, never, ecr=FakeEcr({"abc", "def456"}))
    with pytest.raises(RolloutError, match="team-dev-serve:nope does not exist"):
        refused.deploy("ranker", 2, image_tag="nope")
    assert template(api)["spec"]["template"]["metadata"]["annotations"][ANNOTATION] == ARN.format(1)

    ready = deployer(api, registry, controller(api, ready=True), ecr=FakeEcr({"def456"}))
    ready.deploy("ranker", 2, image_tag="def456")
    pod = template(api)["spec"]["template"]["spec"]
    images = {c["name"]: c["image"] for c in pod["initContainers"] + pod["containers"]}
    assert images == {"fetch-model": f"{SERVE_REPO}:def456", "serve": f"{SERVE_REPO}:def456"}


def test_without_a_client_the_deployer_reaches_the_descriptors_cluster(monkeypatch):
    """Rollouts make their Kubernetes client as the job API does: the endpoint and CA the
    stack exports, a token from the AWS credentials (no kubeconfig read)."""
    import base64

    import boto3

    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    descriptor = aws_descriptor()
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    cluster = descriptor.cluster.model_copy(
        update={"endpoint": "https://127.0.0.1:6443", "certificate_authority": ca}
    )
    descriptor = descriptor.model_copy(update={"cluster": cluster})
    built = deployer_for(
        descriptor, "ranker", FakeRegistry({1: "Approved"}), ecr=object(),
        session=boto3.Session(region_name="us-east-1"),
    )  # fmt: skip
    config = built.apps.api_client.configuration
    assert config.host == "https://127.0.0.1:6443"
    assert config.get_api_key_with_prefix("authorization").startswith("Bearer k8s-aws-v1.")
    # a stack applied before the cluster's endpoint was exported says what to do
    bare = descriptor.model_copy(update={"cluster": cluster.model_copy(update={"endpoint": None})})
    with pytest.raises(ValueError, match="exports no cluster endpoint/CA: run `pulumi up`"):
        deployer_for(bare, "ranker", FakeRegistry({1: "Approved"}), ecr=object())
