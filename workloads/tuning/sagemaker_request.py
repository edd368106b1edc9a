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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class TrainingSetup:
    """Where and as whom the tuner's training jobs run (from the platform descriptor and
    the jobs' settings)."""

    image: str
    role_arn: str
    train_uri: str
    output_uri: str
    validation_uri: str | None = None
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    volume_gb: int = 30
    max_runtime_s: int = 86_400  # per training job
    kms_key: str | None = None  # the volumes' and the output's
    # VpcConfig: the trials run in these private subnets, behind these security groups.
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    network_isolation: bool = False
    inter_container_encryption: bool = False
    # Reported besides the objective and the losses (the job API's tracked metrics and the
    # gate's), as SageMaker metric definitions.
    metric_definitions: tuple[dict[str, str], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()  # on the tuning job; SageMaker copies them to its jobs


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
