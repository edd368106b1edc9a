"""`mlinfra tune` on a stack that trains on SageMaker: the tuning job, followed.

The trials' training jobs are made as `mlinfra train --on sagemaker` makes its job: the
same checks (channels in the team's buckets, the image tag in the team's training
repository), the same plan (`jobs.sagemaker_request.plan_training_job`: role, image,
instance type, the team key on volumes and output, output path, private subnets and
security groups, inter-container encryption, tracked metrics, labels as tags) and the same
`ModelTrainer` built from it (`jobs.sagemaker.model_trainer`), handed to SageMaker's tuner
(`tuning.sagemaker.start`); only checkpoints and spot stay off (`trial_plan`).

The tuning job's name is derived from the stack, the study and the space, so running the
same command again reattaches to the same job (never a second one), even when the local
study is gone. The loop polls DescribeHyperParameterTuningJob, copies each finished
training job into the study (`import_trials`, the live table), and stops when the tuning
job is Completed, Stopped or Failed (an error with SageMaker's reason; the trials copied
so far stay). Ctrl-C stops the tuning job (its running training jobs stop with it).

The winner is SageMaker's `BestTrainingJob`: the job SageMaker itself reports as best, with
its artifact (`ModelArtifacts.S3ModelArtifacts`) and final metrics. Both SageMaker and the
study rank by the space's objective in the space's direction, so they agree; where they do
not (a tie, or a job SageMaker stopped early and still ranks), SageMaker's choice wins,
because its artifact is the one whose metrics SageMaker checked, and the run says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from workloads.jobs.base import JobError, JobRequest
from workloads.jobs.sagemaker import SageMakerJobs
from workloads.jobs.sagemaker_request import TrainingJobPlan, plan_training_job, tracked_metrics
from workloads.tuning.sagemaker import JOB_ATTR, import_trials, sagemaker_client, start
from workloads.tuning.sagemaker_request import static_hyperparameters, tuning_job_name
from workloads.tuning.space import SearchSpace
from workloads.tuning.study import (
    TrialView,
    TuneResult,
    TuningError,
    open_study,
    study_result,
    trial_view,
)

TERMINAL = ("Completed", "Stopped", "Failed")
JOB_NAME_ATTR = "sagemaker_tuning_job"


def job_name(stack: str, study: str, space: SearchSpace) -> str:
    """The tuning job of (stack, study, space): stable, so a rerun finds its job; lowercase
    and starting with a letter, as the job API names jobs."""
    key = hashlib.sha256(f"{stack}\0{study}\0{space.fingerprint()}".encode()).hexdigest()[:6]
    base = study.lower() if study[:1].isalpha() else f"tune-{study.lower()}"
    return tuning_job_name(base, key)


def training_plan(
    jobs: SageMakerJobs,
    space: SearchSpace,
    *,
    name: str,
    channels: Mapping[str, str],
    image_tag: str | None,
    group: str,
    instance_type: str | None = None,
) -> TrainingJobPlan:
    """What every trial's training job runs with, checked and planned as `mlinfra train
    --on sagemaker` checks and plans its job; a TuningError says what would be refused."""
    request = JobRequest(
        name=name,
        channels=dict(channels),
        hyperparameters=static_hyperparameters(space),
        image_tag=image_tag,
        instance_type=instance_type,
        model_group=group,
    )
    try:
        jobs.check(request)
    except JobError as exc:
        raise TuningError(f"the tuner's training jobs would be refused: {exc}") from None
    # The objective is a tracked metric or the gate's, or else added: a trial reports it.
    return plan_training_job(
        jobs.descriptor, request, jobs.labels(request), extra_metrics=[space.objective.metric]
    )


class SageMakerSearch:
    """One tuning job of a study, followed until it ends; its trials copied into the study."""

    poll_seconds = 30.0

    def __init__(
        self,
        space: SearchSpace,
        folder: Path,
        *,
        study: str,
        job: str,
        plan: TrainingJobPlan,
        boto_session: Any,
        client: Any = None,
        on_update: Callable[[TrialView], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.space, self.folder, self.name, self.job = space, folder, study, job
        self.plan, self.boto_session = plan, boto_session
        self.client = client or sagemaker_client(boto_session)
        self.on_update = on_update or (lambda view: None)
        self.on_note = on_note or (lambda line: None)
        self.sleep = sleep
        self.notes: list[str] = []
        self.study = open_study(space, folder, study)
        if self.study.user_attrs.get(JOB_NAME_ATTR) != job:
            self.study.set_user_attr(JOB_NAME_ATTR, job)
        self._views: dict[int, TrialView] = {}

    def _note(self, line: str) -> None:
        self.notes.append(line)
        self.on_note(line)

    def run(self) -> TuneResult:
        started = time.monotonic()
        arn = start(self.boto_session, self.space, self.plan, self.job)
        self._note(f"SageMaker tuning job {self.job} ({arn})")
        try:
            while True:
                described = self.client.describe_hyper_parameter_tuning_job(
                    HyperParameterTuningJobName=self.job
                )
                self._import()  # after the describe: every job it counts is listed
                status = described["HyperParameterTuningJobStatus"]
                if status in TERMINAL:
                    break
                self.sleep(self.poll_seconds)
        except KeyboardInterrupt:
            self._stop()
            raise TuningError(
                f"interrupted: SageMaker tuning job {self.job} was stopped (its running "
                f"training jobs stop with it); the {self._finished()} finished trials are in "
                f"study {self.name!r}. Run the same command again to register the best of "
                "them; a new --study starts a new search"
            ) from None
        if status == "Failed":
            reason = described.get("FailureReason") or "no reason given"
            raise TuningError(
                f"SageMaker tuning job {self.job} failed: {reason}. The {self._finished()} "
                f"finished trials are kept in study {self.name!r}"
            )
        if status == "Stopped":
            self._note(f"tuning job {self.job} was stopped before its budget ran out")
        return self.result(described, time.monotonic() - started)

    def _import(self) -> None:
        import_trials(self.study, self.space, self.client, self.job)
        for t in self.study.get_trials(deepcopy=False):
            if t.user_attrs.get("tuning_job") != self.job:
                continue
            seen = self._views.get(t.number)
            if seen is None or seen.state != t.state.name:
                view = trial_view(t, note=str(t.user_attrs.get(JOB_ATTR, "")))
                self._views[t.number] = view
                self.on_update(dataclasses.replace(view, params=dict(view.params)))

    def _finished(self) -> int:
        return sum(1 for view in self._views.values() if view.state != "RUNNING")

    def _stop(self) -> None:
        try:
            self.client.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=self.job)
        except self.client.exceptions.ClientError as exc:
            # Finished meanwhile (a stop of a job that is not InProgress is refused).
            self.notes.append(f"tuning job {self.job} not stopped: {exc}")

    def result(self, described: Mapping[str, Any], wall_seconds: float) -> TuneResult:
        """The study's result with SageMaker's best training job as the winner."""
        journal = self.folder / "journal.log"
        result = study_result(self.study, self.name, journal, wall_seconds, self.notes, self._views)
        best = described.get("BestTrainingJob")
        if not best:
            return result
        best_job = best["TrainingJobName"]
        trial = next(
            (
                t
                for t in self.study.get_trials(deepcopy=False)
                if t.user_attrs.get(JOB_ATTR) == best_job
            ),
            None,
        )
        if trial is None:
            self._note(f"SageMaker's best training job {best_job} is not in the study")
            return result
        if result.best is None or result.best.number != trial.number:
            optuna_best = "none" if result.best is None else f"trial {result.best.number}"
            self._note(
                f"SageMaker's best training job {best_job} (trial {trial.number}) is registered; "
                f"the study's best is {optuna_best}"
            )
        training = self.client.describe_training_job(TrainingJobName=best_job)
        uri = training.get("ModelArtifacts", {}).get("S3ModelArtifacts")
        if uri is None:
            raise TuningError(
                f"SageMaker's best training job {best_job} reports no model artifact "
                "(ModelArtifacts.S3ModelArtifacts): nothing to register"
            )
        result.best = trial_view(trial, note=best_job)
        result.best_model_uri = uri
        result.best_metrics = tracked_metrics(training)
        return result
