"""Training jobs as local processes, under the SageMaker training contract.

A job lives in its folder, `<state>/<stack>/jobs/<name>/`, and nowhere else:

    job.json      the request as submitted (channels, hyperparameters, labels), written once
    pid           the supervisor process (`python -m workloads.jobs.local run DIR`)
    exit          the training process's exit code, written by the supervisor when it ends
    stopped       present when the job was stopped (`mlinfra jobs stop`)
    train.log     stdout and stderr; failure: the failure file
    model/ output/ checkpoints/

The state is read from these files and the process table each time it is asked. The
supervisor runs detached (its own session), so the job outlives the command that started
it; it forwards SIGTERM to training, which checkpoints and exits 143. Submitting the name
of a job that failed or was stopped starts it again on the same folders: it resumes from
its last checkpoint.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from workloads.jobs.base import (
    GPU,
    LABEL_STACK,
    JobBackend,
    JobError,
    JobRequest,
    JobStatus,
    State,
    exit_reason,
    register,
)
from workloads.jobs.environment import container_env
from workloads.local.env import pid_alive
from workloads.local.process import die_with_parent
from workloads.platform import PlatformDescriptor

SUPERVISOR = "workloads.jobs.local"  # python -m SUPERVISOR run JOB_DIR
LAUNCHER_ENV = "MLINFRA_TRAIN_LAUNCHER"  # e.g. "torchrun --nproc-per-node 2"
RECORD, PID, EXIT, STOPPED = "job.json", "pid", "exit", "stopped"
LOG, FAILURE = "train.log", "failure"


def file_path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


@register
class LocalJobs(JobBackend):
    name = "local"
    supports = frozenset({GPU})  # a GPU pool is the local device (CUDA if present)
    poll_seconds = 0.5

    def __init__(
        self,
        descriptor: PlatformDescriptor,
        root: str | Path | None = None,
        attached: bool = False,
    ):
        """`attached`: the job gets SIGTERM (checkpoints, stops) when this process dies,
        as the pipeline wants; otherwise it outlives the command that started it."""
        super().__init__(descriptor)
        self.attached = attached
        if root is None:
            if descriptor.local is None:
                raise JobError(f"stack {descriptor.stack!r} has no local state folder")
            root = Path(descriptor.local.root) / "jobs"
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    # --- the backend ---------------------------------------------------------------------

    def _check(self, request: JobRequest) -> None:
        folder = self.job_dir(request.name)
        if (folder / RECORD).is_file():
            state = self._status(request.name).state
            if state in ("Pending", "Running", "Completed"):
                raise JobError(
                    f"job {request.name!r} already exists ({state.lower()}); pick another name"
                )

    def _submit(self, request: JobRequest, labels: dict[str, str]) -> str:
        folder = self.job_dir(request.name)
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "name": request.name,
            "channels": dict(request.channels),
            "hyperparameters": {k: str(v) for k, v in request.hyperparameters.items()},
            "image": "local",
            "labels": labels,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "artifact_uri": (folder / "model").absolute().as_uri(),
        }
        if not (folder / RECORD).is_file():  # a resubmitted job keeps its first record
            _write(folder / RECORD, json.dumps(record, indent=2))
        for stale in (EXIT, STOPPED, FAILURE, PID):
            (folder / stale).unlink(missing_ok=True)
        with open(folder / LOG, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR, "run", str(folder)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on the caller does not reach the job
                env=dict(os.environ),
                preexec_fn=die_with_parent() if self.attached else None,
            )
        _write(folder / PID, str(proc.pid))  # status() reaps it once it has ended
        return request.name

    def _record(self, job_id: str) -> dict[str, Any]:
        path = self.job_dir(job_id) / RECORD
        if not path.is_file():
            known = ", ".join(sorted(p.parent.name for p in self.root.glob(f"*/{RECORD}")))
            raise JobError(f"no local job {job_id!r}; jobs: {known or 'none'}")
        return json.loads(path.read_text())

    def _status(self, job_id: str) -> JobStatus:
        record = self._record(job_id)
        folder = self.job_dir(job_id)
        code = _read_int(folder / EXIT)
        failure = _read_text(folder / FAILURE)
        state: State
        metrics: dict[str, float] = {}
        if code is None:
            pid = _read_int(folder / PID)
            if pid is not None and pid_alive(pid, SUPERVISOR.encode()):
                state = "Running"
            elif pid is None:
                state = "Pending"
            else:
                state, failure = "Failed", "the job's process ended without an exit code"
        elif code == 0:
            state = "Completed"
            report = folder / "output" / "metrics.json"
            if report.is_file():
                metrics = json.loads(report.read_text()).get("metrics", {})
        elif (folder / STOPPED).exists():
            state = "Stopped"
        else:
            state = "Failed"
        return JobStatus(
            backend=self.name,
            id=job_id,
            state=state,
            reason=exit_reason(code, failure) if code is not None else failure,
            exit_code=code,
            channels=record["channels"],
            hyperparameters=record["hyperparameters"],
            image=record["image"],
            artifact_uri=record["artifact_uri"] if state == "Completed" else None,
            metrics=metrics,
            labels=record["labels"],
            created=record["created"],
        )

    def _read_logs(self, job_id: str, cursor: Any) -> tuple[list[str], Any]:
        self._record(job_id)
        path = self.job_dir(job_id) / LOG
        offset = cursor or 0
        if not path.is_file():
            return [], offset
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1  # a half-written line waits for the next read
        text = data[:complete].decode(errors="replace")
        return text.splitlines(), offset + complete

    def _cancel(self, job_id: str) -> None:
        status = self._status(job_id)
        if status.terminal:
            return
        folder = self.job_dir(job_id)
        (folder / STOPPED).touch()
        pid = _read_int(folder / PID)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)  # the supervisor forwards it to training
            except ProcessLookupError:
                pass

    def _list(self) -> list[JobStatus]:
        out = []
        for record in sorted(self.root.glob(f"*/{RECORD}")):
            status = self._status(record.parent.name)
            if status.labels.get(LABEL_STACK) == self.descriptor.stack:
                out.append(status)
        return out


# --- the supervisor ---------------------------------------------------------------------------


def job_environment(folder: Path, record: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
    channels = {k: file_path(v) for k, v in record["channels"].items()}
    env = dict(base)
    env |= container_env(
        channels=channels,
        model_dir=str(folder / "model"),
        output_dir=str(folder / "output"),
        checkpoint_dir=str(folder / "checkpoints"),
        failure_file=str(folder / FAILURE),
        hyperparameters=record["hyperparameters"],
    )
    return env


def supervise(folder: Path) -> int:
    """Run training for the job in `folder`; record its exit code. SIGTERM is forwarded."""
    record = json.loads((folder / RECORD).read_text())
    for sub in ("model", "output", "checkpoints"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    launcher = shlex.split(os.environ.get(LAUNCHER_ENV) or shlex.quote(sys.executable))
    env = job_environment(folder, record, dict(os.environ))
    pending: list[int] = []  # a signal that came before training started
    holder: list[subprocess.Popen] = []

    def forward(signum: int, _frame: Any) -> None:
        if holder:
            holder[0].send_signal(signum)
        else:
            pending.append(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # If the supervisor itself is killed, training gets SIGTERM: it checkpoints and stops.
    child = subprocess.Popen(
        [*launcher, "-m", "workloads.train"], env=env, preexec_fn=die_with_parent()
    )
    holder.append(child)
    for signum in pending:
        child.send_signal(signum)
    code = child.wait()
    if code < 0:  # killed by a signal: report it the way a container runtime does
        code = 128 - code
    _write(folder / EXIT, str(code))
    return code


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    return int(text) if text and text.lstrip("-").isdigit() else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "run":
        print("usage: python -m workloads.jobs.local run JOB_DIR", file=sys.stderr)
        return 2
    return supervise(Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
