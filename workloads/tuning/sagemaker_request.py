"""The search space as SageMaker's tuner sees it (pure; no client, no SDK).

`tuning_config` is the plan, in the API's own shape (`HyperParameterTuningJobConfig`): the
SageMaker SDK's `HyperparameterTuner` is built from it (`tuning.sagemaker.build_tuner`) and
the tests check the request the SDK sends against it.

Strategy: `tpe` -> Bayesian, `random` -> Random, `grid` -> Grid; pruning `hyperband` ->
the Hyperband strategy (SageMaker's own early stopping must then be Off), `median` ->
TrainingJobEarlyStoppingType Auto, `off` -> Off. The metric definitions come from the
training contract's metric line (`metric_line.sagemaker_metric_definitions`), so SageMaker
reads the very lines the local driver reads. `MaxParallelTrainingJobs` is `parallel`.

A space SageMaker cannot express is refused with the reason (`UnsupportedSpace`):
conditional parameters, steps on int/float ranges outside a grid, null choices, and its
limits on ranges and values.

`trial_plan` is what each of the tuning job's training jobs runs with: the plan of a
training job (`jobs.sagemaker_request.TrainingJobPlan`, as `mlinfra train --on sagemaker`
makes it) with the space's fixed values as hyperparameters, without checkpoints, and never
on spot (`UnsupportedTrials`: the tuning job has one checkpoint location for all its
training jobs; the reasons and the documentation are at `SPOT_REFUSED`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from workloads.jobs.sagemaker_request import TrainingJobPlan
from workloads.training.metric_line import sagemaker_metric_definitions
from workloads.tuning.space import CategoricalParam, FloatParam, IntParam, SearchSpace

MAX_RANGES = 30  # ParameterRanges: all ranges together
MAX_VALUES = 30  # CategoricalParameterRange.Values
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}$")
MIN_RUNTIME_S, MAX_RUNTIME_S = 120, 15_768_000  # ResourceLimits.MaxRuntimeInSeconds
STRATEGY = {"tpe": "Bayesian", "random": "Random", "grid": "Grid"}
# Reported next to the objective: SageMaker keeps their time series for the console.
ALSO_REPORTED = ("validation_loss", "train_loss")


class UnsupportedSpace(ValueError):
    """A search space the SageMaker tuner cannot express; the message says why."""


class UnsupportedTrials(ValueError):
    """Training-job settings a tuning job's training jobs cannot share; the message says why."""


# Managed spot training needs checkpoints to be worth it, and a tuning job's trials cannot
# have checkpoints of their own. HyperParameterTrainingJobDefinition holds ONE
# CheckpointConfig for "the training jobs that the tuning job launches", and its S3Uri is a
# fixed path ("the S3 path where you want SageMaker to store checkpoints"); neither the API
# reference nor the checkpoint guide says SageMaker adds the training job's name to it:
#   https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_HyperParameterTrainingJobDefinition.html
#   https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CheckpointConfig.html
# The guide says what one shared path does: "Existing checkpoints in S3 are written to the
# SageMaker AI container at the start of the job" and "If a checkpoint is deleted in the
# SageMaker AI container, it will also be deleted in the S3 folder"
#   https://docs.aws.amazon.com/sagemaker/latest/dg/model-checkpoints.html
# The harness names checkpoints by step (`ckpt-<step>.pt`, the newest two kept): trials
# running side by side would overwrite each other's files, one trial's pruning would delete
# another's, every trial would start by downloading all of them, and a trial restarted
# after a spot interruption would find another trial's checkpoint (which the harness's
# fingerprint check refuses) instead of its own. So trials run on demand, without one.
SPOT_REFUSED = (
    "managed spot training for the trials of a SageMaker tuning job: the tuning job has one "
    "checkpoint location (CheckpointConfig.S3Uri) for all its training jobs, so an "
    "interrupted trial could not resume from its own checkpoints; tuning trials run on "
    "demand (spot is for `mlinfra train --on sagemaker --spot`)"
)


def static_hyperparameters(space: SearchSpace) -> dict[str, str]:
    """The space's fixed values, as the harness decodes them (`contract._decode`)."""
    return {k: _value(v) for k, v in space.fixed.items()}


def trial_plan(plan: TrainingJobPlan, space: SearchSpace) -> TrainingJobPlan:
    """What each training job of the tuning job runs with: the training job `plan` (role,
    image, instance, networking, keys, output, stopping condition, metrics, tags) with the
    space's fixed values as its hyperparameters and no checkpoint location (see above).
    Raises `UnsupportedTrials` for a spot plan."""
    if plan.spot:
        raise UnsupportedTrials(SPOT_REFUSED)
    return dataclasses.replace(
        plan, hyperparameters=static_hyperparameters(space), checkpoint_s3_uri=None
    )


def tuning_job_name(study: str, suffix: str = "") -> str:
    """A name SageMaker accepts (1-32 of [a-zA-Z0-9-], no leading or doubled hyphen
    problems), always explicit: the SDK's default is stamped to the minute."""
    base = re.sub(r"[^a-zA-Z0-9]+", "-", study).strip("-") or "tune"
    suffix = re.sub(r"[^a-zA-Z0-9]+", "-", suffix).strip("-")
    room = 32 - (len(suffix) + 1 if suffix else 0)
    name = base[:room].rstrip("-") + (f"-{suffix}" if suffix else "")
    if not JOB_NAME.match(name):
        raise UnsupportedSpace(f"cannot make a tuning job name from {study!r}")
    return name


def _value(value: Any) -> str:
    """How the harness gets a value back from SageMaker's strings (`contract._decode`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value)
    return repr(value)


def check_expressible(space: SearchSpace) -> None:
    problems = []
    grid = space.sampler == "grid"
    for name, p in space.parameters.items():
        at = f"parameters.{name}"
        if p.when:
            problems.append(f"{at}: SageMaker's tuner has no conditional parameters")
        if isinstance(p, CategoricalParam) and any(c is None for c in p.choices):
            problems.append(
                f"{at}: SageMaker passes hyperparameters as strings; null cannot be one"
            )
        if not grid and isinstance(p, FloatParam | IntParam) and (p.step or 1) != 1:
            problems.append(
                f"{at}: SageMaker's ranges have no step; use categorical choices or the grid"
            )
        values = p.values() if grid or isinstance(p, CategoricalParam) else []
        if values and len(values) > MAX_VALUES:
            problems.append(f"{at}: {len(values)} values; SageMaker takes at most {MAX_VALUES}")
    if len(space.parameters) > MAX_RANGES:
        problems.append(
            f"parameters: {len(space.parameters)}; SageMaker takes at most {MAX_RANGES}"
        )
    if problems:
        raise UnsupportedSpace(
            "this search space cannot run on SageMaker:\n  " + "\n  ".join(problems)
        )


def parameter_ranges(space: SearchSpace) -> dict[str, list[dict[str, Any]]]:
    ranges: dict[str, list[dict[str, Any]]] = {
        "IntegerParameterRanges": [],
        "ContinuousParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    for name, p in space.parameters.items():
        if space.sampler == "grid" or isinstance(p, CategoricalParam):
            # Grid search takes categorical ranges only; the grid's points are explicit.
            values = [_value(v) for v in p.values()]  # type: ignore[union-attr]
            ranges["CategoricalParameterRanges"].append({"Name": name, "Values": values})
        else:
            kind = (
                "IntegerParameterRanges" if isinstance(p, IntParam) else "ContinuousParameterRanges"
            )
            ranges[kind].append(
                {
                    "Name": name,
                    "MinValue": _value(p.low),
                    "MaxValue": _value(p.high),
                    "ScalingType": "Logarithmic" if p.log else "Linear",
                }
            )
    return {k: v for k, v in ranges.items() if v}


def tuning_config(space: SearchSpace) -> dict[str, Any]:
    """`HyperParameterTuningJobConfig`."""
    check_expressible(space)
    objective = space.objective
    hyperband = space.pruning.type == "hyperband"
    limits: dict[str, Any] = {"MaxParallelTrainingJobs": space.budget.parallel}
    if space.sampler != "grid":  # Grid runs every point: SageMaker counts them itself
        limits["MaxNumberOfTrainingJobs"] = space.budget.trials
    if space.budget.timeout:
        limits["MaxRuntimeInSeconds"] = int(
            min(MAX_RUNTIME_S, max(MIN_RUNTIME_S, space.budget.timeout))
        )
    config: dict[str, Any] = {
        "Strategy": "Hyperband" if hyperband else STRATEGY[space.sampler],
        "HyperParameterTuningJobObjective": {
            "Type": "Maximize" if objective.direction == "maximize" else "Minimize",
            "MetricName": objective.metric,
        },
        "ResourceLimits": limits,
        "ParameterRanges": parameter_ranges(space),
        # Hyperband stops jobs itself; SageMaker requires early stopping Off with it.
        "TrainingJobEarlyStoppingType": "Auto" if space.pruning.type == "median" else "Off",
    }
    if hyperband:
        if space.sampler == "grid":
            raise UnsupportedSpace(
                "sampler grid with pruning hyperband: SageMaker runs one strategy"
            )
        config["StrategyConfig"] = {
            "HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": space.epochs()}
        }
    if space.seed is not None:
        config["RandomSeed"] = space.seed
    return config


def check_job_name(job_name: str) -> None:
    if not JOB_NAME.match(job_name):
        raise UnsupportedSpace(f"tuning job name {job_name!r} must match {JOB_NAME.pattern}")


def metric_definitions(
    space: SearchSpace, extra: tuple[dict[str, str], ...] = ()
) -> list[dict[str, str]]:
    """The objective and the losses, read from the training contract's metric line, then
    `extra` definitions of other names."""
    names = list(dict.fromkeys([space.objective.metric, *ALSO_REPORTED]))
    found = sagemaker_metric_definitions(names)
    return found + [d for d in extra if d["Name"] not in names]
