"""One job API over every backend: submit -> handle, status, logs, cancel, list, wait.

A backend subclasses `JobBackend` and implements the `_`-prefixed methods; the public
methods check and stamp first (what the backend `supports`, the request against the
platform descriptor, the labels every job carries), so no backend can skip a check.
Backends register by name (`@register`); `backend("nope", ...)` names the valid ones.

Status is always asked of the backend (a SageMaker job, a Kubernetes Job, a local
process's state folder); nothing here keeps a copy that could drift. `wait` and the log
tailer are written once, on top of each backend's `_read_logs(job_id, cursor)`.
"""

from __future__ import annotations

import importlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

from workloads.platform import PlatformDescriptor

State = Literal["Pending", "Running", "Completed", "Failed", "Stopped"]
TERMINAL: frozenset[str] = frozenset({"Completed", "Failed", "Stopped"})

# What a request may need from a backend; each backend declares what it supports.
MULTI_NODE, GPU, SPOT = "multi-node", "gpu", "spot"

LABEL_PREFIX = "mlinfra.io/"
LABEL_TEAM = f"{LABEL_PREFIX}team"
LABEL_STACK = f"{LABEL_PREFIX}stack"
LABEL_JOB = f"{LABEL_PREFIX}job"
LABEL_MODEL_GROUP = f"{LABEL_PREFIX}model-group"
LABEL_KIND = f"{LABEL_PREFIX}kind"

_JOB_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_JOB_NAME = 40  # leaves room for the SageMaker timestamp and Kubernetes pod suffixes
_CHANNEL = re.compile(r"^[A-Za-z0-9.\-_]{1,64}$")  # SageMaker's ChannelName


class JobError(ValueError):
    """Bad input or a job that cannot be found; the message names what and what is allowed."""


class UnsupportedError(JobError):
    """The request needs something the chosen backend does not do."""


def missing_extra(backend: str, extra: str, what: str) -> JobError:
    """The error for a backend whose client library is not installed."""
    return JobError(f"the {backend} backend needs {what}: pip install 'mlinfra[{extra}]'")


# --- exit codes -------------------------------------------------------------------------------

EXIT_REASONS: dict[int, str] = {
    143: "stopped by SIGTERM after writing a checkpoint (spot reclaim, drain or stop): "
    "resumable, a restart continues from the checkpoint",
    137: "killed by SIGKILL: most often out of memory (raise the memory limit or use a "
    "larger instance type)",
    130: "interrupted by SIGINT (Ctrl-C): no model written",
    1: "training failed",
}


def exit_reason(code: int | None, failure: str | None = None) -> str | None:
    """A sentence for a container's exit code; `failure` is the failure file's text."""
    failure = (failure or "").strip() or None
    if code is None or code == 0:
        return failure
    text = f"{EXIT_REASONS.get(code, 'exited')} (exit {code})"
    return f"{text}: {failure}" if failure else text


# --- requests and answers ---------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """A training job as the user asks for it, backend-neutral."""

    name: str
    channels: Mapping[str, str]  # channel name -> URI in the team's buckets ("train" required)
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    image_tag: str | None = None  # a tag of the team's training repository (immutable)
    pool: str | None = None  # a node pool of the stack's cluster
    nodes: int = 1
    instance_type: str | None = None
    spot: bool = False
    model_group: str | None = None  # the spec's model group name the artifact will join
    max_run_seconds: int = 24 * 3600
    max_wait_seconds: int | None = None  # spot: how long to wait for capacity, in all


@dataclass(frozen=True)
class JobHandle:
    backend: str
    id: str


@dataclass
class JobStatus:
    """A job as its backend reports it now."""

    backend: str
    id: str
    state: State
    reason: str | None = None
    exit_code: int | None = None
    channels: dict[str, str] = field(default_factory=dict)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    artifact_uri: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    created: str | None = None  # ISO 8601, UTC

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def model_group(self) -> str | None:
        return self.labels.get(LABEL_MODEL_GROUP)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


# --- the base class ---------------------------------------------------------------------------


class JobBackend(ABC):
    """Submit, watch, read and stop training jobs on one backend."""

    name: ClassVar[str]
    supports: ClassVar[frozenset[str]] = frozenset()
    poll_seconds: float = 10.0

    def __init__(self, descriptor: PlatformDescriptor):
        self.descriptor = descriptor

    # public: check and stamp, then call the backend ---------------------------------------

    def submit(self, request: JobRequest) -> JobHandle:
        self.check(request)
        return JobHandle(self.name, self._submit(request, self.labels(request)))

    def check(self, request: JobRequest) -> None:
        """Everything that can be said before anything is created; raises JobError."""
        missing = sorted(needs(self.descriptor, request) - self.supports)
        if missing:
            raise UnsupportedError(
                f"the {self.name} backend does not support {', '.join(missing)} "
                f"(it supports: {', '.join(sorted(self.supports)) or 'none of these'})"
            )
        validate_request(self.descriptor, request)
        self._check(request)

    def labels(self, request: JobRequest) -> dict[str, str]:
        """The labels stamped on every job: team, stack, job name, model group."""
        labels = {
            LABEL_TEAM: self.descriptor.team,
            LABEL_STACK: self.descriptor.stack,
            LABEL_JOB: request.name,
            LABEL_KIND: "training",
        }
        if request.model_group:
            labels[LABEL_MODEL_GROUP] = request.model_group
        return labels

    def status(self, job_id: str) -> JobStatus:
        return self._status(job_id)

    def cancel(self, job_id: str) -> None:
        self._cancel(job_id)

    def list(self) -> list[JobStatus]:
        """The stack's jobs on this backend, newest first."""
        jobs = [j for j in self._list() if j.labels.get(LABEL_STACK) == self.descriptor.stack]
        return sorted(jobs, key=lambda j: j.created or "", reverse=True)

    def read_logs(self, job_id: str, cursor: Any = None) -> tuple[list[str], Any]:
        """The log lines since `cursor` (None: from the start), and the next cursor: for a
        caller that follows several jobs at once (the tuning driver)."""
        return self._read_logs(job_id, cursor)

    def logs(
        self, job_id: str, follow: bool = False, timeout: float | None = None
    ) -> Iterator[str]:
        """The job's log lines; with `follow`, until the job has ended (the one tailer)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor: Any = None
        while True:
            lines, cursor = self._read_logs(job_id, cursor)
            yield from lines
            if not follow:
                return
            if self.status(job_id).terminal:
                lines, cursor = self._read_logs(job_id, cursor)  # what came in meanwhile
                yield from lines
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
            if not lines:
                time.sleep(self.poll_seconds)

    def wait(
        self,
        job_id: str,
        on_line: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> JobStatus:
        """Stream the log to `on_line` until the job ends; return its final status."""
        for line in self.logs(job_id, follow=True, timeout=timeout):
            if on_line is not None:
                on_line(line)
        return self.status(job_id)

    # the backend's part ---------------------------------------------------------------------

    def _check(self, request: JobRequest) -> None:  # noqa: B027 - optional hook
        """Backend checks that need the backend (an image tag in ECR, a name in use)."""

    @abstractmethod
    def _submit(self, request: JobRequest, labels: dict[str, str]) -> str: ...

    @abstractmethod
    def _status(self, job_id: str) -> JobStatus: ...

    @abstractmethod
    def _read_logs(self, job_id: str, cursor: Any) -> tuple[list[str], Any]:
        """New log lines since `cursor` (None: from the start), and the next cursor."""

    @abstractmethod
    def _cancel(self, job_id: str) -> None: ...

    @abstractmethod
    def _list(self) -> list[JobStatus]: ...


# --- checks shared by every backend -----------------------------------------------------------


def gpu_pools(descriptor: PlatformDescriptor) -> list[str]:
    cluster = descriptor.cluster
    if cluster is None:
        return []
    return sorted(n for n, p in cluster.node_pools.items() if p.gpus_per_node > 0 or p.gpu)


def needs(descriptor: PlatformDescriptor, request: JobRequest) -> set[str]:
    out: set[str] = set()
    if request.nodes > 1:
        out.add(MULTI_NODE)
    if request.spot:
        out.add(SPOT)
    if request.pool and request.pool in gpu_pools(descriptor):
        out.add(GPU)
    return out


def validate_request(descriptor: PlatformDescriptor, request: JobRequest) -> None:
    """The request against the platform: names, pool, model group, channel URIs."""
    problems: list[str] = []
    if not _JOB_NAME.match(request.name) or len(request.name) > MAX_JOB_NAME:
        problems.append(
            f"job name {request.name!r} must be lowercase letters, digits and '-', start "
            f"with a letter, at most {MAX_JOB_NAME} characters"
        )
    if request.nodes < 1:
        problems.append(f"--nodes must be at least 1, got {request.nodes}")
    if request.pool is not None:
        cluster = descriptor.cluster
        if cluster is None:
            problems.append(
                f"pool {request.pool!r} asked, but stack {descriptor.stack!r} has no "
                "Kubernetes cluster: run on SageMaker with --instance-type instead"
            )
        elif request.pool not in cluster.node_pools:
            problems.append(
                f"unknown pool {request.pool!r}; stack {descriptor.stack!r} has: "
                f"{', '.join(sorted(cluster.node_pools)) or 'none'}"
            )
    groups = descriptor.registry.model_groups
    if request.model_group is not None and request.model_group not in groups:
        problems.append(
            f"unknown model group {request.model_group!r}; stack {descriptor.stack!r} "
            f"declares: {', '.join(sorted(groups)) or 'none'}"
        )
    if "train" not in request.channels:
        problems.append("a 'train' channel is required (--channel train=URI)")
    for channel, uri in request.channels.items():
        if not _CHANNEL.match(channel):
            problems.append(f"channel name {channel!r}: letters, digits, '.', '-', '_' only")
        elif not in_team_buckets(descriptor, uri):
            problems.append(
                f"channel {channel}={uri} is outside the team's buckets; allowed: "
                + ", ".join(bucket_roots(descriptor))
            )
    if request.image_tag is not None and not valid_tag(request.image_tag):
        problems.append(
            f"image tag {request.image_tag!r} is not a valid tag (letters, digits, '_', '.', "
            "'-'; at most 128 characters; 'latest' is refused: tags are immutable)"
        )
    if problems:
        raise JobError("; ".join(problems))
    from workloads.jobs.environment import check_hyperparameters  # imports the task

    check_hyperparameters(request.hyperparameters)


_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def valid_tag(tag: str) -> bool:
    return bool(_TAG.match(tag)) and tag != "latest"


def bucket_roots(descriptor: PlatformDescriptor) -> list[str]:
    return [uri.rstrip("/") for uri in descriptor.buckets.model_dump().values()]


def in_team_buckets(descriptor: PlatformDescriptor, uri: str) -> bool:
    """Is `uri` inside one of the team's buckets (`s3://bucket/...` or `file:///dir/...`)?"""
    target = urlparse(uri)
    if target.scheme not in ("s3", "file") or ".." in target.path.split("/"):
        return False
    for root in bucket_roots(descriptor):
        base = urlparse(root)
        if (target.scheme, target.netloc) != (base.scheme, base.netloc):
            continue
        prefix = base.path.rstrip("/")
        if target.path == prefix or target.path.startswith(prefix + "/"):
            return True
    return False


def image_uri(descriptor: PlatformDescriptor, tag: str) -> str:
    repository = descriptor.registry.repositories.get("train")
    if not repository:
        raise JobError(f"stack {descriptor.stack!r} has no 'train' image repository")
    return f"{repository}:{tag}"


# --- the registry of backends -----------------------------------------------------------------

_REGISTERED: dict[str, type[JobBackend]] = {}
# Built-in backends by name and module: imported only when asked for (they import their
# service's client lazily too).
BUILTIN = {
    "local": "workloads.jobs.local",
    "sagemaker": "workloads.jobs.sagemaker",
    "kubernetes": "workloads.jobs.kubernetes",
}


def register(cls: type[JobBackend]) -> type[JobBackend]:
    _REGISTERED[cls.name] = cls
    return cls


def backend_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTERED))


def backend_class(name: str) -> type[JobBackend]:
    if name not in _REGISTERED and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    try:
        return _REGISTERED[name]
    except KeyError:
        raise JobError(
            f"unknown job backend {name!r}; valid: {', '.join(backend_names())}"
        ) from None


def default_backend(descriptor: PlatformDescriptor) -> str:
    """`local` on the local stack, `kubernetes` when the stack has GPU pools, else
    `sagemaker`."""
    if descriptor.backend == "local":
        return "local"
    return "kubernetes" if gpu_pools(descriptor) else "sagemaker"


def get_backend(
    descriptor: PlatformDescriptor, name: str | None = None, **options: Any
) -> JobBackend:
    """The backend `name` (default: from the descriptor) for this platform."""
    name = name or default_backend(descriptor)
    cls = backend_class(name)
    if descriptor.backend == "local" and name != "local":
        raise JobError(
            f"stack {descriptor.stack!r} is a local stack: jobs run with --on local "
            f"(asked: --on {name})"
        )
    if descriptor.backend != "local" and name == "local":
        raise JobError(
            f"stack {descriptor.stack!r} runs on AWS: use --on sagemaker or --on kubernetes"
        )
    return cls(descriptor, **options)
