"""SageMaker's tuner for a search space, and its trials copied into the Optuna study.

`start` submits the search through the SageMaker Python SDK v3's `HyperparameterTuner`
(`sagemaker.train.tuner`, extra `sagemaker`) wrapped around the `ModelTrainer` a training
job of the same plan gets (`jobs.sagemaker.model_trainer`: role, image, instance,
networking, keys, output, stopping condition), so a trial runs as `mlinfra train --on
sagemaker` runs its job. What the tuner is told comes from the pure plan
in `sagemaker_request` (`tuning_config`: strategy, early stopping, limits, ranges, seed;
`metric_definitions`: the training contract's metric line), so the rules stay testable
without the SDK, and the request the SDK sends is checked against them. The SDK is imported
only here, after its two network switches are set (no IAM role validation, no telemetry:
`workloads.jobs.sagemaker.sdk_switches`).

`import_trials` copies each training job of the tuning job into the study the local driver
uses: a running job as a RUNNING trial (`study.add_trial`), told its result once it ends
(`study.tell`), so the live table shows what runs and every backend's results compare in one
place.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from workloads.jobs.sagemaker_request import TrainingJobPlan
from workloads.tuning.sagemaker_request import (
    _value,
    check_job_name,
    metric_definitions,
    trial_plan,
    tuning_config,
)
from workloads.tuning.space import CategoricalParam, IntParam, SearchSpace

JOB_ATTR = "sagemaker_training_job"
# TrainingJobStatus -> the trial's state (Stopped: stopped early by the tuner, i.e. pruned).
STATES = {
    "Completed": TrialState.COMPLETE,
    "Stopped": TrialState.PRUNED,
    "Failed": TrialState.FAIL,
}


def sagemaker_client(boto_session: Any) -> Any:
    """The SDK's own cached client: the one `HyperParameterTuningJob.create` sends through
    (the cache is keyed by session and region, and `create` passes the region)."""
    from workloads.jobs.sagemaker import sdk_missing, sdk_switches

    sdk_switches()
    try:
        from sagemaker.core.utils.utils import SageMakerClient
    except ImportError:
        raise sdk_missing() from None
    return SageMakerClient(
        session=boto_session, region_name=boto_session.region_name
    ).sagemaker_client


def build_tuner(space: SearchSpace, plan: TrainingJobPlan, boto_session: Any) -> Any:
    """The SDK's `HyperparameterTuner` for `space` (nothing is sent), around the very
    `ModelTrainer` a training job of `plan` gets (`jobs.sagemaker.model_trainer`). Raises
    `UnsupportedSpace` for a space SageMaker cannot express and `UnsupportedTrials` for a
    plan its trials cannot share (spot)."""
    config = tuning_config(space)  # refuses what SageMaker cannot express, before the SDK
    trials = trial_plan(plan, space)
    from workloads.jobs.sagemaker import model_trainer, sdk_missing

    trainer = model_trainer(trials, boto_session, sagemaker_client(boto_session))
    try:
        from sagemaker.core.parameter import (
            CategoricalParameter,
            ContinuousParameter,
            IntegerParameter,
        )
        from sagemaker.core.shapes import HyperParameterTuningJobStrategyConfig
        from sagemaker.core.shapes.shapes import HyperbandStrategyConfig, VpcConfig
        from sagemaker.train.tuner import HyperparameterTuner
    except ImportError:
        raise sdk_missing() from None

    ranges: dict[str, Any] = {}
    found = config["ParameterRanges"]
    for r in found.get("ContinuousParameterRanges", []):
        ranges[r["Name"]] = ContinuousParameter(r["MinValue"], r["MaxValue"], r["ScalingType"])
    for r in found.get("IntegerParameterRanges", []):
        ranges[r["Name"]] = IntegerParameter(r["MinValue"], r["MaxValue"], r["ScalingType"])
    for r in found.get("CategoricalParameterRanges", []):
        ranges[r["Name"]] = CategoricalParameter(r["Values"])
    limits = config["ResourceLimits"]
    strategy_config = None
    if "StrategyConfig" in config:
        hyperband = config["StrategyConfig"]["HyperbandStrategyConfig"]
        strategy_config = HyperParameterTuningJobStrategyConfig(
            hyperband_strategy_config=HyperbandStrategyConfig(
                min_resource=hyperband["MinResource"], max_resource=hyperband["MaxResource"]
            )
        )

    class Tuner(HyperparameterTuner):
        """sagemaker-train 1.27's training job definition copies instance type, count and
        volume size from the trainer's `Compute` but not `volume_kms_key_id` (the trials'
        volumes would lose the team's key), nor the network isolation and inter-container
        encryption of its `Networking`; it copies the VPC config but drops it silently when
        that fails. Each is copied here from the trainer, as its training job gets it."""

        def _build_training_job_definition(self, inputs):  # type: ignore[no-untyped-def]
            built = super()._build_training_job_definition(inputs)
            compute, networking = self.model_trainer.compute, self.model_trainer.networking
            if compute.volume_kms_key_id:
                built.resource_config.volume_kms_key_id = compute.volume_kms_key_id
            if networking.subnets or networking.security_group_ids:
                built.vpc_config = VpcConfig(
                    subnets=list(networking.subnets or []),
                    security_group_ids=list(networking.security_group_ids or []),
                )
            if networking.enable_network_isolation:
                built.enable_network_isolation = True
            if networking.enable_inter_container_traffic_encryption:
                built.enable_inter_container_traffic_encryption = True
            return built

    return Tuner(
        model_trainer=trainer,
        objective_metric_name=config["HyperParameterTuningJobObjective"]["MetricName"],
        objective_type=config["HyperParameterTuningJobObjective"]["Type"],
        hyperparameter_ranges=ranges,
        metric_definitions=metric_definitions(space, tuple(trials.metric_definitions)),
        strategy=config["Strategy"],
        strategy_config=strategy_config,
        early_stopping_type=config["TrainingJobEarlyStoppingType"],
        max_jobs=limits.get("MaxNumberOfTrainingJobs"),  # None for Grid: SageMaker counts
        max_parallel_jobs=limits["MaxParallelTrainingJobs"],
        max_runtime_in_seconds=limits.get("MaxRuntimeInSeconds"),
        random_seed=config.get("RandomSeed"),
        # On the tuning job; SageMaker copies them to its training jobs.
        tags=[{"Key": k, "Value": v} for k, v in trials.tags.items()] or None,
    )


def start(boto_session: Any, space: SearchSpace, plan: TrainingJobPlan, job_name: str) -> str:
    """Create the tuning job under the explicit `job_name` (the SDK's default is stamped to
    the minute), its training jobs made from `plan`; its ARN. An existing job of that name
    is reused (a rerun)."""
    check_job_name(job_name)
    tuner = build_tuner(space, plan, boto_session)  # a bad space fails before any call
    client = sagemaker_client(boto_session)
    try:
        found = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)
        return found["HyperParameterTuningJobArn"]
    except client.exceptions.ResourceNotFound:
        pass
    # The trainer's channels as its training job gets them (`create_input_data_channel`):
    # the tuner's own conversion of them would leave out each channel's InputMode.
    trainer = tuner.model_trainer
    inputs = [
        trainer.create_input_data_channel(c.channel_name, c.data_source)
        for c in trainer.input_data_config
    ]
    seed = tuning_config(space).get("RandomSeed")
    if seed == 0:
        # sagemaker-core 2.27 serialises shapes dropping every falsy value
        # (`_serialize_shape`), so `RandomSeed: 0` never reaches the request: put it back.
        def keep_zero_seed(params: dict[str, Any], **_: Any) -> None:
            if params.get("HyperParameterTuningJobName") == job_name:
                params["HyperParameterTuningJobConfig"].setdefault("RandomSeed", 0)

        client.meta.events.register(
            "before-parameter-build.sagemaker.CreateHyperParameterTuningJob",
            keep_zero_seed,
            unique_id=f"mlinfra-zero-seed-{job_name}",
        )
    tuner.tune(inputs=inputs, job_name=job_name, wait=False)
    return str(tuner.latest_tuning_job.hyper_parameter_tuning_job_arn)


def _decode(space: SearchSpace, name: str, text: str) -> Any:
    p = space.parameters[name]
    if isinstance(p, CategoricalParam) or space.sampler == "grid":
        for choice in p.values():  # type: ignore[union-attr]
            if _value(choice) == text.strip('"'):
                return choice
        raise ValueError(f"{name}={text!r} is not a value of the space")
    return int(float(text)) if isinstance(p, IntParam) else float(text)


def import_trials(study: optuna.Study, space: SearchSpace, client: Any, job_name: str) -> int:
    """Bring the tuning job's training jobs into `study`: a job not seen before becomes a
    trial (RUNNING while SageMaker runs it), a RUNNING trial whose job ended is told its
    result. Returns how many trials finished in this call."""
    trials = {
        t.user_attrs.get(JOB_ATTR): t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(JOB_ATTR)
    }
    dists = space.distributions()
    finished = 0
    paginator = client.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job")
    for page in paginator.paginate(HyperParameterTuningJobName=job_name):
        for job in page["TrainingJobSummaries"]:
            name = job["TrainingJobName"]
            state = STATES.get(job["TrainingJobStatus"], TrialState.RUNNING)
            final = job.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
            value = final.get("Value")
            if state == TrialState.COMPLETE and value is None:
                state = TrialState.FAIL  # finished without reporting the objective
            known = trials.get(name)
            if known is not None and (known.state != TrialState.RUNNING or state == known.state):
                continue  # told before, or still running
            attrs = {"failure": job["FailureReason"]} if job.get("FailureReason") else {}
            if known is None:
                params = {k: _decode(space, k, v) for k, v in job["TunedHyperParameters"].items()}
                attrs |= {JOB_ATTR: name, "backend": "sagemaker", "tuning_job": job_name}
                study.add_trial(
                    optuna.trial.create_trial(
                        params=params,
                        distributions={k: dists[k] for k in params},
                        value=float(value) if state == TrialState.COMPLETE else None,
                        state=state,
                        user_attrs=attrs,
                    )
                )
            else:  # a job seen running has ended
                trial = optuna.trial.Trial(study, known._trial_id)
                for key, text in attrs.items():
                    trial.set_user_attr(key, text)
                complete = state == TrialState.COMPLETE
                study.tell(known.number, float(value) if complete else None, state=state)
            finished += state != TrialState.RUNNING
    return finished
