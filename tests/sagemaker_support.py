"""The SageMaker SDK under moto, with its network switches set, as the tuning tests use it."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from moto import mock_aws


@dataclass
class SdkRecord:
    session: Any
    calls: list[str] = field(default_factory=list)  # "service:Operation", every AWS call
    requests: list[dict] = field(default_factory=list)  # CreateHyperParameterTuningJob, as sent
    training_requests: list[dict] = field(default_factory=list)  # CreateTrainingJob, as sent
    telemetry: list = field(default_factory=list)


@contextlib.contextmanager
def sdk_under_moto(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, region: str
) -> Iterator[SdkRecord]:
    """The SDK's documented switches (no role validation, telemetry opted out by a config
    file), a record of every AWS call and of the CreateHyperParameterTuningJob and
    CreateTrainingJob requests, and moto."""
    pytest.importorskip("sagemaker.train.tuner", reason="the `sagemaker` extra is not installed")
    from workloads.jobs.sagemaker import SDK_CONFIG

    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(tmp_path / "sm-config.yaml"))
    (tmp_path / "sm-config.yaml").write_text(SDK_CONFIG)
    import sagemaker.core.telemetry.telemetry_logging as telemetry

    with mock_aws():
        record = SdkRecord(boto3.Session(region_name=region))
        monkeypatch.setattr(
            telemetry, "_send_telemetry_request", lambda *a, **k: record.telemetry.append(a)
        )
        record.session.events.register(
            "before-call.*.*",
            lambda model, **_: record.calls.append(
                f"{model.service_model.service_name}:{model.name}"
            ),
        )
        record.session.events.register_last(  # the request as sent: after every other hook
            "before-parameter-build.sagemaker.CreateHyperParameterTuningJob",
            lambda params, **_: record.requests.append(copy.deepcopy(params)),
        )
        record.session.events.register_last(
            "before-parameter-build.sagemaker.CreateTrainingJob",
            lambda params, **_: record.training_requests.append(copy.deepcopy(params)),
        )
        yield record
    from sagemaker.core.utils.utils import SageMakerClient

    SageMakerClient.reset()  # the SDK caches clients per session


def trial_settings(request: dict) -> dict:
    """What a training job runs with, from a CreateTrainingJob request or a
    CreateHyperParameterTuningJob request's TrainingJobDefinition: every field the two
    shapes share (read from the API model, so a field added to both is compared too) but
    the checkpoint location, which trials go without on purpose
    (`tuning.sagemaker_request.trial_plan`)."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    both = set(model.operation_model("CreateTrainingJob").input_shape.members) & set(
        model.shape_for("HyperParameterTrainingJobDefinition").members
    )
    both_spec = set(model.shape_for("AlgorithmSpecification").members) & set(
        model.shape_for("HyperParameterAlgorithmSpecification").members
    )
    tuning = "TrainingJobDefinition" in request
    job = request["TrainingJobDefinition"] if tuning else request
    spec = job["AlgorithmSpecification"]
    out = {k: job.get(k) for k in both - {"AlgorithmSpecification", "CheckpointConfig"}}
    out |= {f"AlgorithmSpecification.{k}": spec.get(k) for k in both_spec}
    # The tuner lists the objective's definition first; the definitions are the same.
    out["AlgorithmSpecification.MetricDefinitions"] = sorted(
        spec.get("MetricDefinitions", []), key=lambda d: d["Name"]
    )
    # The fixed hyperparameters (a trial adds its tuned ones) and the tags (on the tuning
    # job, which SageMaker copies to its training jobs).
    out["HyperParameters"] = job.get("StaticHyperParameters" if tuning else "HyperParameters")
    out["Tags"] = sorted(request.get("Tags", []), key=lambda t: t["Key"])
    return out
