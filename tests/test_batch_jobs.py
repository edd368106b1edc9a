"""`mlinfra batch` on SageMaker: a Batch Transform job of an approved version (moto records
the Model and the job as requested), and one message for bad input, with nothing created."""

from __future__ import annotations

import boto3
import pandas as pd
import pytest
from moto import mock_aws

from tests.rollout_support import KEY, SERVE_REPO, aws_descriptor, push_image
from workloads.jobs.batch import BatchJobError, batch
from workloads.jobs.rollout import RolloutError
from workloads.platform import PlatformDescriptor
from workloads.registry.store import SageMakerModelRegistry, UnknownGroupError

TRAINING_ROLE = "arn:aws:iam::123456789012:role/team-dev-training"
STAMP = "20261130100000"
JOB = f"team-dev-churn-batch-v1-{STAMP}"


def descriptor(training: bool = True) -> PlatformDescriptor:
    base = aws_descriptor().model_dump()
    if training:
        base["training"] = {
            "role_arn": TRAINING_ROLE,
            "subnet_ids": ["subnet-a"],
            "security_group_ids": ["sg-jobs"],
            "kms_key_arn": KEY,
        }
    return PlatformDescriptor.model_validate(base)


@pytest.fixture
def aws(aws_env):
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        sagemaker = session.client("sagemaker")
        sagemaker.create_model_package_group(ModelPackageGroupName="team-dev-churn")
        registry = SageMakerModelRegistry(descriptor().registry.model_groups, client=sagemaker)
        image = f"{SERVE_REPO}:abc123"
        registry.approve("churn", registry.register("churn", "s3://a/1.tar.gz", {}, image).version)
        registry.register("churn", "s3://a/2.tar.gz", {}, image)
        push_image(session.client("ecr"), "team-dev-serve", "abc123")
        yield session, registry


def run(aws, *args, platform=None, **kwargs):
    session, registry = aws
    return batch(
        platform or descriptor(), "churn", *args, registry=registry, session=session,
        poll_s=0, stamp=lambda: STAMP, **kwargs,
    )  # fmt: skip


def test_a_transform_job_of_the_newest_approved_version(aws):
    result = run(aws, "s3://team-dev-raw/score/", "s3://team-dev-artifacts/scored/")
    assert (result.job, result.version) == (JOB, 1)
    sagemaker = aws[0].client("sagemaker")
    job = sagemaker.describe_transform_job(TransformJobName=JOB)
    assert job["ModelName"] == JOB
    assert job["TransformInput"]["DataSource"]["S3DataSource"] == {
        "S3DataType": "S3Prefix",
        "S3Uri": "s3://team-dev-raw/score/",
    }
    assert (job["TransformInput"]["ContentType"], job["TransformInput"]["SplitType"]) == (
        "text/csv",
        "Line",
    )
    assert job["TransformOutput"]["S3OutputPath"] == "s3://team-dev-artifacts/scored/"
    assert job["TransformOutput"]["KmsKeyId"] == KEY
    assert job["TransformResources"]["VolumeKmsKeyId"] == KEY
    # Left to the container's /execution-parameters:
    assert "MaxConcurrentTransforms" not in job and "BatchStrategy" not in job
    model = sagemaker.describe_model(ModelName=JOB)
    assert model["ExecutionRoleArn"] == TRAINING_ROLE
    assert model["VpcConfig"] == {"Subnets": ["subnet-a"], "SecurityGroupIds": ["sg-jobs"]}
    assert model["PrimaryContainer"]["ModelPackageName"] == aws[1].get("churn", 1).arn


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("s3://i/", "s3://o/", 2), {}, RolloutError, "churn v2 is PendingManualApproval"),
        (("s3://i/", "s3://o/", 1), {"image_tag": "gone"}, RolloutError, "serve:gone does not"),
        (("/tmp/in.csv", "s3://o/", 1), {}, BatchJobError, "INPUT_URI '/tmp/in.csv': a Batch"),
        (("s3://i/", "s3://o/", 1), {"on": "mars"}, BatchJobError, "batch runs on sagemaker"),
    ],
)
def test_bad_input_gets_one_message_and_creates_nothing(aws, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        run(aws, *args, **kwargs)
    sagemaker = aws[0].client("sagemaker")
    assert not sagemaker.list_transform_jobs()["TransformJobSummaries"]
    assert not sagemaker.list_models()["Models"]


def test_an_unknown_group_and_a_stack_without_a_job_role_are_refused(aws):
    session, registry = aws
    with pytest.raises(UnknownGroupError, match="model group 'nope' is not declared.*churn"):
        batch(descriptor(), "nope", "s3://i/", "s3://o/", registry=registry, session=session)
    with pytest.raises(BatchJobError, match="no training section"):
        run(aws, "s3://i/", "s3://o/", platform=descriptor(training=False))


def test_local_batch_scores_the_approved_versions_artifact(tmp_path):
    from tests.serve_support import make_frame, train_model
    from workloads.registry.store import LocalModelRegistry

    model_dir = train_model(tmp_path, make_frame(200), "label")
    local = aws_descriptor().model_dump()
    local |= {
        "backend": "local",
        "endpoints": {},
        "cluster": None,
        "local": {
            "root": str(tmp_path / "state"),
            "online_store": str(tmp_path / "online.db"),
            "registry": str(tmp_path / "registry"),
        },
    }
    platform = PlatformDescriptor.model_validate(local)
    registry = LocalModelRegistry(tmp_path / "registry", platform.registry.model_groups)
    version = registry.register("churn", model_dir.as_uri(), {"auc": 0.9})
    frame = make_frame(40, seed=5).drop(columns=["label"])
    frame.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(RolloutError, match="has no approved version"):
        batch(platform, "churn", str(tmp_path / "in.csv"), str(tmp_path / "out.parquet"))
    registry.approve("churn", version.version)
    result = batch(platform, "churn", str(tmp_path / "in.csv"), str(tmp_path / "out.parquet"))
    scored = pd.read_parquet(tmp_path / "out.parquet")
    assert len(scored) == 40 and "prediction" in scored.columns
    assert result.version == 1
