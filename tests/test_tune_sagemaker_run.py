"""`mlinfra tune` on a stack that trains on SageMaker: the tuning job created through the
SDK (moto runs CreateHyperParameterTuningJob; the request is read as sent), then followed
through a client a Stubber scripts (moto's tuning job is Completed at once, with a fixed
fake best job, and moto lacks ListTrainingJobsForHyperParameterTuningJob and
StopHyperParameterTuningJob): trials copied into the study as they finish, a failed job,
a rerun that reattaches, Ctrl-C, and SageMaker's best job registered and gated."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

pytest.importorskip("optuna", reason="the `tune` extra is not installed")

import boto3  # noqa: E402
import yaml  # noqa: E402
from botocore.stub import Stubber  # noqa: E402

from tests.jobs_support import KEY, REGION, ROLE, TRAIN_REPO, aws_descriptor, push_image  # noqa: E402
from tests.sagemaker_support import sdk_under_moto, trial_settings  # noqa: E402
from workloads.jobs.base import JobRequest  # noqa: E402
from workloads.jobs.sagemaker import SageMakerJobs  # noqa: E402
from workloads.tuning.run import tune_sagemaker, tune_stack  # noqa: E402
from workloads.tuning.sagemaker import JOB_ATTR  # noqa: E402
from workloads.tuning.sagemaker_request import static_hyperparameters  # noqa: E402
from workloads.tuning.sagemaker_search import job_name  # noqa: E402
from workloads.tuning.space import load_space  # noqa: E402
from workloads.tuning.study import TuningError  # noqa: E402

DESC = aws_descriptor(cluster=False)  # no GPU pool: the stack trains on SageMaker
RAW = DESC.buckets.raw
ARTIFACTS = DESC.buckets.artifacts
CHANNELS = {"train": f"{RAW}/churn/train/", "validation": f"{RAW}/churn/validation/"}
SPACE = {
    "objective": {"metric": "auc", "direction": "maximize"},
    "budget": {"trials": 4, "parallel": 2},
    "sampler": "random",
    "pruning": "off",
    "fixed": {"target": "churned", "epochs": 3},
    "parameters": {"learning_rate": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
}


@pytest.fixture
def aws(aws_env, monkeypatch, tmp_path):
    """moto with the SDK switched off the network, the stack's image pushed and its model
    group made; the descriptor as `--platform` reads it."""
    with sdk_under_moto(monkeypatch, tmp_path, REGION) as record:
        push_image(record.session, "v3")
        record.session.client("sagemaker").create_model_package_group(
            ModelPackageGroupName="vision-dev-churn"
        )
        (tmp_path / "platform.json").write_text(DESC.to_json())
        yield record


def space_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(SPACE | changes, sort_keys=False))
    return path


class Script:
    """A SageMaker client whose tuning calls a Stubber answers, in order."""

    def __init__(self, job: str):
        self.job = job
        self.client = boto3.client("sagemaker", region_name=REGION)
        self.stub = Stubber(self.client)
        self.arn = f"arn:aws:sagemaker:{REGION}:123456789012:hyper-parameter-tuning-job/{job}"

    def described(self, status: str, best: str | None = None, failure: str | None = None):
        out = {
            "HyperParameterTuningJobName": self.job,
            "HyperParameterTuningJobArn": self.arn,
            "HyperParameterTuningJobConfig": {
                "Strategy": "Random",
                "ResourceLimits": {"MaxParallelTrainingJobs": 2},
            },
            "HyperParameterTuningJobStatus": status,
            "CreationTime": datetime(2026, 11, 30, tzinfo=UTC),
            "TrainingJobStatusCounters": {},
            "ObjectiveStatusCounters": {},
        }
        if best:
            out["BestTrainingJob"] = self.summary(best, "Completed", "0.01", 0.9)
        if failure:
            out["FailureReason"] = failure
        self.stub.add_response(
            "describe_hyper_parameter_tuning_job", out, {"HyperParameterTuningJobName": self.job}
        )

    def summary(self, name: str, status: str, lr: str, auc: float | None = None) -> dict:
        out = {
            "TrainingJobName": name,
            "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}",
            "CreationTime": datetime(2026, 11, 30, tzinfo=UTC),
            "TrainingJobStatus": status,
            "TunedHyperParameters": {"learning_rate": lr},
        }
        if auc is not None:
            out["FinalHyperParameterTuningJobObjectiveMetric"] = {"MetricName": "auc", "Value": auc}
        return out

    def listed(self, *summaries: dict) -> None:
        self.stub.add_response(
            "list_training_jobs_for_hyper_parameter_tuning_job",
            {"TrainingJobSummaries": list(summaries)},
            {"HyperParameterTuningJobName": self.job},
        )

    def training_job(self, name: str, metrics: dict[str, float]) -> str:
        uri = f"{ARTIFACTS}/jobs/{name}/output/model.tar.gz"
        self.stub.add_response(
            "describe_training_job",
            {
                "TrainingJobName": name,
                "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}",
                "ModelArtifacts": {"S3ModelArtifacts": uri},
                "TrainingJobStatus": "Completed",
                "SecondaryStatus": "Completed",
                "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
                "CreationTime": datetime(2026, 11, 30, tzinfo=UTC),
                "AlgorithmSpecification": {
                    "TrainingInputMode": "File",
                    "MetricDefinitions": [
                        {"Name": n, "Regex": f"{n}=(.*)"} for n in (*metrics, "validation_loss")
                    ],
                },
                "FinalMetricDataList": [{"MetricName": k, "Value": v} for k, v in metrics.items()]
                + [{"MetricName": "train:progress", "Value": 100.0}],  # SageMaker's own
            },
            {"TrainingJobName": name},
        )
        return uri


def run(aws, tmp_path, script: Script, **kw):
    sleeps: list[float] = []
    kw.setdefault("sleep", sleeps.append)
    with script.stub:
        outcome = tune_sagemaker(
            kw.pop("space", None) or space_file(tmp_path),
            train=kw.pop("train", CHANNELS["train"]),
            validation=CHANNELS["validation"],
            stack="vision-dev",
            image=kw.pop("image", "v3"),
            platform=tmp_path / "platform.json",
            state=tmp_path / "state",
            boto_session=aws.session,
            client=script.client,
            **kw,
        )
        script.stub.assert_no_pending_responses()
    return outcome, sleeps


def the_job(tmp_path: Path) -> str:
    return job_name("vision-dev", "churn-tune", load_space(space_file(tmp_path)))


def one_completed_job(tmp_path: Path) -> Script:
    """A tuning job that ends at the first poll with one completed training job."""
    job = the_job(tmp_path)
    script = Script(job)
    script.described("Completed", best=f"{job}-001-aaaa")
    script.listed(script.summary(f"{job}-001-aaaa", "Completed", "0.01", 0.9))
    script.training_job(f"{job}-001-aaaa", {"auc": 0.9})
    return script


def test_the_request_carries_what_mlinfra_train_gives_a_sagemaker_job(aws, tmp_path):
    job = the_job(tmp_path)
    run(aws, tmp_path, one_completed_job(tmp_path))
    (request,) = aws.requests
    assert request["HyperParameterTuningJobName"] == job
    definition = request["TrainingJobDefinition"]
    # The training job's settings, from the descriptor, as `mlinfra train` sets them.
    assert definition["RoleArn"] == ROLE
    assert definition["AlgorithmSpecification"]["TrainingImage"] == f"{TRAIN_REPO}:v3"
    assert definition["VpcConfig"] == {
        "Subnets": ["subnet-0a", "subnet-0b"],
        "SecurityGroupIds": ["sg-0training"],
    }
    assert definition["ResourceConfig"] == {
        "InstanceType": "ml.m5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 50,
        "VolumeKmsKeyId": KEY,
    }
    assert definition["OutputDataConfig"] == {
        "S3OutputPath": f"{ARTIFACTS}/jobs",
        "KmsKeyId": KEY,
        "CompressionType": "GZIP",
    }
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 86_400}
    assert {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in definition["InputDataConfig"]
    } == CHANNELS
    # one instance per trial: no traffic between instances to encrypt, no isolation asked
    assert "EnableInterContainerTrafficEncryption" not in definition
    assert "EnableNetworkIsolation" not in definition
    # the objective first, then the job API's tracked metrics and the gate's (auc)
    names = [m["Name"] for m in definition["AlgorithmSpecification"]["MetricDefinitions"]]
    assert names[:3] == ["auc", "validation_loss", "train_loss"]
    assert {"accuracy", "log_loss", "r2"} <= set(names) and len(names) == len(set(names))
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert tags["mlinfra.io/stack"] == "vision-dev" and tags["mlinfra.io/model-group"] == "churn"
    # No call but SageMaker's and the ECR image check (and S3/registry after the search).
    assert "iam:SimulatePrincipalPolicy" not in aws.calls and "sts:GetCallerIdentity" not in (
        aws.calls
    )
    assert aws.telemetry == []


def test_a_trial_runs_with_what_a_training_job_of_the_same_plan_gets(aws, tmp_path):
    """Every field that CreateTrainingJob and the tuning job's TrainingJobDefinition both
    have is the same for the trials as for the job `mlinfra train --on sagemaker` submits
    with the same request: a setting that reaches one and not the other fails this. The
    checkpoint location is the one difference, on purpose."""
    job = the_job(tmp_path)
    run(aws, tmp_path, one_completed_job(tmp_path))
    (tuning,) = aws.requests
    request = JobRequest(
        name=job,
        channels=CHANNELS,
        hyperparameters=static_hyperparameters(load_space(space_file(tmp_path))),
        image_tag="v3",
        model_group="churn",
    )
    SageMakerJobs(DESC, boto_session=aws.session).submit(request)
    (training,) = aws.training_requests
    assert trial_settings(tuning) == trial_settings(training)
    assert training["CheckpointConfig"]["S3Uri"] == f"{ARTIFACTS}/checkpoints/{job}"
    assert "CheckpointConfig" not in tuning["TrainingJobDefinition"]  # one for all trials


def test_polling_copies_trials_as_they_finish_and_registers_sagemakers_best(aws, tmp_path):
    job = the_job(tmp_path)
    a, b, c = (f"{job}-00{i}-abcd" for i in (1, 2, 3))
    script = Script(job)
    script.described("InProgress")
    script.listed(
        script.summary(a, "Completed", "0.05", 0.82), script.summary(b, "InProgress", "0.01")
    )
    script.described("InProgress")
    script.listed(
        script.summary(a, "Completed", "0.05", 0.82), script.summary(b, "Completed", "0.01", 0.9)
    )
    script.described("Completed", best=b)
    script.listed(
        script.summary(a, "Completed", "0.05", 0.82),
        script.summary(b, "Completed", "0.01", 0.9),
        script.summary(c, "Stopped", "0.002"),
    )  # fmt: skip
    uri = script.training_job(b, {"auc": 0.9, "accuracy": 0.87})
    updates, notes = [], []
    outcome, sleeps = run(
        aws, tmp_path, script, deploy=True, on_update=updates.append, on_note=notes.append
    )
    assert sleeps == [30.0, 30.0]  # polled until Completed
    # the live table shows a running training job as a running trial, then its result
    assert [(u.number, u.state) for u in updates] == [
        (0, "COMPLETE"),
        (1, "RUNNING"),
        (1, "COMPLETE"),
        (2, "PRUNED"),
    ]
    assert updates[1].note == b and updates[1].params == {"learning_rate": 0.01}
    assert notes[0].startswith(f"SageMaker tuning job {job} (arn:aws:sagemaker:")
    result = outcome.result
    assert result.best.number == 1 and result.best.value == pytest.approx(0.9)
    assert result.best_model_uri == uri
    # SageMaker's own metrics are left out; the gate's metric is there
    assert result.best_metrics == {"auc": 0.9, "accuracy": 0.87}
    sm = aws.session.client("sagemaker")
    (package,) = sm.list_model_packages(ModelPackageGroupName="vision-dev-churn")[
        "ModelPackageSummaryList"
    ]
    described = sm.describe_model_package(ModelPackageName=package["ModelPackageArn"])
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == uri
    assert container["Image"].endswith("vision-dev-serve:v3")
    assert outcome.version == 1 and outcome.status == "Approved"  # auc 0.9 >= 0.8
    assert "tuned: " in described["ModelPackageDescription"]
    assert outcome.report.is_file()
    assert outcome.messages[-1] == (
        "not deployed: no endpoint of stack 'vision-dev' serves churn unpinned"
    )


def test_the_study_and_sagemaker_agree_on_the_best_when_minimizing(aws, tmp_path):
    doc = space_file(tmp_path, objective={"metric": "validation_loss", "direction": "minimize"})
    job = job_name("vision-dev", "churn-tune", load_space(doc))
    script = Script(job)
    low, high = f"{job}-001-abcd", f"{job}-002-abcd"
    script.described("Completed", best=low)
    script.listed(
        script.summary(low, "Completed", "0.01", 0.2) | _objective("validation_loss", 0.2),
        script.summary(high, "Completed", "0.05", 0.7) | _objective("validation_loss", 0.7),
    )
    script.training_job(low, {"validation_loss": 0.2, "auc": 0.85})
    notes: list[str] = []
    outcome, _ = run(aws, tmp_path, script, space=doc, on_note=notes.append)
    assert outcome.result.best.number == 0 and outcome.result.best.value == pytest.approx(0.2)
    assert not any("the study's best is" in n for n in notes)  # no disagreement to report


def _objective(name: str, value: float) -> dict:
    return {"FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": name, "Value": value}}


def test_a_failed_tuning_job_is_an_error_with_sagemakers_reason_and_keeps_the_trials(aws, tmp_path):
    job = the_job(tmp_path)
    script = Script(job)
    script.described("Failed", failure="ClientError: the role cannot read s3://vision-dev-raw")
    script.listed(script.summary(f"{job}-001-abcd", "Completed", "0.05", 0.82))
    with pytest.raises(TuningError) as err:
        run(aws, tmp_path, script)
    assert str(err.value) == (
        f"SageMaker tuning job {job} failed: ClientError: the role cannot read "
        "s3://vision-dev-raw. The 1 finished trials are kept in study 'churn-tune'"
    )
    import optuna

    from workloads.tuning.study import open_study

    study = open_study(load_space(space_file(tmp_path)), _folder(tmp_path), "churn-tune")
    assert [t.user_attrs[JOB_ATTR] for t in study.get_trials()] == [f"{job}-001-abcd"]
    assert study.get_trials()[0].state == optuna.trial.TrialState.COMPLETE
    assert (
        aws.session.client("sagemaker").list_model_packages(
            ModelPackageGroupName="vision-dev-churn"
        )["ModelPackageSummaryList"]
        == []
    )


def _folder(tmp_path: Path) -> Path:
    return tmp_path / "state" / "vision-dev" / "tuning" / "churn-tune"


def test_a_rerun_reattaches_to_the_same_job_and_registers_once(aws, tmp_path):
    job = the_job(tmp_path)
    best = f"{job}-001-abcd"
    versions = []
    for _ in range(2):
        script = Script(job)
        script.described("Completed", best=best)
        script.listed(script.summary(best, "Completed", "0.05", 0.85))
        script.training_job(best, {"auc": 0.85})
        outcome, _ = run(aws, tmp_path, script)
        versions.append(outcome.version)
        assert len(outcome.result.trials) == 1  # copied once
    assert len(aws.requests) == 1  # one tuning job: the rerun found it
    assert versions == [1, 1]  # the rerun found its version


def test_ctrl_c_stops_the_tuning_job(aws, tmp_path):
    job = the_job(tmp_path)
    script = Script(job)
    script.described("InProgress")
    script.listed(script.summary(f"{job}-001-abcd", "Completed", "0.05", 0.85))
    script.stub.add_response(
        "stop_hyper_parameter_tuning_job", {}, {"HyperParameterTuningJobName": job}
    )

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(TuningError) as err:
        run(aws, tmp_path, script, sleep=interrupt)
    assert str(err.value).startswith(
        f"interrupted: SageMaker tuning job {job} was stopped (its running training jobs "
        "stop with it); the 1 finished trials are in study 'churn-tune'"
    )


def test_channels_outside_the_team_buckets_are_refused_before_anything(aws, tmp_path):
    script = Script(the_job(tmp_path))
    with pytest.raises(TuningError, match="outside the team's buckets") as err:
        run(aws, tmp_path, script, train="data/train.csv")
    assert str(err.value).startswith("the tuner's training jobs would be refused: channel train")
    assert aws.requests == [] and not (tmp_path / "state").exists()


def test_an_image_tag_not_pushed_is_refused(aws, tmp_path):
    script = Script(the_job(tmp_path))
    with pytest.raises(TuningError, match="image tag 'v9' does not exist"):
        run(aws, tmp_path, script, image="v9")
    assert aws.requests == []


def test_mlinfra_tune_sends_a_sagemaker_stack_to_sagemakers_tuner(aws, tmp_path):
    common = dict(
        train=CHANNELS["train"],
        stack="vision-dev",
        platform=tmp_path / "platform.json",
        state=tmp_path / "state",
    )
    with pytest.raises(TuningError, match="--pool gpu: a Kubernetes node pool"):
        tune_stack(space_file(tmp_path), pool="gpu", image="v3", **common)
    # the SageMaker driver answers: the image tag is required, as for `mlinfra train`
    with pytest.raises(TuningError, match="--image TAG is required on SageMaker"):
        tune_stack(space_file(tmp_path), **common)
    conditional = {
        "problem": {"type": "categorical", "choices": ["binary", "multiclass"]},
        "dropout": {"type": "float", "low": 0, "high": 0.5, "when": {"problem": "binary"}},
    }
    with pytest.raises(TuningError, match="no conditional parameters"):
        tune_stack(space_file(tmp_path, parameters=conditional), image="v3", **common)
    assert aws.requests == []


def test_the_instance_type_reaches_every_trial(aws, tmp_path):
    run(aws, tmp_path, one_completed_job(tmp_path), instance_type="ml.g5.2xlarge")
    (request,) = aws.requests
    resources = request["TrainingJobDefinition"]["ResourceConfig"]
    assert resources["InstanceType"] == "ml.g5.2xlarge" and resources["InstanceCount"] == 1


def test_on_a_tie_sagemakers_best_job_wins_and_the_run_says_so(aws, tmp_path):
    job = the_job(tmp_path)
    first, second = f"{job}-001-abcd", f"{job}-002-abcd"
    script = Script(job)
    script.described("Completed", best=second)  # Optuna keeps the first of a tie
    script.listed(
        script.summary(first, "Completed", "0.05", 0.9),
        script.summary(second, "Completed", "0.01", 0.9),
    )
    uri = script.training_job(second, {"auc": 0.9})
    notes: list[str] = []
    outcome, _ = run(aws, tmp_path, script, on_note=notes.append)
    assert outcome.result.best.number == 1 and outcome.result.best_model_uri == uri
    assert notes[-1] == (
        f"SageMaker's best training job {second} (trial 1) is registered; the study's best "
        "is trial 0"
    )
