"""Kubernetes training jobs through the official client, against an API emulator on loopback."""

from __future__ import annotations

import base64
import threading
import time
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("kubernetes", reason="the `kubernetes` extra is not installed")
pytest.importorskip("kmock")

import boto3  # noqa: E402
from kubernetes import client  # noqa: E402
from moto import mock_aws  # noqa: E402

from tests.jobs_support import (  # noqa: E402
    REGION,
    TRAIN_REPO,
    aws_descriptor,
    push_image,
    terminated,
)
from tests.kube_emulator import kube_emulator  # noqa: E402
from workloads.jobs.base import JobError, JobRequest  # noqa: E402
from workloads.jobs.kubernetes import KubernetesJobs, eks_token  # noqa: E402
from workloads.training.metric_line import format_metric  # noqa: E402

NS = "vision"


@pytest.fixture
def cluster(aws_env):
    with mock_aws(), kube_emulator() as emu:
        session = boto3.Session(region_name=REGION)
        push_image(session, "v3")
        jobs = KubernetesJobs(aws_descriptor(), api_client=emu.api, boto_session=session)
        jobs.poll_seconds = 0.05
        yield jobs, emu


def request(**kw) -> JobRequest:
    raw = aws_descriptor().buckets.raw
    base = dict(
        name="churn-gpu",
        channels={"train": f"{raw}/churn/train", "validation": f"{raw}/churn/validation"},
        hyperparameters={"target": "churned", "epochs": "5"},
        image_tag="v3",
        pool="train-a10g",
        spot=True,
        model_group="churn",
    )
    base.update(kw)
    return JobRequest(**base)


def pod(name: str, job: str, **status) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"mlinfra.io/training-job": job}},
        "spec": {"containers": [{"name": "train", "image": f"{TRAIN_REPO}:v3"}]},
        "status": status,
    }


def test_create_applies_the_rendered_job_as_the_record(cluster):
    jobs, emu = cluster
    handle = jobs.submit(request())
    job = client.BatchV1Api(emu.api).read_namespaced_job("churn-gpu", NS)
    labels = job.metadata.labels
    assert (
        labels["mlinfra.io/stack"] == "vision-dev" and labels["mlinfra.io/model-group"] == "churn"
    )
    assert job.spec.template.spec.containers[0].image == f"{TRAIN_REPO}:v3"
    assert job.spec.template.spec.node_selector == {"mlinfra.io/pool": "train-a10g"}
    status = jobs.status(handle.id)
    assert status.state == "Pending"
    assert status.channels == dict(request().channels)
    assert status.hyperparameters == {"target": "churned", "epochs": "5"}
    assert [j.id for j in jobs.list()] == ["churn-gpu"]
    with pytest.raises(JobError, match="a job named 'churn-gpu' already exists"):
        jobs.submit(request())


def test_watch_streams_the_log_until_the_job_completes(cluster):
    jobs, emu = cluster
    handle = jobs.submit(request())
    batch, core = client.BatchV1Api(emu.api), client.CoreV1Api(emu.api)
    log = "\n".join(
        ["loading", format_metric("validation_loss", 0.4, 1), format_metric("auc", 0.93)]
    )

    def the_cluster_runs_it() -> None:  # what the job controller and kubelet would do
        time.sleep(0.2)
        core.create_namespaced_pod(NS, pod("churn-gpu-x1", "churn-gpu", phase="Running"))
        emu.serve_log(NS, "churn-gpu-x1", log + "\n")
        batch.patch_namespaced_job_status("churn-gpu", NS, {"status": {"active": 1}})
        time.sleep(0.3)
        batch.patch_namespaced_job_status(
            "churn-gpu",
            NS,
            {
                "status": {
                    "active": 0,
                    "succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True"}],
                }
            },  # fmt: skip
        )

    runner = threading.Thread(target=the_cluster_runs_it)
    runner.start()
    seen: list[str] = []
    final = jobs.wait(handle.id, on_line=seen.append, timeout=20)
    runner.join()
    assert seen == log.splitlines()  # each line once
    assert final.state == "Completed"
    assert final.metrics == {"auc": 0.93}  # final metric lines only, from the metric line
    assert final.artifact_uri == f"{aws_descriptor().buckets.artifacts}/models/churn-gpu"


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [
        (
            1,
            "data error: column 'churned' is missing",
            "training failed (exit 1): data error: column 'churned' is missing",
        ),
        (137, "", "out of memory"),
    ],
)
def test_a_pod_failure_surfaces_as_a_failed_job_with_its_reason(cluster, code, message, reason):
    jobs, emu = cluster
    handle = jobs.submit(request())
    client.CoreV1Api(emu.api).create_namespaced_pod(
        NS, pod("churn-gpu-x1", "churn-gpu", **terminated(code, message))
    )
    client.BatchV1Api(emu.api).patch_namespaced_job_status(
        "churn-gpu",
        NS,
        {
            "status": {
                "failed": 1,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "PodFailurePolicy",
                        "message": "Container train for pod vision/churn-gpu-x1 failed",
                    }
                ],
            }
        },  # fmt: skip
    )
    status = jobs.status(handle.id)
    assert status.state == "Failed" and status.exit_code == code
    assert reason in status.reason and "PodFailurePolicy" in status.reason
    assert status.artifact_uri is None


def test_stop_deletes_the_job(cluster):
    jobs, emu = cluster
    handle = jobs.submit(request(nodes=2))  # with its headless Service
    jobs.cancel(handle.id)
    with pytest.raises(JobError, match="no Kubernetes job 'churn-gpu' in namespace vision"):
        jobs.status(handle.id)
    with pytest.raises(client.exceptions.ApiException):
        client.CoreV1Api(emu.api).read_namespaced_service("churn-gpu", NS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            dict(image_tag="v9"),
            "image tag 'v9' does not exist in repository vision-dev-train; pushed tags: v3",
        ),
        (dict(pool="tpu"), "unknown pool 'tpu'; stack 'vision-dev' has: system, train-a10g"),
        (dict(pool=None), "--pool is required on Kubernetes; stack 'vision-dev' has: train-a10g"),
        (dict(model_group="fraud"), "unknown model group 'fraud'"),
        (
            dict(channels={"train": "s3://elsewhere/x"}),
            "channel train=s3://elsewhere/x is outside the team's buckets",
        ),
        (dict(instance_type="g5.xlarge"), "--instance-type is for SageMaker"),
    ],
)
def test_bad_input_gets_one_message_and_creates_nothing(cluster, change, message):
    jobs, emu = cluster
    with pytest.raises(JobError) as err:
        jobs.submit(request(**change))
    assert message in str(err.value)
    assert jobs.list() == []


def test_a_gpu_pool_on_a_stack_without_a_cluster_is_refused():
    with pytest.raises(JobError, match="has no Kubernetes cluster: run --on sagemaker"):
        KubernetesJobs(aws_descriptor(cluster=False))
    from workloads.jobs.base import validate_request

    with pytest.raises(
        JobError, match="pool 'train-a10g' asked, but stack 'vision-dev' has no Kubernetes cluster"
    ):
        validate_request(aws_descriptor(cluster=False), request())


def test_the_token_is_what_aws_eks_get_token_makes(aws_env):
    token = eks_token(boto3.Session(region_name=REGION), "vision-dev")
    assert token.startswith("k8s-aws-v1.")
    payload = token.removeprefix("k8s-aws-v1.")
    url = urlparse(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode())
    query = parse_qs(url.query)
    assert url.netloc == f"sts.{REGION}.amazonaws.com"
    assert query["Action"] == ["GetCallerIdentity"]
    assert "x-k8s-aws-id" in query["X-Amz-SignedHeaders"][0]
    assert query["X-Amz-Expires"] == ["60"]


def test_the_client_reaches_the_descriptors_cluster_with_a_fresh_token(aws_env):
    descriptor = aws_descriptor()
    jobs = KubernetesJobs(descriptor, boto_session=boto3.Session(region_name=REGION))
    config = jobs.api_client().configuration
    assert config.host == descriptor.cluster.endpoint
    with open(config.ssl_ca_cert, "rb") as handle:
        assert handle.read() == base64.b64decode(descriptor.cluster.certificate_authority)
    assert config.get_api_key_with_prefix("authorization").startswith("Bearer k8s-aws-v1.")
    without = aws_descriptor()
    without = without.model_copy(
        update={"cluster": without.cluster.model_copy(update={"endpoint": None})}
    )
    with pytest.raises(JobError, match="exports no cluster endpoint/CA"):
        KubernetesJobs(without).api_client()
