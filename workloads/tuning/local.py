"""The local tuning driver: Optuna on this machine, each trial a `workloads.train` process.

One study lives in a file journal (`optuna.storages.journal`) in the study's folder, so
several tuners (and the `parallel` trials of each) share it safely. Each trial runs the
harness under the training contract in `trials/NNNN/` with its stdout in `train.log`; the
driver tails that log, reports the objective's per-epoch metric line to Optuna and, when the
pruner says so, sends SIGTERM (the harness checkpoints and exits 143). The harness knows
nothing of Optuna.

Ownership is held by file locks, which the operating system releases when their holder
dies, however it dies: each tuner holds `tuners/<id>.lock` while it runs, and the tuner
thread running a trial holds `trials/NNNN/lock`, which the trial's process inherits. A
tuner that starts (or is looking for work) adopts every RUNNING trial whose tuner is gone:
it stops the trial's orphaned process if one is left (SIGTERM: it checkpoints), then runs
the trial again under the same number, resuming from its checkpoint, or records it if it
had finished. So an interrupted run resumes with no trial lost or duplicated.

The budget counts the study's trials (all tuners together): a resumed run only runs the
ones still missing.

No trial process outlives its tuner: SIGINT or SIGTERM stop the trials (SIGTERM: they
checkpoint); when `run` ends any other way (an exception) the trials still running get
SIGTERM, then their process group SIGKILL after `TRIAL_STOP_S`; and a tuner killed outright
takes its trials with it, the kernel sending each SIGTERM (`trial_process`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import TrialState

from workloads.jobs.base import exit_reason
from workloads.training.contract import TrainingContract, parse_hyperparameters
from workloads.training.metric_line import parse_metric_lines
from workloads.tuning.progress import BestSoFar
from workloads.tuning.space import SearchSpace
from workloads.tuning.study import (
    FailureStreak,
    TrialView,
    TuneResult,
    TuningError,
    flock,
    held,
    open_study,
    orphaned,
    study_result,
    trial_budget,
    unusable_objective,
)

EXIT_TERMINATED = 143
ORPHAN_STOP_S = 120.0  # how long an orphaned trial process gets to checkpoint and exit
TRIAL_STOP_S = 30.0  # how long a trial gets to checkpoint when its tuner ends abnormally
POLL_S = 0.1
MAX_LINE = 1 << 20  # characters of one log line the driver keeps while waiting for its end
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class LocalTuner:
    """Runs a study's trials as local `workloads.train` processes, `parallel` at a time."""

    def __init__(
        self,
        space: SearchSpace,
        folder: Path,
        *,
        study: str,
        train: str,
        validation: str | None = None,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
        on_update: Callable[[TrialView], None] | None = None,
    ) -> None:
        self.space, self.folder, self.name = space, folder, study
        self.train, self.validation = train, validation
        self.env = dict(os.environ if env is None else env)
        self.launcher = launcher or [sys.executable]
        self.on_update = on_update or (lambda view: None)
        self.id = uuid.uuid4().hex[:12]
        self.study = open_study(space, folder, study)
        self.trials, self.notes = trial_budget(space)
        self._stop = threading.Event()
        self._fatal: str | None = None
        self._failures = FailureStreak()
        self._lock = threading.Lock()
        self._procs: dict[int, subprocess.Popen] = {}
        self._views: dict[int, TrialView] = {}

    # -- public ---------------------------------------------------------------------------

    def run(self) -> TuneResult:
        started = time.monotonic()
        deadline = started + self.space.budget.timeout if self.space.budget.timeout else None
        tuner_lock = self.folder / "tuners" / f"{self.id}.lock"
        with flock(tuner_lock), self._signals():
            workers = [
                threading.Thread(target=self._work, args=(deadline,), name=f"trial-worker-{i}")
                for i in range(self.space.budget.parallel)
            ]
            try:
                for w in workers:
                    w.start()
                for w in workers:
                    while w.is_alive():
                        w.join(0.2)
            finally:
                self._end_trials()
        tuner_lock.unlink(missing_ok=True)
        if self._fatal:
            raise TuningError(self._fatal)
        if self._stop.is_set():
            raise TuningError(
                f"interrupted; the running trials checkpointed. Run the same command again to "
                f"resume study {self.name!r}"
            )
        if deadline and time.monotonic() > deadline:
            self.notes.append(
                f"stopped starting trials after the {self.space.budget.timeout}s timeout"
            )
        return self.result(time.monotonic() - started)

    def stop(self) -> None:
        """Stop: running trials get SIGTERM (they checkpoint) and stay resumable."""
        self._stop.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _end_trials(self) -> None:
        """However `run` ends, no trial process is left: after a normal end there is none;
        otherwise SIGTERM (they checkpoint), then SIGKILL to each one's process group."""
        with self._lock:
            if not self._procs:
                return
        self.stop()
        end = time.monotonic() + TRIAL_STOP_S
        while time.monotonic() < end:
            with self._lock:
                if all(p.poll() is not None for p in self._procs.values()):
                    return
            time.sleep(POLL_S)
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own group: start_new_session

    def result(self, wall_seconds: float = 0.0) -> TuneResult:
        journal = self.folder / "journal.log"
        return study_result(self.study, self.name, journal, wall_seconds, self.notes, self._views)

    # -- claiming work --------------------------------------------------------------------

    def _work(self, deadline: float | None) -> None:
        while not self._stop.is_set() and self._fatal is None:
            try:
                claimed = self._claim(deadline)
                if claimed is None:
                    return
                self._run_trial(*claimed)
            except Exception as exc:  # a bug or a broken study: stop everything, say why
                self._fatal = f"the tuner failed: {type(exc).__name__}: {exc}"
                self.stop()
                return

    def _claim(self, deadline: float | None) -> tuple[optuna.Trial, bool] | None:
        """The next trial for this worker: an orphaned one first, else a new one while the
        budget lasts. Under the study lock, so tuners never exceed the budget together."""
        with self._lock, flock(self.folder / "study.lock"):
            trials = self.study.get_trials(deepcopy=False)
            for t in trials:
                if orphaned(t, self.folder, self.id):
                    trial = optuna.trial.Trial(self.study, t._trial_id)
                    trial.set_user_attr("tuner", self.id)
                    return trial, True
            if sum(1 for t in trials if t.state in (*FINISHED, TrialState.RUNNING)) >= self.trials:
                return None
            if deadline is not None and time.monotonic() > deadline:
                return None
            trial = self.study.ask()
            self.space.suggest(trial)
            trial.set_user_attr("tuner", self.id)
            return trial, False

    # -- one trial --------------------------------------------------------------------------

    def _trial_dir(self, number: int) -> Path:
        return self.folder / "trials" / f"{number:04d}"

    def _contract(self, number: int, params: dict[str, Any]) -> TrainingContract:
        folder = self._trial_dir(number)
        hps = parse_hyperparameters(self.space.hyperparameters(params), f"trial {number}")
        return TrainingContract(
            train=self.train,
            validation=self.validation,
            model_dir=folder / "model",
            output_dir=folder / "output",
            checkpoint_dir=folder / "checkpoints",
            failure_file=folder / "failure",
            model_uri=None,
            hyperparameters=hps,
        )

    def _run_trial(self, trial: optuna.Trial, adopted: bool) -> None:
        number, folder = trial.number, self._trial_dir(trial.number)
        params = dict(trial.params)
        view = TrialView(number, "RUNNING", params, note="resumed" if adopted else "")
        view.epochs = len(trial.storage.get_trial(trial._trial_id).intermediate_values)
        self._publish(view)
        if adopted and held(folder / "lock"):  # its orphaned process still runs
            self._stop_orphan(folder)
        with flock(folder / "lock") as handle:
            assert handle is not None
            contract = self._contract(number, params)
            outputs = contract.output_dir / "metrics.json"
            if adopted and outputs.is_file() and (contract.model_dir / "meta.json").is_file():
                self._finish(trial, view, contract, 0, pruned=False)  # done before the crash
                return
            code, pruned = self._launch(trial, view, contract, handle)
            if code == EXIT_TERMINATED and not pruned and self._stop.is_set() and not self._fatal:
                view.note = "stopped; resumes on the next run"
                self._publish(view)
                return  # stays RUNNING: the next tuner adopts it
            self._finish(trial, view, contract, code, pruned)

    def _stop_orphan(self, folder: Path) -> None:
        pid_file = folder / "pid"
        pid = int(pid_file.read_text()) if pid_file.is_file() else None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        waited = time.monotonic() + ORPHAN_STOP_S
        while held(folder / "lock"):
            if time.monotonic() > waited:
                raise TuningError(f"{folder}: the trial's old process (pid {pid}) does not stop")
            time.sleep(POLL_S)

    def _launch(
        self, trial: optuna.Trial, view: TrialView, contract: TrainingContract, handle: IO[str]
    ) -> tuple[int, bool]:
        folder = contract.model_dir.parent
        contract.failure_file.unlink(missing_ok=True)
        env = self.env | contract.to_env() | {"PYTHONUNBUFFERED": "1"}
        log_path = folder / "train.log"
        with open(log_path, "ab") as log:
            # Its own session: Ctrl-C reaches the tuner, which stops trials with SIGTERM.
            # The inherited lock marks the trial as taken for as long as the process lives.
            # `trial_process` runs `workloads.train` and gets SIGTERM if the tuner dies.
            proc = subprocess.Popen(
                [*self.launcher, "-m", "workloads.tuning.trial_process", str(os.getpid())],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                pass_fds=(handle.fileno(),),
                start_new_session=True,
            )
        (folder / "pid").write_text(str(proc.pid))
        with self._lock:
            self._procs[trial.number] = proc
        try:
            return self._follow(trial, view, proc, log_path)
        finally:
            with self._lock:
                self._procs.pop(trial.number, None)

    def _follow(
        self,
        trial: optuna.Trial,
        view: TrialView,
        proc: subprocess.Popen,
        log_path: Path,
    ) -> tuple[int, bool]:
        """Tail the trial's log: report each epoch's objective; prune on the pruner's word.
        The log is read from its start: a resumed trial's earlier epochs are reported once."""
        metric = self.space.objective.metric
        reported = set(trial.storage.get_trial(trial._trial_id).intermediate_values)
        best = BestSoFar(self.space.objective.direction)
        seen: dict[int, set[str]] = {}
        pruned = False
        with open(log_path, errors="replace") as log:
            buffer = ""
            while True:
                chunk = log.read(MAX_LINE)
                done = proc.poll() is not None
                if not chunk and done:
                    break
                if not chunk:
                    time.sleep(POLL_S)
                    continue
                buffer += chunk
                lines, _, buffer = buffer.rpartition("\n")
                if len(buffer) > MAX_LINE:  # output with no newline: no metric line is that long
                    buffer = ""
                for m in parse_metric_lines(lines):
                    if m.epoch is None:
                        continue
                    seen.setdefault(m.epoch, set()).add(m.name)
                    view.epochs = max(view.epochs, m.epoch)
                    if m.name != metric:
                        continue
                    view.value = m.value
                    self._publish(view)
                    value = best(m.value)
                    if m.epoch in reported or pruned:
                        continue
                    trial.report(value, m.epoch)
                    reported.add(m.epoch)
                    if trial.should_prune():
                        pruned = True
                        proc.send_signal(signal.SIGTERM)
                if len(seen) >= 2 and not any(metric in names for names in seen.values()):
                    self._fatal = self._missing_metric(seen)
                    self.stop()
        return proc.wait(), pruned

    def _missing_metric(self, seen: dict[int, set[str]]) -> str:
        names = sorted(set().union(*seen.values()))
        return (
            f"objective.metric {self.space.objective.metric!r} is not reported by the training "
            f"run; it reports: {', '.join(names)}. Fix the search space's objective"
        )

    def _finish(
        self,
        trial: optuna.Trial,
        view: TrialView,
        contract: TrainingContract,
        code: int,
        pruned: bool,
    ) -> None:
        folder = contract.model_dir.parent
        trial.set_user_attr("epochs", view.epochs)
        if pruned and code in (0, EXIT_TERMINATED):
            self.study.tell(trial.number, state=TrialState.PRUNED)
            view.state = "PRUNED"
            self._failures.ended()
        elif code == 0 and isinstance(metrics := self._final_metrics(contract), str):
            self._fail(trial, view, metrics)  # it exited 0, but its results are not whole
        elif code == 0:
            value = metrics.get(self.space.objective.metric)
            if value is None:
                self._fatal = self._missing_metric({0: set(metrics)})
                self.study.tell(trial.number, state=TrialState.FAIL)
                view.state = "FAIL"
            elif unusable := unusable_objective(self.space.objective.metric, value):
                self._fail(trial, view, unusable)
            else:
                trial.set_user_attr("metrics", metrics)
                trial.set_user_attr("model_dir", str(contract.model_dir))
                self.study.tell(trial.number, float(value))
                view.state, view.value = "COMPLETE", float(value)
                self._failures.ended()
        else:
            failure = None
            if contract.failure_file.is_file():
                failure = contract.failure_file.read_text(errors="replace").strip()[:2000]
            # Popen gives a signal as -N; a shell and a container report 128 + N
            reason = exit_reason(128 - code if code < 0 else code, failure)
            self._fail(trial, view, f"{reason}; see {folder / 'train.log'}")
        shutil.rmtree(contract.checkpoint_dir, ignore_errors=True)  # finished: not resumed
        self._publish(view)

    @staticmethod
    def _final_metrics(contract: TrainingContract) -> dict[str, Any] | str:
        """The run's final metrics (`metrics.json`), or why they cannot be read."""
        path = contract.output_dir / "metrics.json"
        try:
            metrics = json.loads(path.read_text())["metrics"]
        except FileNotFoundError:
            return f"exited 0 without writing {path}"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"{path} is not whole ({type(exc).__name__}: {exc})"
        if not isinstance(metrics, dict):
            return f"{path}: 'metrics' is not a mapping"
        return metrics

    def _fail(self, trial: optuna.Trial, view: TrialView, reason: str) -> None:
        trial.set_user_attr("failure", reason)
        self.study.tell(trial.number, state=TrialState.FAIL)
        view.state, view.note = "FAIL", reason
        self._fatal = self._fatal or self._failures.failed(reason)

    # -- views ----------------------------------------------------------------------------

    def _publish(self, view: TrialView) -> None:
        self._views[view.number] = view
        self.on_update(dataclasses.replace(view, params=dict(view.params)))  # a snapshot

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """In the main thread, SIGINT and SIGTERM stop the search cleanly."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, lambda signum, frame: self.stop())
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
