"""One study, shared: its Optuna file journal, the file locks that say who is alive, and
what a search reports (`TrialView`, `TuneResult`).

The journal (`optuna.storages.journal`) serves several processes on one file; SQLite does
not under parallel writers. Locks are `flock`s, which the kernel releases when their holder
dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from workloads.tuning.space import SearchSpace


class TuningError(RuntimeError):
    """The search cannot go on; the message says why and what to do."""


@dataclass
class TrialView:
    """One trial as people look at it (the live table)."""

    number: int
    state: str  # RUNNING, COMPLETE, PRUNED, FAIL
    params: dict[str, Any]
    value: float | None = None  # the objective: the latest epoch's, then the final one
    epochs: int = 0  # epochs run
    note: str = ""  # resumed, the failure reason, ...


@dataclass
class TuneResult:
    study: str
    journal: Path
    trials: list[TrialView]
    best: TrialView | None
    best_metrics: dict[str, float]
    best_model_dir: Path | None
    wall_seconds: float
    notes: list[str] = field(default_factory=list)
    # Where the best trial's artifact already is (a cloud trial wrote it to the artifacts
    # bucket); None when it is local (`best_model_dir`) or unknown.
    best_model_uri: str | None = None

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)

    @property
    def epochs(self) -> int:
        return sum(t.epochs for t in self.trials)


@contextlib.contextmanager
def flock(path: Path, blocking: bool = True) -> Iterator[IO[str] | None]:
    """An exclusive lock on `path`; yields None when not blocking and someone holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield handle
    finally:
        handle.close()


def held(path: Path) -> bool:
    """Whether a live process holds the lock on `path`."""
    if not path.exists():
        return False
    with flock(path, blocking=False) as handle:
        return handle is None


def cut_torn_record(journal: Path) -> int:
    """Drop a record cut off at the journal's end (a full disk or a crash mid-append);
    the bytes dropped. Optuna skips such a tail when it reads, but appends the next record
    to it: one line no reader decodes, and the study never loads again. Under Optuna's own
    journal lock, so no writer is midway through a record."""
    if not journal.is_file():
        return 0
    lock = JournalFileSymlinkLock(str(journal))  # the lock JournalFileBackend takes
    lock.acquire()
    try:
        with open(journal, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            end = size
            while end > 0:  # back to the last newline, a block at a time
                start = max(0, end - 65536)
                f.seek(start)
                block = f.read(end - start)
                if end == size and block.endswith(b"\n"):
                    return 0
                at = block.rfind(b"\n")
                if at >= 0:
                    end = start + at + 1
                    break
                end = start
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
            return size - end
    finally:
        lock.release()


def open_study(space: SearchSpace, folder: Path, name: str) -> optuna.Study:
    """The study in `folder`'s journal, created on first use; a study made from another
    space is refused (its trials would not compare). A record cut off at the journal's end
    is dropped first (`cut_torn_record`), so a study a full disk interrupted resumes."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    with flock(folder / "study.lock"):
        cut_torn_record(folder / "journal.log")
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=space.objective.direction,
            sampler=space.make_sampler(),
            pruner=space.make_pruner(),
            load_if_exists=True,
        )
        made_from = study.user_attrs.get("space")
        if made_from is None:
            study.set_user_attr("space", space.fingerprint())
            study.set_user_attr("objective", space.objective.model_dump())
        elif made_from != space.fingerprint():
            raise TuningError(
                f"study {name!r} ({folder}) was made from another search space; its trials "
                "would not compare with this one's. Use the same space, or a new study name "
                f"(--study, or 'study:' in the space file), or remove {folder}"
            )
    return study


def trial_budget(space: SearchSpace) -> tuple[int, list[str]]:
    """How many trials the study runs (all tuners together), and why, when not `trials`."""
    points = space.grid_size() if space.sampler == "grid" else None
    if points is not None and points < space.budget.trials:
        return points, [f"the grid has {points} points: {points} trials"]
    return space.budget.trials, []


class FailureStreak:
    """Trials failing in a row: at `limit` the search stops, since the same mistake (a bad
    fixed hyperparameter, data the trials cannot read) would fail every trial after them."""

    def __init__(self, limit: int = 3) -> None:
        self.limit, self.count = limit, 0

    def ended(self) -> None:
        """A trial completed or was pruned: it ran, so the streak is over."""
        self.count = 0

    def failed(self, reason: str) -> str | None:
        """Count a failed trial; the message that stops the search once the limit is hit."""
        self.count += 1
        if self.count < self.limit:
            return None
        return f"{self.limit} trials failed in a row; the last: {reason}"


def unusable_objective(metric: str, value: Any) -> str | None:
    """Why a finished trial's objective cannot be told to the study (Optuna fails a trial
    told NaN without a word of why), or None."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return f"objective {metric} is {value!r}"
    return None


def orphaned(t: optuna.trial.FrozenTrial, folder: Path, tuner: str) -> bool:
    """Whether RUNNING trial `t` of the study in `folder` has no live tuner (it never got one,
    or the process holding `tuners/<id>.lock` is gone), so tuner `tuner` takes it over. A
    trial SageMaker's tuner runs (copied in by `tuning.sagemaker.import_trials`) is never
    anyone else's to adopt."""
    if t.state != optuna.trial.TrialState.RUNNING or t.user_attrs.get("backend") == "sagemaker":
        return False
    owner = t.user_attrs.get("tuner")
    return owner != tuner and (not owner or not held(folder / "tuners" / f"{owner}.lock"))


def trial_view(t: optuna.trial.FrozenTrial, note: str = "") -> TrialView:
    """A stored trial as the table shows it; `note` is what the driver saw live."""
    steps = t.intermediate_values
    value = t.value if t.value is not None else (steps[max(steps)] if steps else None)
    return TrialView(
        number=t.number,
        state=t.state.name,
        params=dict(t.params),
        value=value,
        epochs=int(t.user_attrs.get("epochs", len(steps))),
        note=str(t.user_attrs.get("failure", "")) or note,
    )


def study_result(
    study: optuna.Study,
    name: str,
    journal: Path,
    wall_seconds: float,
    notes: list[str],
    live: dict[int, TrialView] | None = None,
) -> TuneResult:
    """The study's trials and its best one, from whichever backend ran them. A best trial
    has its artifact at `model_dir` (local), at `model_uri` (a cloud job), or neither (a
    trial copied from another backend's tuner)."""
    live = live or {}

    def view(t: optuna.trial.FrozenTrial) -> TrialView:
        seen = live.get(t.number)
        return trial_view(t, seen.note if seen else "")

    try:
        best = study.best_trial
    except ValueError:
        best = None
    attrs = best.user_attrs if best else {}
    return TuneResult(
        study=name,
        journal=journal,
        trials=[view(t) for t in study.get_trials(deepcopy=False)],
        best=view(best) if best else None,
        best_metrics=dict(attrs.get("metrics", {})),
        best_model_dir=Path(attrs["model_dir"]) if "model_dir" in attrs else None,
        best_model_uri=attrs.get("model_uri"),
        wall_seconds=wall_seconds,
        notes=notes,
    )
