"""The Kubernetes tuning driver: Optuna ask/tell, each trial a training Job on a GPU pool.

One loop on the tuner's machine keeps at most `slots` of the study's trials running (all
its tuners together: the quota is the namespace's): the space's `parallel`, or fewer when
the team namespace's ResourceQuota admits fewer of a trial's Job at once (read before the
first trial; the run says when it caps). Each trial goes
through the job API (`KubernetesJobs.submit`: the checks, manifests, labels and S3
outputs of `mlinfra train`) under an explicit name unique to the study and the trial,
`<study>-<id>-<number>`. The loop reads each Job's pod logs from where it stopped, reports
the objective's per-epoch metric line to Optuna, deletes the Job when the pruner says so
(PRUNED), and tells the study the final metric with the artifact's S3 URI (COMPLETE) or
the Job's failure reason (FAIL).

The study is the file journal the local driver uses (`study.open_study`), kept under the
stack's state dir. A tuner that dies leaves RUNNING trials whose Jobs may still run: the
next tuner on the study adopts them (their tuner's lock is gone) and follows each Job where
it is, or fails the trial when its Job is gone. Ctrl-C deletes the running trials' Jobs and
fails them, so nothing runs on by accident; the same command continues the study.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from components.admission import quantity
from workloads.jobs.base import MAX_JOB_NAME, JobError, JobRequest, JobStatus
from workloads.jobs.kubernetes import KubernetesJobs
from workloads.jobs.kubernetes_quota import QuotaFit, read_fit
from workloads.training.metric_line import parse_metric_lines
from workloads.tuning.progress import BestSoFar
from workloads.tuning.space import SearchSpace
from workloads.tuning.study import (
    FailureStreak,
    TrialView,
    TuneResult,
    TuningError,
    flock,
    open_study,
    orphaned,
    study_result,
    trial_budget,
    unusable_objective,
)

JOB_ATTR = "kubernetes_job"
ID_ATTR = "kubernetes_id"  # the study's own short id, in every trial's Job name
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STARTED, FULL, DONE = "started", "full", "done"


@dataclass(frozen=True)
class TrialJobs:
    """What every trial's Job shares: the data, the image, the pool, the model group."""

    channels: Mapping[str, str]
    image_tag: str | None
    pool: str
    model_group: str | None = None
    max_run_seconds: int = 24 * 3600


@dataclass
class _Running:
    trial: optuna.Trial
    job: str
    view: TrialView
    reported: set[int]
    cursor: Any = None
    seen: dict[int, set[str]] = field(default_factory=dict)
    best: BestSoFar | None = None  # the running best reported to the pruner


class KubernetesTuner:
    """Runs a study's trials as Kubernetes Jobs, within `parallel` and the namespace quota."""

    def __init__(
        self,
        space: SearchSpace,
        folder: Path,
        *,
        study: str,
        jobs: KubernetesJobs,
        trial_jobs: TrialJobs,
        on_update: Callable[[TrialView], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.space, self.folder, self.name = space, folder, study
        self.jobs, self.trial_jobs = jobs, trial_jobs
        self.on_update = on_update or (lambda view: None)
        self.on_note = on_note or (lambda line: None)
        self.sleep = sleep
        self.poll_seconds = jobs.poll_seconds
        self.id = uuid.uuid4().hex[:12]
        self.trials, self.notes = trial_budget(space)
        self.slots = space.budget.parallel
        self.quota: QuotaFit | None = None
        self._running: dict[int, _Running] = {}
        self._views: dict[int, TrialView] = {}
        self._failures = FailureStreak()
        self._fatal: str | None = None

    @functools.cached_property
    def study(self) -> optuna.Study:
        """The study, made on first use: after `plan`, so a refused run leaves no folder."""
        study = open_study(self.space, self.folder, self.name)
        with flock(self.folder / "study.lock"):
            if ID_ATTR not in study.user_attrs:
                study.set_user_attr(ID_ATTR, uuid.uuid4().hex[:6])
        return study

    @functools.cached_property
    def key(self) -> str:
        return str(self.study.user_attrs[ID_ATTR])

    def _study_lock(self) -> Any:
        """The study's lock, the study made first (making it takes that lock too)."""
        _ = self.key  # makes the study and its id, outside the lock
        return flock(self.folder / "study.lock")

    # -- what each trial submits --------------------------------------------------------------

    def job_name(self, number: int, key: str | None = None) -> str:
        """`<study>-<id>-<number>`: unique per study (and per study made again under the
        same name), at most the job API's name length."""
        prefix = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        if not prefix[:1].isalpha():
            prefix = f"tune-{prefix}".rstrip("-")
        tail = f"-{key or self.key}-{number:04d}"
        return prefix[: MAX_JOB_NAME - len(tail)].rstrip("-") + tail

    def request(self, number: int, params: Mapping[str, Any], key: str | None = None) -> JobRequest:
        t = self.trial_jobs
        return JobRequest(
            name=self.job_name(number, key),
            channels=dict(t.channels),
            hyperparameters=self.space.hyperparameters(params),
            image_tag=t.image_tag,
            pool=t.pool,
            model_group=t.model_group,
            max_run_seconds=t.max_run_seconds,
        )

    # -- before the first trial ----------------------------------------------------------------

    def plan(self) -> int:
        """Check what every trial shares and read the namespace's quota: how many trials
        run at once (`parallel`, capped by the quota). Says so when the quota caps it."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        # The resources do not depend on the sampled values, nor the name on the study's id
        # (a key of the same length): nothing is made before the checks pass.
        probe = self.request(0, {}, key="0" * 6)
        try:
            self.jobs.check(probe)
        except JobError as exc:
            raise TuningError(f"the trials' Jobs would be refused: {exc}") from None
        manifest = next(
            m for m in self.jobs.manifests(probe, self.jobs.labels(probe)) if m["kind"] == "Job"
        )
        namespace = self.jobs.namespace
        try:
            self.quota = read_fit(client.CoreV1Api(self.jobs.api_client()), namespace, manifest)
        except ApiException as exc:
            raise TuningError(
                f"cannot read the ResourceQuotas of namespace {namespace} ({exc.status} "
                f"{exc.reason}): the tuner reads them to stay within the team's GPU quota"
            ) from None
        parallel, fit = self.space.budget.parallel, self.quota
        self.slots = parallel
        binding = fit.binding
        if binding is not None and binding.slots < 1:
            raise TuningError(
                f"no trial fits namespace {namespace}'s quota: {binding.describe()}. Raise "
                "the quota (`quota` under mlinfra:cluster in the stack config) or use a pool with "
                "fewer GPUs per node"
            )
        if binding is not None and binding.slots < parallel:
            self.slots = binding.slots
            self._note(
                f"parallel {parallel} capped to {self.slots} by namespace {namespace}'s "
                f"quota ({binding.describe()})"
            )
        gpu = fit.gpu()
        if gpu is not None and gpu.used and quantity(gpu.used) > 0:
            self._note(
                f"{gpu.used} of {gpu.hard} GPUs of namespace {namespace} are in use now: "
                "trials past the free ones wait in Pending"
            )
        return self.slots

    def _note(self, line: str) -> None:
        self.notes.append(line)
        self.on_note(line)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> TuneResult:
        started = time.monotonic()
        timeout = self.space.budget.timeout
        deadline = started + timeout if timeout else None
        tuner_lock = self.folder / "tuners" / f"{self.id}.lock"
        with flock(tuner_lock):
            if self.quota is None:
                self.plan()
            try:
                self._adopt()
                while self._fatal is None:
                    step = STARTED
                    while len(self._running) < self.slots and step == STARTED:
                        step = self._start(deadline)
                    if step == FULL:  # another tuner's trials hold the slots
                        self._adopt()  # unless that tuner is gone
                    if not self._running and step != FULL:
                        break
                    for r in list(self._running.values()):
                        if self._fatal is None and self._poll(r):
                            self._running.pop(r.trial.number)
                    if self._fatal is None:
                        self.sleep(self.poll_seconds)
            except KeyboardInterrupt:
                self._stop_all("stopped: the tuner was interrupted")
                raise TuningError(
                    f"interrupted: the running trials' Jobs were deleted. Run the same "
                    f"command again to continue study {self.name!r}"
                ) from None
            if self._fatal:
                self._stop_all(f"stopped: {self._fatal}")
        tuner_lock.unlink(missing_ok=True)
        if self._fatal:
            raise TuningError(self._fatal)
        if deadline and time.monotonic() > deadline:
            self.notes.append(f"stopped starting trials after the {timeout}s timeout")
        return self.result(time.monotonic() - started)

    def result(self, wall_seconds: float = 0.0) -> TuneResult:
        journal = self.folder / "journal.log"
        return study_result(self.study, self.name, journal, wall_seconds, self.notes, self._views)

    def _adopt(self) -> None:
        """Follow the Jobs of RUNNING trials whose tuner is gone (killed, crashed)."""
        with self._study_lock():
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if not orphaned(t, self.folder, self.id):
                    continue
                trial = optuna.trial.Trial(self.study, t._trial_id)
                trial.set_user_attr("tuner", self.id)
                view = TrialView(t.number, "RUNNING", dict(t.params), note="resumed")
                view.epochs = len(t.intermediate_values)
                job = t.user_attrs.get(JOB_ATTR)
                running = _Running(trial, str(job), view, set(t.intermediate_values))
                if job is None:
                    self._fail(running, "its tuner stopped before it submitted the Job")
                    continue
                self._running[t.number] = running
                self._publish(view)

    def _start(self, deadline: float | None) -> str:
        """Ask for the next trial and submit its Job while the budget lasts: STARTED, FULL
        (the study's running trials, all tuners together, fill the slots: the quota is the
        namespace's) or DONE. Under the study's lock."""
        if deadline is not None and time.monotonic() > deadline:
            return DONE
        with self._study_lock():
            trials = self.study.get_trials(deepcopy=False)
            if sum(1 for t in trials if t.state in (*FINISHED, TrialState.RUNNING)) >= self.trials:
                return DONE
            if sum(1 for t in trials if t.state == TrialState.RUNNING) >= self.slots:
                return FULL
            trial = self.study.ask()
            self.space.suggest(trial)
            request = self.request(trial.number, trial.params)
            trial.set_user_attr("tuner", self.id)
            trial.set_user_attr(JOB_ATTR, request.name)
        view = TrialView(trial.number, "RUNNING", dict(trial.params), note="pending")
        running = _Running(trial, request.name, view, set())
        try:
            self.jobs.submit(request)
        except JobError as exc:
            self._fail(running, f"not submitted: {exc}")
            self._fatal = f"trial {trial.number}'s Job was refused: {exc}"
            return DONE
        self._running[trial.number] = running
        self._publish(view)
        return STARTED

    def _poll(self, r: _Running) -> bool:
        """Read the trial's Job and its new log lines; True when the trial is finished."""
        try:
            status = self.jobs.status(r.job)
        except JobError:
            self._fail(r, f"its Job {r.job} was deleted outside the tuner")
            return True
        lines, r.cursor = self.jobs.read_logs(r.job, r.cursor)  # after the status: all of it
        if self._report(r, lines):
            try:
                self.jobs.cancel(r.job)  # deletes the Job and its pods
            except JobError:
                pass  # gone already
            r.trial.set_user_attr("epochs", r.view.epochs)
            self.study.tell(r.trial.number, state=TrialState.PRUNED)
            r.view.state, r.view.note = "PRUNED", f"Job {r.job} deleted"
            self._failures.ended()
            self._publish(r.view)
            return True
        if not status.terminal:
            note = "pending" if status.state == "Pending" else ""
            if note != r.view.note:
                r.view.note = note
                self._publish(r.view)
            return False
        if status.state == "Completed":
            if self._complete(r, status):
                return True
        else:
            self._fail(r, status.reason or f"the Job {status.state.lower()}")
        self._fatal = self._fatal or self._failures.failed(r.view.note)
        return True

    def _report(self, r: _Running, lines: list[str]) -> bool:
        """Report each new epoch's objective; True when the pruner says stop."""
        metric = self.space.objective.metric
        prune = False
        for m in parse_metric_lines(lines):
            if m.epoch is None:
                continue
            r.seen.setdefault(m.epoch, set()).add(m.name)
            r.view.epochs = max(r.view.epochs, m.epoch)
            if m.name != metric:
                continue
            r.view.value = m.value
            self._publish(r.view)
            r.best = r.best or BestSoFar(self.space.objective.direction)
            value = r.best(m.value)
            if m.epoch in r.reported or prune:
                continue
            r.trial.report(value, m.epoch)
            r.reported.add(m.epoch)
            prune = r.trial.should_prune()
        if len(r.seen) >= 2 and not any(metric in names for names in r.seen.values()):
            self._fatal = self._missing_metric(set().union(*r.seen.values()))
        return prune

    def _missing_metric(self, names: set[str]) -> str:
        return (
            f"objective.metric {self.space.objective.metric!r} is not reported by the training "
            f"run; it reports: {', '.join(sorted(names))}. Fix the search space's objective"
        )

    def _complete(self, r: _Running, status: JobStatus) -> bool:
        """Tell the study the trial's objective; False when it has none to tell."""
        value = status.metrics.get(self.space.objective.metric)
        if value is None:
            self._fatal = self._missing_metric(set(status.metrics))
            self._fail(r, self._fatal)
            return False
        if unusable := unusable_objective(self.space.objective.metric, value):
            self._fail(r, unusable)
            return False
        r.trial.set_user_attr("epochs", r.view.epochs)
        r.trial.set_user_attr("metrics", dict(status.metrics))
        if status.artifact_uri:
            r.trial.set_user_attr("model_uri", status.artifact_uri)
        self.study.tell(r.trial.number, float(value))
        r.view.state, r.view.value, r.view.note = "COMPLETE", value, ""
        self._failures.ended()
        self._publish(r.view)
        return True

    def _fail(self, r: _Running, reason: str) -> None:
        r.trial.set_user_attr("epochs", r.view.epochs)
        r.trial.set_user_attr("failure", reason)
        self.study.tell(r.trial.number, state=TrialState.FAIL)
        r.view.state, r.view.note = "FAIL", reason
        self._publish(r.view)

    def _stop_all(self, reason: str) -> None:
        """Delete every running trial's Job; the trials fail with `reason`."""
        for r in list(self._running.values()):
            try:
                self.jobs.cancel(r.job)
            except JobError:
                pass
            self._fail(r, reason)
        self._running.clear()

    def _publish(self, view: TrialView) -> None:
        self._views[view.number] = view
        self.on_update(dataclasses.replace(view, params=dict(view.params)))  # a snapshot
