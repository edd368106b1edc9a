"""SageMaker's tuner for a search space, and its trials copied into the Optuna study.

`start` submits the request `sagemaker_request.tuning_request` builds; `import_trials`
copies each finished training job of the tuning job into the study the local driver uses
(`study.add_trial`), once, so every backend's results compare in one place.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from workloads.tuning.sagemaker_request import TrainingSetup, _value, tuning_request
from workloads.tuning.space import CategoricalParam, IntParam, SearchSpace

JOB_ATTR = "sagemaker_training_job"
# TrainingJobStatus -> the trial's state (Stopped: stopped early by the tuner, i.e. pruned).
STATES = {
    "Completed": TrialState.COMPLETE,
    "Stopped": TrialState.PRUNED,
    "Failed": TrialState.FAIL,
}


def start(client: Any, space: SearchSpace, setup: TrainingSetup, job_name: str) -> str:
    """Create the tuning job; its ARN. An existing job of that name is reused (a rerun)."""
    try:
        found = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)
        return found["HyperParameterTuningJobArn"]
    except client.exceptions.ResourceNotFound:
        pass
    request = tuning_request(space, setup, job_name)
    return client.create_hyper_parameter_tuning_job(**request)["HyperParameterTuningJobArn"]


def _decode(space: SearchSpace, name: str, text: str) -> Any:
    p = space.parameters[name]
    if isinstance(p, CategoricalParam) or space.sampler == "grid":
        for choice in p.values():  # type: ignore[union-attr]
            if _value(choice) == text.strip('"'):
                return choice
        raise ValueError(f"{name}={text!r} is not a value of the space")
    return int(float(text)) if isinstance(p, IntParam) else float(text)


def import_trials(study: optuna.Study, space: SearchSpace, client: Any, job_name: str) -> int:
    """Add the tuning job's finished training jobs to `study`; returns how many were new."""
    known = {t.user_attrs.get(JOB_ATTR) for t in study.get_trials(deepcopy=False)}
    dists = space.distributions()
    added = 0
    paginator = client.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job")
    for page in paginator.paginate(HyperParameterTuningJobName=job_name):
        for job in page["TrainingJobSummaries"]:
            name, state = job["TrainingJobName"], STATES.get(job["TrainingJobStatus"])
            if state is None or name in known:  # still running, or copied before
                continue
            params = {k: _decode(space, k, v) for k, v in job["TunedHyperParameters"].items()}
            final = job.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
            value = final.get("Value")
            if state == TrialState.COMPLETE and value is None:
                state = TrialState.FAIL  # finished without reporting the objective
            attrs = {JOB_ATTR: name, "backend": "sagemaker", "tuning_job": job_name}
            if job.get("FailureReason"):
                attrs["failure"] = job["FailureReason"]
            study.add_trial(
                optuna.trial.create_trial(
                    params=params,
                    distributions={k: dists[k] for k in params},
                    value=float(value) if state == TrialState.COMPLETE else None,
                    state=state,
                    user_attrs=attrs,
                )
            )
            added += 1
    return added
