"""SageMaker's tuner for a search space: the SDK v3 `HyperparameterTuner` built from the
plan, and the CreateHyperParameterTuningJob request it sends (moto runs it; botocore checks
the request against the API model first), what SageMaker requires of it, the spaces it
refuses, and finished SageMaker trials copied into the Optuna study (Stubber: moto lacks
ListTrainingJobsForHyperParameterTuningJob)."""

from __future__ import annotations

import copy
import dataclasses
import re
from datetime import UTC, datetime

import boto3
import optuna
import pytest
from botocore.stub import Stubber

from tests.sagemaker_support import sdk_under_moto, trial_settings
from workloads.jobs.sagemaker import model_trainer
from workloads.jobs.sagemaker_request import TrainingJobPlan
from workloads.training.metric_line import format_metric, sagemaker_metric_definitions
from workloads.tuning import sagemaker
from workloads.tuning.sagemaker_request import (
    UnsupportedSpace,
    UnsupportedTrials,
    check_job_name,
    static_hyperparameters,
    trial_plan,
    tuning_config,
    tuning_job_name,
)
from workloads.tuning.space import parse_space

SPACE = {
    "objective": {"metric": "auc", "direction": "maximize"},
    "budget": {"trials": 20, "parallel": 3, "timeout": 7200},
    "seed": 7,
    "fixed": {"target": "churned", "epochs": 30, "hidden_sizes": [64, 32]},
    "parameters": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "batch_size": {"type": "int", "low": 32, "high": 256},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "problem": {"type": "categorical", "choices": ["binary", "multiclass"]},
    },
}
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
# A training job's plan, as `jobs.sagemaker_request.plan_training_job` makes one.
PLAN = TrainingJobPlan(
    base_job_name="churn-tune",
    image="123456789012.dkr.ecr.us-east-1.amazonaws.com/demo-train:abc123",
    role_arn="arn:aws:iam::123456789012:role/demo-dev-training",
    instance_type="ml.m5.xlarge",
    instance_count=1,
    volume_size_gib=30,
    volume_kms_key_arn=KEY,
    spot=False,
    max_run_seconds=86_400,
    max_wait_seconds=None,
    checkpoint_s3_uri="s3://demo-dev-artifacts/checkpoints/churn-tune",
    output_s3_uri="s3://demo-dev-artifacts/tuning/",
    output_kms_key_arn=KEY,
    subnet_ids=[],
    security_group_ids=[],
    channels={
        "train": "s3://demo-dev-artifacts/datasets/churn/train/",
        "validation": "s3://demo-dev-artifacts/datasets/churn/validation/",
    },
    hyperparameters={},
    metric_definitions=[],
    tags={},
)


def space(**changes):
    doc = copy.deepcopy(SPACE)
    for key, value in changes.items():
        doc[key] = value
    return parse_space(doc, "tune.yaml")


@pytest.fixture
def sm_env(aws_env, monkeypatch, tmp_path):
    with sdk_under_moto(monkeypatch, tmp_path, "us-east-1") as record:
        yield record.session, record.calls, record.requests, record.telemetry


def test_the_sdk_tuner_sends_the_plan(sm_env):
    session, calls, requests, telemetry_sent = sm_env
    name = tuning_job_name("churn-churn-tune", "a1b2c3")
    s = space(pruning="median")
    arn = sagemaker.start(session, s, PLAN, name)
    assert arn.endswith(f"hyper-parameter-tuning-job/{name}")
    (request,) = requests
    assert request["HyperParameterTuningJobName"] == name  # explicit, not stamped
    config = request["HyperParameterTuningJobConfig"]
    assert config == tuning_config(s)  # the SDK sends the plan as it is
    assert config["Strategy"] == "Bayesian"
    assert config["TrainingJobEarlyStoppingType"] == "Auto"  # median pruning
    assert config["ResourceLimits"] == {
        "MaxParallelTrainingJobs": 3,  # the space's parallel
        "MaxNumberOfTrainingJobs": 20,
        "MaxRuntimeInSeconds": 7200,
    }
    assert config["RandomSeed"] == 7
    ranges = config["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"][0] == {
        "Name": "learning_rate",
        "MinValue": "0.0001",
        "MaxValue": "0.1",
        "ScalingType": "Logarithmic",
    }
    assert ranges["IntegerParameterRanges"] == [
        {"Name": "batch_size", "MinValue": "32", "MaxValue": "256", "ScalingType": "Linear"}
    ]
    assert ranges["CategoricalParameterRanges"] == [
        {"Name": "problem", "Values": ["binary", "multiclass"]}
    ]
    definition = request["TrainingJobDefinition"]
    # Static hyperparameters are strings the harness decodes (lists as JSON).
    assert definition["StaticHyperParameters"] == {
        "target": "churned",
        "epochs": "30",
        "hidden_sizes": "[64, 32]",
    }
    spec = definition["AlgorithmSpecification"]
    assert spec["TrainingImage"] == PLAN.image and spec["TrainingInputMode"] == "File"
    assert definition["RoleArn"] == PLAN.role_arn
    assert definition["OutputDataConfig"] == {
        "S3OutputPath": PLAN.output_s3_uri,
        "KmsKeyId": KEY,
        "CompressionType": "GZIP",  # the SDK's default: model.tar.gz, as the harness reads
    }
    assert definition["ResourceConfig"] == {
        "InstanceType": "ml.m5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
        "VolumeKmsKeyId": KEY,
    }
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 86_400}
    # the plan's checkpoint location would serve every trial: none (see trial_plan)
    assert "CheckpointConfig" not in definition and "EnableManagedSpotTraining" not in definition
    assert {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in definition["InputDataConfig"]
    } == PLAN.channels
    # The metric definitions are the metric line's: each regex finds the value SageMaker
    # graphs and tunes on, in the very line the harness prints, within the 500-char cap.
    metrics = spec["MetricDefinitions"]
    assert [m["Name"] for m in metrics] == ["auc", "validation_loss", "train_loss"]
    for m in metrics:
        assert len(m["Regex"]) <= 500
        line = "2026-11-30 10:00:00 " + format_metric(m["Name"], 0.8125, epoch=4)
        assert re.search(m["Regex"], line).group(1) == "0.8125"
    client = sagemaker.sagemaker_client(session)
    described = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert described["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"] == (
        metrics
    )
    # a rerun finds the job instead of failing on the name
    assert sagemaker.start(session, s, PLAN, name) == arn
    assert len(requests) == 1
    # No call we did not ask for: no IAM role validation, no STS, no telemetry.
    assert {c.split(":")[0] for c in calls} == {"sagemaker"}, calls
    assert telemetry_sent == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sampler": "random", "pruning": "off"}, {"Strategy": "Random"}),
        (
            {"pruning": "hyperband"},
            {
                "Strategy": "Hyperband",
                "TrainingJobEarlyStoppingType": "Off",
                "StrategyConfig": {
                    "HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 30}
                },
            },
        ),
        ({"seed": 0}, {"RandomSeed": 0}),  # the SDK alone drops a falsy seed
        (
            {
                "sampler": "grid",
                "parameters": {"batch_size": {"type": "int", "low": 32, "high": 64, "step": 32}},
            },
            {"Strategy": "Grid"},
        ),
    ],
)
def test_each_strategy_reaches_the_request(sm_env, changes, expected):
    session, _, requests, _ = sm_env
    s = space(**changes)
    sagemaker.start(session, s, PLAN, "churn-tune-x")
    (request,) = requests
    config = request["HyperParameterTuningJobConfig"]
    assert config == tuning_config(s)
    assert expected.items() <= config.items()
    if s.sampler == "grid":  # Grid counts its own jobs: the SDK must not send one
        assert "MaxNumberOfTrainingJobs" not in config["ResourceLimits"]


def test_a_space_sagemaker_cannot_express_sends_nothing(sm_env):
    _, calls, requests, _ = sm_env
    conditional = {
        "problem": {"type": "categorical", "choices": ["binary", "multiclass"]},
        "dropout": {"type": "float", "low": 0, "high": 0.5, "when": {"problem": "binary"}},
    }
    with pytest.raises(UnsupportedSpace, match="no conditional parameters"):
        sagemaker.start(sm_env[0], space(parameters=conditional), PLAN, "churn-tune-x")
    with pytest.raises(UnsupportedSpace, match="must match"):
        sagemaker.start(sm_env[0], space(), PLAN, "bad_name")
    assert calls == [] and requests == []


def test_strategies_and_hyperband():
    random = tuning_config(space(sampler="random", pruning="off"))
    assert random["Strategy"] == "Random"
    assert random["TrainingJobEarlyStoppingType"] == "Off"
    hyper = tuning_config(space(pruning="hyperband"))
    assert hyper["Strategy"] == "Hyperband"
    # SageMaker requires its early stopping Off with Hyperband (it stops jobs itself).
    assert hyper["TrainingJobEarlyStoppingType"] == "Off"
    assert hyper["StrategyConfig"] == {
        "HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 30}
    }
    grid = space(
        sampler="grid",
        parameters={
            "learning_rate": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.01},
            "batch_size": {"type": "int", "low": 32, "high": 64, "step": 32},
            "problem": {"type": "categorical", "choices": ["binary"]},
        },
    )
    config = tuning_config(grid)
    assert config["Strategy"] == "Grid"
    # Grid takes categorical ranges only and counts its jobs itself.
    assert set(config["ParameterRanges"]) == {"CategoricalParameterRanges"}
    assert config["ParameterRanges"]["CategoricalParameterRanges"][0]["Values"] == [
        "0.01",
        "0.02",
        "0.03",
    ]
    assert "MaxNumberOfTrainingJobs" not in config["ResourceLimits"]


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        (
            {
                "problem": {"type": "categorical", "choices": ["binary", "multiclass"]},
                "dropout": {"type": "float", "low": 0, "high": 0.5, "when": {"problem": "binary"}},
            },
            "parameters.dropout: SageMaker's tuner has no conditional parameters",
        ),
        (
            {"batch_size": {"type": "int", "low": 32, "high": 256, "step": 32}},
            "parameters.batch_size: SageMaker's ranges have no step",
        ),
        (
            {"problem": {"type": "categorical", "choices": ["binary", None]}},
            "null cannot be one",
        ),
    ],
)
def test_spaces_sagemaker_cannot_express_are_refused_with_the_reason(parameters, reason):
    with pytest.raises(UnsupportedSpace, match="cannot run on SageMaker") as err:
        tuning_config(space(parameters=parameters))
    assert reason in str(err.value)


def test_job_names_fit_sagemaker():
    assert tuning_job_name("churn_churn.tune", "x1") == "churn-churn-tune-x1"
    long = tuning_job_name("a" * 80, "20261130-1000")
    assert len(long) == 32 and long.endswith("-20261130-1000")
    with pytest.raises(UnsupportedSpace, match="must match"):
        check_job_name("bad_name")


def _summary(name: str, status: str, lr: str, problem: str, value: float | None = None) -> dict:
    out = {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
        "CreationTime": datetime(2026, 11, 30, tzinfo=UTC),
        "TrainingJobStatus": status,
        "TunedHyperParameters": {
            "learning_rate": lr,
            "batch_size": "64",
            "dropout": "0.1",
            "problem": f'"{problem}"',  # the SDK JSON-quotes string values
        },
    }
    if value is not None:
        out["FinalHyperParameterTuningJobObjectiveMetric"] = {"MetricName": "auc", "Value": value}
    return out


def test_finished_sagemaker_trials_join_the_study(tmp_path, aws_env):
    s = space()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
    )
    study = optuna.create_study(study_name="churn", storage=storage, direction="maximize")
    local = study.ask()
    s.suggest(local)
    study.tell(local, 0.7)  # a local trial: both backends compare in one study
    client = boto3.client("sagemaker", region_name="us-east-1")
    jobs = [
        _summary("t-001", "Completed", "0.01", "binary", 0.91),
        _summary("t-002", "Stopped", "0.0002", "binary", 0.55),
        _summary("t-003", "InProgress", "0.05", "multiclass"),
        _summary("t-004", "Failed", "0.09", "binary") | {"FailureReason": "AlgorithmError: oom"},
    ]
    expected = {"HyperParameterTuningJobName": "churn-tune"}
    with Stubber(client) as stub:
        stub.add_response(
            "list_training_jobs_for_hyper_parameter_tuning_job",
            {"TrainingJobSummaries": jobs},
            expected,
        )
        stub.add_response(
            "list_training_jobs_for_hyper_parameter_tuning_job",
            {
                "TrainingJobSummaries": [
                    *jobs[:2],
                    jobs[2]
                    | {
                        "TrainingJobStatus": "Completed",
                        "FinalHyperParameterTuningJobObjectiveMetric": {
                            "MetricName": "auc",
                            "Value": 0.93,
                        },
                    },
                    jobs[3],
                ]
            },  # fmt: skip
            expected,
        )
        assert sagemaker.import_trials(study, s, client, "churn-tune") == 3
        running = {t.user_attrs.get(sagemaker.JOB_ATTR): t for t in study.get_trials()}["t-003"]
        assert running.state.name == "RUNNING" and running.params["problem"] == "multiclass"
        assert sagemaker.import_trials(study, s, client, "churn-tune") == 1  # only the new one
    trials = {t.user_attrs.get(sagemaker.JOB_ATTR): t for t in study.get_trials()}
    assert trials["t-001"].state.name == "COMPLETE" and trials["t-001"].value == 0.91
    assert trials["t-001"].params == {
        "learning_rate": 0.01,
        "batch_size": 64,
        "dropout": 0.1,
        "problem": "binary",
    }
    assert trials["t-002"].state.name == "PRUNED"  # stopped early by SageMaker
    assert trials["t-004"].state.name == "FAIL"
    assert trials["t-004"].user_attrs["failure"] == "AlgorithmError: oom"
    assert study.best_trial.user_attrs[sagemaker.JOB_ATTR] == "t-003"
    assert len(study.trials) == 5


def test_network_settings_the_sdk_drops_reach_the_request(sm_env):
    """sagemaker-train 1.27 copies `Networking`'s VPC config into the tuning job's training
    job definition but not its network isolation or inter-container encryption."""
    session, _, requests, _ = sm_env
    plan = dataclasses.replace(
        PLAN,
        instance_count=2,  # inter-container encryption: instances that talk
        subnet_ids=["subnet-0a"],
        security_group_ids=["sg-0a"],
        network_isolation=True,
    )
    sagemaker.start(session, space(), plan, "churn-tune-net")
    (request,) = requests
    definition = request["TrainingJobDefinition"]
    assert definition["VpcConfig"] == {"Subnets": ["subnet-0a"], "SecurityGroupIds": ["sg-0a"]}
    assert definition["EnableNetworkIsolation"] is True
    assert definition["EnableInterContainerTrafficEncryption"] is True
    assert definition["ResourceConfig"]["InstanceCount"] == 2
    # ... as a training job of the same plan gets them, with its environment and tags
    plan = dataclasses.replace(
        plan,
        hyperparameters=static_hyperparameters(space()),
        environment={"MLINFRA_LOG_LEVEL": "debug"},
        tags={"mlinfra.io/stack": "demo-dev"},
        metric_definitions=sagemaker_metric_definitions(["auc", "train_loss", "validation_loss"]),
    )
    sagemaker.start(session, space(), plan, "churn-tune-env")
    sent: list[dict] = []
    session.events.register_last(
        "before-parameter-build.sagemaker.CreateTrainingJob",
        lambda params, **_: sent.append(copy.deepcopy(params)),
    )
    model_trainer(plan, session, sagemaker.sagemaker_client(session)).train(wait=False, logs=False)
    (training,) = sent
    assert trial_settings(requests[-1]) == trial_settings(training)
    assert training["Environment"] == {"MLINFRA_LOG_LEVEL": "debug"}


def test_trials_never_run_on_spot_nor_share_a_checkpoint_location(sm_env):
    """A tuning job has one CheckpointConfig for all its training jobs (no per-job path is
    documented): trials go without checkpoints, and a spot plan is refused unsent."""
    _, calls, requests, _ = sm_env
    spot = dataclasses.replace(PLAN, spot=True, max_wait_seconds=2 * 86_400)
    with pytest.raises(UnsupportedTrials, match="one checkpoint location") as err:
        sagemaker.start(sm_env[0], space(), spot, "churn-tune-spot")
    assert "mlinfra train --on sagemaker --spot" in str(err.value)
    assert calls == [] and requests == []
    trials = trial_plan(PLAN, space())
    assert trials.checkpoint_s3_uri is None and PLAN.checkpoint_s3_uri
    assert trials.hyperparameters == {
        "target": "churned",
        "epochs": "30",
        "hidden_sizes": "[64, 32]",
    }
    assert dataclasses.replace(trials, hyperparameters={}, checkpoint_s3_uri=None) == (
        dataclasses.replace(PLAN, checkpoint_s3_uri=None)
    )  # nothing else changes
