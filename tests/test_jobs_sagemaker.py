"""SageMaker training jobs through the SDK v3: moto for the service, Stubber for shapes."""

from __future__ import annotations

import datetime as dt
import re

import pytest

pytest.importorskip("sagemaker.train", reason="the `sagemaker` extra is not installed")

import boto3  # noqa: E402
from botocore.stub import ANY, Stubber  # noqa: E402
from moto import mock_aws  # noqa: E402

from tests.jobs_support import KEY, REGION, ROLE, TRAIN_REPO, aws_descriptor, push_image  # noqa: E402
from workloads.jobs.base import JobError, JobRequest, get_backend  # noqa: E402
from workloads.jobs.sagemaker import SDK_CONFIG, SageMakerJobs  # noqa: E402
from workloads.jobs.sagemaker_request import plan_training_job  # noqa: E402
from workloads.training.metric_line import format_metric, parse_metric_lines  # noqa: E402


@pytest.fixture
def sm_env(aws_env, monkeypatch, tmp_path):
    """The SDK's switches, as the backend sets them, and a record of every AWS call made."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(tmp_path / "sm-config.yaml"))
    (tmp_path / "sm-config.yaml").write_text(SDK_CONFIG)
    import sagemaker.core.telemetry.telemetry_logging as telemetry

    sent: list = []
    monkeypatch.setattr(telemetry, "_send_telemetry_request", lambda *a, **k: sent.append(a))
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        calls: list[str] = []
        session.events.register(
            "before-call.*.*",
            lambda model, **_: calls.append(f"{model.service_model.service_name}:{model.name}"),
        )
        yield session, calls, sent
    from sagemaker.core.utils.utils import SageMakerClient

    SageMakerClient.reset()  # the SDK caches clients per session


def request(**kw) -> JobRequest:
    base = dict(
        name="churn",
        channels={
            "train": f"{aws_descriptor().buckets.raw}/churn/train",
            "validation": f"{aws_descriptor().buckets.raw}/churn/validation",
        },
        hyperparameters={"target": "churned", "epochs": "5"},
        image_tag="v1",
        model_group="churn",
    )
    base.update(kw)
    return JobRequest(**base)


def test_a_job_runs_on_sagemaker_and_is_its_own_record(sm_env):
    session, calls, sent = sm_env
    push_image(session, "v1")
    jobs = SageMakerJobs(aws_descriptor(), boto_session=session)
    handle = jobs.submit(request(spot=True, instance_type="ml.g5.xlarge"))
    assert handle.id.startswith("churn-")
    status = jobs.status(handle.id)  # asked of SageMaker (moto completes at once)
    assert status.state == "Completed"
    assert status.channels["train"].endswith("/churn/train")
    assert status.hyperparameters == {"target": "churned", "epochs": "5"}
    assert status.image == f"{TRAIN_REPO}:v1"
    assert status.artifact_uri.startswith(f"{aws_descriptor().buckets.artifacts}/jobs/{handle.id}/")
    assert status.labels["mlinfra.io/stack"] == "vision-dev"
    assert status.model_group == "churn"
    assert [j.id for j in jobs.list()] == [handle.id]
    # No call we did not ask for: no IAM role validation, no STS, no telemetry.
    services = {c.split(":")[0] for c in calls}
    assert services <= {"ecr", "sagemaker"}, calls
    assert sent == []


def test_the_request_the_sdk_sends(sm_env):
    """Spot, checkpoints, VPC, KMS, output and metric definitions, as CreateTrainingJob gets
    them (botocore validates the request against the API model before the Stubber answers)."""
    session, _, _ = sm_env
    push_image(session, "v7")
    descriptor = aws_descriptor()
    jobs = SageMakerJobs(descriptor, boto_session=session)
    client = jobs.sagemaker_client()
    sent: list[dict] = []
    client.meta.events.register(
        "before-parameter-build.sagemaker.CreateTrainingJob",
        lambda params, **_: sent.append(params),
    )
    with Stubber(client) as stub:
        stub.add_response(
            "create_training_job",
            {"TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/x"},
        )
        stub.add_response(
            "describe_training_job", _describe("churn-1", "InProgress"), {"TrainingJobName": ANY}
        )
        handle = jobs.submit(
            request(image_tag="v7", spot=True, nodes=2, instance_type="ml.g5.12xlarge")
        )
    (req,) = sent
    artifacts = descriptor.buckets.artifacts
    assert req["TrainingJobName"].startswith("churn-")  # the SDK stamps the time
    assert handle.id == "churn-1"  # the id is what SageMaker answers
    assert req["AlgorithmSpecification"]["TrainingImage"] == f"{TRAIN_REPO}:v7"
    assert req["RoleArn"] == ROLE
    assert req["EnableManagedSpotTraining"] is True
    assert (
        req["StoppingCondition"]["MaxWaitTimeInSeconds"]
        >= req["StoppingCondition"]["MaxRuntimeInSeconds"]
    )
    assert req["CheckpointConfig"]["S3Uri"] == f"{artifacts}/checkpoints/churn"
    assert req["VpcConfig"] == {
        "SecurityGroupIds": ["sg-0training"],
        "Subnets": ["subnet-0a", "subnet-0b"],
    }
    assert req["EnableInterContainerTrafficEncryption"] is True  # 2 instances talk
    assert req["ResourceConfig"]["VolumeKmsKeyId"] == KEY
    assert req["ResourceConfig"]["InstanceCount"] == 2
    assert req["OutputDataConfig"]["S3OutputPath"] == f"{artifacts}/jobs"
    assert req["OutputDataConfig"]["KmsKeyId"] == KEY
    assert {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]
    } == dict(request().channels)
    assert req["HyperParameters"] == {"target": "churned", "epochs": "5"}
    tags = {t["Key"]: t["Value"] for t in req["Tags"]}
    assert tags["mlinfra.io/model-group"] == "churn" and tags["mlinfra.io/team"] == "vision"
    # The metric definitions come from the metric line: each regex reads what the trainer prints.
    definitions = req["AlgorithmSpecification"]["MetricDefinitions"]
    names = [d["Name"] for d in definitions]
    assert "validation_loss" in names and "auc" in names  # auc: the model group's gate
    for d in definitions:
        line = format_metric(d["Name"], 0.125, epoch=3)
        assert float(re.search(d["Regex"], line).group(1)) == 0.125
        assert [m.value for m in parse_metric_lines(line)] == [0.125]


def test_status_reads_the_final_metrics_and_the_failure(sm_env):
    session, _, _ = sm_env
    jobs = SageMakerJobs(aws_descriptor(), boto_session=session)
    client = jobs.sagemaker_client()
    definitions = [{"Name": "auc", "Regex": "x"}]
    done = _describe(
        "churn-2",
        "Completed",
        FinalMetricDataList=[
            {"MetricName": "auc", "Value": 0.91, "Timestamp": dt.datetime(2026, 11, 30)},
            {
                "MetricName": "train:progress",
                "Value": 100.0,
                "Timestamp": dt.datetime(2026, 11, 30),
            },
        ],
    )
    done["AlgorithmSpecification"]["MetricDefinitions"] = definitions
    failed = _describe(
        "churn-3", "Failed", FailureReason="AlgorithmError: training failed: data error"
    )
    tags = {"Tags": [{"Key": "mlinfra.io/stack", "Value": "vision-dev"}]}
    with Stubber(client) as stub:
        stub.add_response("describe_training_job", done, {"TrainingJobName": "churn-2"})
        stub.add_response("list_tags", tags, {"ResourceArn": done["TrainingJobArn"]})
        stub.add_response("describe_training_job", failed, {"TrainingJobName": "churn-3"})
        stub.add_response("list_tags", tags, {"ResourceArn": failed["TrainingJobArn"]})
        ok = jobs.status("churn-2")
        bad = jobs.status("churn-3")
    assert (ok.state, ok.metrics) == ("Completed", {"auc": 0.91})
    assert (bad.state, bad.reason) == ("Failed", "AlgorithmError: training failed: data error")


def test_stop_and_logs(sm_env):
    session, _, _ = sm_env
    push_image(session, "v1")
    jobs = SageMakerJobs(aws_descriptor(), boto_session=session)
    handle = jobs.submit(request())
    logs = session.client("logs", region_name=REGION)
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    stream = f"{handle.id}/algo-1-1700000000"
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)  # older events are refused
    lines = ["epoch 1", format_metric("validation_loss", 0.5, epoch=1), format_metric("auc", 0.9)]
    logs.put_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs",
        logStreamName=stream,
        logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(lines)],
    )
    assert list(jobs.logs(handle.id)) == lines
    assert [m.name for m in parse_metric_lines(jobs.logs(handle.id))] == ["validation_loss", "auc"]
    jobs.cancel(handle.id)  # completed already (moto): nothing to stop, no error
    with pytest.raises(JobError, match="no SageMaker training job 'nope'"):
        jobs.status("nope")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            dict(image_tag="v404"),
            "image tag 'v404' does not exist in repository vision-dev-train; pushed tags: v1",
        ),
        (dict(image_tag=None), "--image TAG is required"),
        (dict(image_tag="latest"), "'latest' is refused"),
        (
            dict(model_group="fraud"),
            "unknown model group 'fraud'; stack 'vision-dev' declares: churn",
        ),
        (
            dict(channels={"train": "s3://someone-else/data"}),
            "channel train=s3://someone-else/data is outside the team's buckets",
        ),
        (dict(pool="train-a10g"), "is a Kubernetes node pool"),
        (dict(name="Churn_1"), "job name 'Churn_1' must be lowercase"),
    ],
)
def test_bad_input_gets_one_message_and_creates_nothing(sm_env, change, message):
    session, calls, _ = sm_env
    push_image(session, "v1")
    jobs = SageMakerJobs(aws_descriptor(), boto_session=session)
    with pytest.raises(JobError, match=re.escape(message)):
        jobs.submit(request(**change))
    assert not [c for c in calls if c.startswith("sagemaker:Create")]


def test_the_plan_is_pure_and_spot_waits_at_least_the_run():
    plan = plan_training_job(aws_descriptor(), request(spot=True, max_run_seconds=3600), {})
    assert (plan.max_run_seconds, plan.max_wait_seconds) == (3600, 7200)
    with pytest.raises(JobError, match="max wait 60 s is shorter than the max run 3600 s"):
        plan_training_job(
            aws_descriptor(), request(spot=True, max_run_seconds=3600, max_wait_seconds=60), {}
        )
    with pytest.raises(JobError, match="exports no SageMaker training settings"):
        plan_training_job(aws_descriptor(training=None), request(), {})


def test_the_default_backend_follows_the_stack():
    assert type(get_backend(aws_descriptor())).__name__ == "KubernetesJobs"
    assert isinstance(
        get_backend(
            aws_descriptor(gpu_pools=False), boto_session=boto3.Session(region_name=REGION)
        ),
        SageMakerJobs,
    )
    with pytest.raises(
        JobError, match="unknown job backend 'batch'; valid: kubernetes, local, sagemaker"
    ):
        get_backend(aws_descriptor(), "batch")


def _describe(name: str, status: str, **extra) -> dict:
    doc = {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}",
        "TrainingJobStatus": status,
        "SecondaryStatus": "Training",
        "AlgorithmSpecification": {
            "TrainingImage": f"{TRAIN_REPO}:v1",
            "TrainingInputMode": "File",
        },
        "RoleArn": ROLE,
        "ResourceConfig": {
            "InstanceType": "ml.m5.xlarge",
            "InstanceCount": 1,
            "VolumeSizeInGB": 50,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": dt.datetime(2026, 11, 30, tzinfo=dt.UTC),
        "ModelArtifacts": {"S3ModelArtifacts": "s3://b/jobs/x/output/model.tar.gz"},
    }
    doc.update(extra)
    return doc


def test_mlinfra_train_on_sagemaker_registers_and_gates(sm_env, tmp_path, monkeypatch):
    """The CLI with a cloud stack's descriptor: the job runs (moto completes it at once), the
    artifact is registered in the model group, and the gate decides (no auc: pending)."""
    from typer.testing import CliRunner

    from workloads.cli import app

    session, _, _ = sm_env
    push_image(session, "v1")
    session.client("sagemaker").create_model_package_group(ModelPackageGroupName="vision-dev-churn")
    platform = tmp_path / "platform.json"
    platform.write_text(aws_descriptor(cluster=False).to_json())
    common = ["--stack", "vision-dev", "--platform", str(platform)]
    result = CliRunner().invoke(
        app,
        [
            "train",
            *common,
            *("--channel", f"train={aws_descriptor().buckets.raw}/churn/train"),
            *("--hp", "target=churned", "--image", "v1", "--model-group", "churn", "--spot"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "started on sagemaker" in result.output
    assert "registered churn v1: PendingManualApproval (metric 'auc' missing" in result.output
    packages = session.client("sagemaker").list_model_packages(
        ModelPackageGroupName="vision-dev-churn"
    )["ModelPackageSummaryList"]
    assert len(packages) == 1
    listed = CliRunner().invoke(app, ["jobs", "list", *common])
    assert listed.exit_code == 0 and "Completed" in listed.output
    wrong = CliRunner().invoke(
        app, ["jobs", "list", "--stack", "nlp-dev", "--platform", str(platform)]
    )
    assert wrong.exit_code == 1
    assert "the platform descriptor is stack 'vision-dev', not 'nlp-dev'" in wrong.output
