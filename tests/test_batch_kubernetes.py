"""`mlinfra batch --on kubernetes`: the Job, created through the official client on kmock's API
emulator (loopback), followed to its end; and what its pod runs around `batch`."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from kubernetes import client
from moto import mock_aws

from tests.kube_emulator import kube_emulator
from tests.rollout_support import ARN, SERVE_REPO, FakeEcr, FakeRegistry, aws_descriptor
from workloads.jobs.batch import BatchJobError, batch
from workloads.jobs.batch.kubernetes import job_state
from workloads.jobs.batch.pod import fetch_model, upload
from workloads.jobs.rollout import RolloutError

STAMP = "20261130100000"
NAME = f"batch-churn-v1-{STAMP}"


@pytest.fixture
def api() -> Iterator[client.ApiClient]:
    with kube_emulator() as emulated:
        yield emulated.api


def finish(api: client.ApiClient, condition: dict[str, Any]):
    """The Job controller's part: mark the Job as it ends."""
    jobs = client.BatchV1Api(api)

    def step(_seconds: float) -> None:
        jobs.patch_namespaced_job_status(NAME, "team", {"status": {"conditions": [condition]}})

    return step


def run(api, sleep, *args: str, registry=None, **kwargs):
    return batch(
        aws_descriptor(), "churn", *args, on="kubernetes",
        registry=registry or FakeRegistry({1: "Approved", 2: "PendingManualApproval"}),
        api_client=api, ecr=FakeEcr({"abc"}), poll_s=0, timeout_s=30, sleep=sleep,
        stamp=lambda: STAMP, **kwargs,
    )  # fmt: skip


def test_a_job_runs_batch_in_the_team_namespace_and_succeeds(api):
    done = finish(api, {"type": "Complete", "status": "True"})
    result = run(api, done, "s3://team-dev-raw/in/", "s3://team-dev-artifacts/out/p.parquet")
    assert result.job == f"team/{NAME}" and result.version == 1
    job = api.sanitize_for_serialization(client.BatchV1Api(api).read_namespaced_job(NAME, "team"))
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "team-workloads"
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (init,) = pod["initContainers"]
    assert init["command"][-3:] == ["fetch-model", ARN.format(1), "/opt/ml/model"]
    (main,) = pod["containers"]
    assert main["image"] == f"{SERVE_REPO}:abc"
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["INPUT_URI"] == "s3://team-dev-raw/in/" and env["OUTPUT_SUFFIX"] == ".parquet"
    assert "workloads.serving.batch" in main["command"][-1]
    assert "workloads.jobs.batch.pod upload" in main["command"][-1]
    assert job["metadata"]["labels"]["mlinfra.io/model-version"] == "1"


def test_a_failed_job_reports_its_reason(api):
    failed = finish(
        api, {"type": "Failed", "status": "True", "message": "Job has reached the backoff limit"}
    )
    with pytest.raises(BatchJobError, match="failed: Job has reached the backoff limit"):
        run(api, failed, "s3://i/", "s3://o/p.csv")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("s3://i/", "s3://o/p.csv", 2), {}, RolloutError, "v2 is PendingManualApproval"),
        (("s3://i/", "s3://o/p.csv", 1), {"image_tag": "zzz"}, RolloutError, "serve:zzz does"),
        (("s3://i/", "s3://o/p.txt", 1), {}, BatchJobError, "an s3:// object ending in"),
        (("file:///in", "s3://o/p.csv", 1), {}, BatchJobError, "reads s3://"),
    ],
)
def test_bad_input_creates_no_job(api, args, kwargs, error, message):
    def never(_seconds: float) -> None:
        raise AssertionError("no job should run")

    with pytest.raises(error, match=message):
        run(api, never, *args, **kwargs)
    assert not client.BatchV1Api(api).list_namespaced_job("team").items


def test_job_state_reads_conditions():
    assert job_state({"status": {"active": 1}}) == ("running", "1 pod(s) active")
    assert job_state({"status": {"succeeded": 1}})[0] == "succeeded"
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}
    assert job_state({"status": failed}) == ("failed", "DeadlineExceeded")


def test_the_pod_fetches_the_package_artifact_and_uploads_the_output(aws_env, tmp_path):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            data = json.dumps({"task": "tabular"}).encode()
            info = tarfile.TarInfo("model.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        s3.put_object(Bucket="artifacts", Key="m/1.tar.gz", Body=archive.getvalue())
        sagemaker = boto3.client("sagemaker", region_name="us-east-1")
        sagemaker.create_model_package_group(ModelPackageGroupName="g")
        arn = sagemaker.create_model_package(
            ModelPackageGroupName="g",
            InferenceSpecification={
                "Containers": [
                    {"Image": f"{SERVE_REPO}:abc", "ModelDataUrl": "s3://artifacts/m/1.tar.gz"}
                ],
                "SupportedContentTypes": ["text/csv"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
        )["ModelPackageArn"]
        url = fetch_model(arn, tmp_path / "model", sagemaker, s3)
        assert url == "s3://artifacts/m/1.tar.gz"
        assert json.loads((tmp_path / "model" / "model.json").read_text()) == {"task": "tabular"}
        (tmp_path / "p.csv").write_text("prediction\n1\n")
        upload(tmp_path / "p.csv", "s3://artifacts/out/p.csv", s3)
        body = s3.get_object(Bucket="artifacts", Key="out/p.csv")["Body"].read()
        assert body == b"prediction\n1\n"
        with pytest.raises(ValueError, match="is not an s3://bucket/key URI"):
            upload(tmp_path / "p.csv", "s3://artifacts", s3)
