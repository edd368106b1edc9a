"""The local environment: a stack's platform on one machine.

The same spec that `pulumi up` deploys becomes, under `<state>/<stack>/` (`.mlinfra/` or
`$MLINFRA_STATE_DIR`):

    platform.json          the platform descriptor (backend "local"), written atomically
    buckets/<purpose>/     the raw, features, artifacts and logs "buckets"
    online-store.db        the online feature store (an embedded database)
    registry/              the local model registry
    endpoints/<name>.json  each endpoint's process: pid, port, model version served
    endpoints/<name>.log   its server's log

Every endpoint is an inference-server process (`python -m workloads.serve`) on a loopback
port, detached from the CLI, serving the newest approved version of its model group.
`up` is a reconcile loop: it changes only what differs from the spec and the registry, so
running it twice changes nothing, and it restarts an endpoint whose process died.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

import httpx
from pydantic import BaseModel, ValidationError

from components.spec import PlatformSpec, load_stack
from workloads.local.process import exclusive
from workloads.platform import (
    ApprovalGate,
    Buckets,
    Cluster,
    EndpointRef,
    FeatureGroupRef,
    FeatureStore,
    LocalState,
    ModelGroupRef,
    NodePoolRef,
    PlatformDescriptor,
    Registry,
    first_problem,
    load_descriptor,
)
from workloads.storage import CorruptStoreError, StorageError, atomic_write

STATE_ENV = "MLINFRA_STATE_DIR"
DEFAULT_STATE_DIR = ".mlinfra"
HOST = "127.0.0.1"
FIRST_PORT = 8080  # endpoint i prefers 8080 + i, like SageMaker's serving port
START_TIMEOUT_S = 120.0  # loading torch and the model on a busy 2-core machine
STOP_TIMEOUT_S = 35.0  # the server drains in-flight requests for up to 30 s


class LocalEnvError(RuntimeError):
    """Something the local environment cannot do; the message says what and why."""


# --- where things live ------------------------------------------------------------------------


def state_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR).absolute()


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @classmethod
    def of(cls, stack: str, state: str | Path | None = None) -> StackPaths:
        return cls(state_dir(state) / stack)

    @property
    def descriptor(self) -> Path:
        return self.root / "platform.json"

    @property
    def buckets(self) -> Path:
        return self.root / "buckets"

    @property
    def online_store(self) -> Path:
        return self.root / "online-store.db"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def endpoints(self) -> Path:
        return self.root / "endpoints"

    @property
    def pipeline(self) -> Path:
        return self.root / "pipeline"

    def endpoint_state(self, name: str) -> Path:
        return self.endpoints / f"{name}.json"

    def endpoint_log(self, name: str) -> Path:
        return self.endpoints / f"{name}.log"


def file_uri(path: Path) -> str:
    return path.absolute().as_uri()


def uri_path(uri: str) -> Path:
    """`file:///abs/path` -> Path; a plain path passes through."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    raise LocalEnvError(f"{uri} is not a local file URI")


@contextlib.contextmanager
def locked(paths: StackPaths) -> Iterator[None]:
    """One `up`/`down`/rollout at a time per stack (the pipeline and `up` may race)."""
    with exclusive(paths.root / ".lock", wait=True, what=f"stack {paths.root.name}"):
        yield


def read_descriptor(paths: StackPaths) -> PlatformDescriptor:
    """The stack's descriptor; a missing or unreadable one is an error saying what to do."""
    stack = paths.root.name
    if not paths.descriptor.is_file():
        raise LocalEnvError(
            f"stack {stack} is not up ({paths.descriptor} is missing): "
            f"run `mlinfra up --stack {stack}` first"
        )
    try:
        return load_descriptor(paths.descriptor)
    except (ValidationError, ValueError) as exc:
        raise CorruptStoreError(
            f"{paths.descriptor} is not a readable platform descriptor "
            f"({first_problem(exc)}): `mlinfra up --stack {stack}` writes it again from the spec"
        ) from None
    except OSError as exc:
        raise StorageError(f"{paths.descriptor} cannot be read: {exc.strerror}") from None


# --- the descriptor ---------------------------------------------------------------------------


def local_device() -> tuple[str | None, int]:
    """The GPU model and count a GPU node pool maps to here: CUDA if present, else none."""
    import torch  # imported late: only `up` needs it

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), torch.cuda.device_count()
    return None, 0


def build_descriptor(
    spec: PlatformSpec, stack: str, paths: StackPaths, ports: dict[str, int]
) -> PlatformDescriptor:
    """The same document the `platform` stack output holds, pointing at local places."""
    buckets = {p: file_uri(paths.buckets / p) for p in ("raw", "features", "artifacts", "logs")}
    groups = {
        fg.name: FeatureGroupRef(
            name=f"{spec.prefix}-{fg.name}",
            record_identifier=fg.record_identifier,
            event_time=fg.event_time,
            features=fg.feature_types,
            online=fg.online,
            offline=fg.offline,
            offline_uri=f"{buckets['features']}/offline/{fg.name}" if fg.offline else None,
        )
        for fg in spec.feature_groups
    }
    model_groups = {
        g.name: ModelGroupRef(
            name=f"{spec.prefix}-{g.name}",
            gate=ApprovalGate(**g.approval_gate.model_dump()) if g.approval_gate else None,
        )
        for g in spec.model_registry.model_groups
    }
    endpoints = {
        ep.name: EndpointRef(
            name=f"{spec.prefix}-{ep.name}",
            kind="local",
            model_group=ep.model_group,
            url=f"http://{HOST}:{ports[ep.name]}",
            model_version=ep.model_version,
            version_owner="deploy" if ep.model_version is None else "stack",
        )
        for ep in spec.endpoints
    }
    gpu, gpu_count = local_device()
    pools = {
        "system": NodePoolRef(
            name="system",
            node_group="local",
            instance_types=[spec.cluster.system_pool.instance_type],
            gpu=None,
            gpus_per_node=0,
        )
    }
    for pool in spec.cluster.gpu_pools:
        pools[pool.name] = NodePoolRef(
            name=pool.name,
            node_group="local",
            instance_types=pool.instance_types,
            gpu=gpu,
            gpus_per_node=gpu_count,
        )
    return PlatformDescriptor(
        backend="local",
        stack=stack,
        team=spec.team,
        environment=spec.environment,
        region=spec.region,
        buckets=Buckets(**buckets),
        feature_store=FeatureStore(database=None, groups=groups),
        registry=Registry(
            model_groups=model_groups,
            repositories={
                "train": f"local/{spec.prefix}-train",
                "serve": f"local/{spec.prefix}-serve",
            },
        ),
        endpoints=endpoints,
        cluster=Cluster(
            name="local",
            namespace=spec.team,
            service_account=f"{spec.team}-workloads",
            node_pools=pools,
        ),
        local=LocalState(
            root=str(paths.root),
            online_store=str(paths.online_store),
            registry=str(paths.registry),
        ),
    )


# --- endpoint processes -----------------------------------------------------------------------


class EndpointProcess(BaseModel):
    """What `up` started for one endpoint, saved next to its log."""

    name: str
    port: int
    pid: int | None = None
    model_version: int | None = None
    model_dir: str | None = None
    stopped: bool = False  # by `down`; `up` starts it again


EndpointState = Literal["serving", "waiting for a model", "stopped", "dead", "not answering"]


@dataclass(frozen=True)
class EndpointStatus:
    name: str
    url: str
    state: EndpointState
    pid: int | None
    model_version: int | None
    log: Path
    answers_ping: bool | None = None  # None: no process to ask


def read_process(paths: StackPaths, name: str) -> EndpointProcess | None:
    """The endpoint's record; None if there is none; `CorruptStoreError` if unreadable."""
    path = paths.endpoint_state(name)
    if not path.is_file():
        return None
    try:
        return EndpointProcess.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise StorageError(f"{path} cannot be read: {exc.strerror}") from None
    except ValidationError as exc:
        stack = paths.root.name
        raise CorruptStoreError(
            f"{path} is not a readable endpoint record ({first_problem(exc)}): "
            f"`mlinfra down --stack {stack}` stops the endpoint's server and writes it "
            f"again; then `mlinfra up --stack {stack}`"
        ) from None


def write_process(paths: StackPaths, proc: EndpointProcess) -> None:
    atomic_write(paths.endpoint_state(proc.name), proc.model_dump_json(indent=2))


def stack_servers(paths: StackPaths) -> list[int]:
    """Pids of the inference servers started for this stack, found by their environment
    (`MLINFRA_PLATFORM` names the stack's descriptor): how `down` finds a server whose
    record is lost. Empty where there is no procfs."""
    marker = f"MLINFRA_PLATFORM={paths.descriptor}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"workloads.serve" not in (proc / "cmdline").read_bytes():
                continue
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return [pid for pid in found if pid_alive(pid)]


def pid_alive(pid: int | None, command: bytes = b"workloads.serve") -> bool:
    """True if `pid` runs `command` (by default an inference server; a zombie or a recycled
    pid does not count)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child, and it has exited
            return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs (macOS): signal 0 is the best we have
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and command in cmdline


def ping(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/ping", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: SO_REUSEADDR, so a socket in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def stop_process(pid: int | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group (it drains), SIGKILL if it does not go."""
    if not pid_alive(pid):
        return
    assert pid is not None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    raise LocalEnvError(f"process {pid} did not stop")


def capture_env(paths: StackPaths, spec: PlatformSpec, name: str, version: int) -> dict[str, str]:
    """The server's data-capture settings when the endpoint's `dataCapture` is on: the
    SageMaker layout under the logs bucket's `data-capture/` folder, the spec's percent."""
    ep = next(e for e in spec.endpoints if e.name == name)
    if not ep.data_capture.enabled:
        return {}
    from workloads.monitoring.layout import CAPTURE_FOLDER
    from workloads.serving import capture

    return {
        capture.ENV_DIR: str(paths.buckets / "logs" / CAPTURE_FOLDER),
        capture.ENV_PERCENT: str(ep.data_capture.sampling_percent),
        capture.ENV_ENDPOINT: name,
        capture.ENV_MODEL_VERSION: str(version),
    }


def start_server(
    paths: StackPaths, record: EndpointProcess, extra_env: dict[str, str] | None = None
) -> EndpointProcess:
    """Start a detached inference server and wait until it answers /ping.

    Its pid is saved as soon as it exists, so an interrupted `up` never leaves a server
    that the next `up` or `down` does not know about.
    """
    name, port, model_dir = record.name, record.port, record.model_dir
    assert model_dir is not None
    log_path = paths.endpoint_log(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "workloads.serve", "--model-dir", str(model_dir)]
    cmd += ["--port", str(port), "--host", HOST]
    env = dict(os.environ)
    env["MLINFRA_PLATFORM"] = str(paths.descriptor)
    # One worker with one torch thread: the local machine is shared with training.
    env.setdefault("SAGEMAKER_MODEL_SERVER_WORKERS", "1")
    env.setdefault("MLINFRA_SERVE_THREADS", "1")
    env.update(extra_env or {})
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # detached: outlives the CLI, stopped as a group
        )
    record = record.model_copy(update={"pid": proc.pid, "stopped": False})
    write_process(paths, record)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            write_process(paths, record.model_copy(update={"pid": None}))
            raise LocalEnvError(
                f"endpoint {name}: the server exited with code {proc.returncode}; "
                f"last lines of {log_path}:\n{_tail(log_path)}"
            )
        if ping(url, timeout=1.0):
            return record
        time.sleep(0.2)
    stop_process(proc.pid)
    write_process(paths, record.model_copy(update={"pid": None}))
    raise LocalEnvError(
        f"endpoint {name}: no answer on {url}/ping after {START_TIMEOUT_S:.0f} s; "
        f"see {log_path}:\n{_tail(log_path)}"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- up / down / status -----------------------------------------------------------------------


@dataclass
class UpResult:
    descriptor: PlatformDescriptor
    paths: StackPaths
    messages: list[str]
    endpoints: list[EndpointStatus]


def _choose_ports(
    spec: PlatformSpec, paths: StackPaths, requested: dict[str, int], messages: list[str]
) -> dict[str, int]:
    """Keep each endpoint's port across runs; move it only if something else took it."""
    names = [ep.name for ep in spec.endpoints]
    ports: dict[str, int] = {}
    for i, name in enumerate(names):
        proc = read_process(paths, name)
        ours = proc is not None and pid_alive(proc.pid)
        if name in requested:
            port = requested[name]
            mine = ours and proc is not None and proc.port == port
            if not mine and (not port_free(port) or port in ports.values()):
                raise LocalEnvError(
                    f"port {port} requested for endpoint {name} is already in use on {HOST}; "
                    "choose another with --port NAME=PORT, or leave it out to pick a free one"
                )
            ports[name] = port
            continue
        preferred = proc.port if proc else FIRST_PORT + i
        if (ours or port_free(preferred)) and preferred not in ports.values():
            ports[name] = preferred
            continue
        port = free_port()
        while port in ports.values():
            port = free_port()
        messages.append(f"endpoint {name}: port {preferred} is in use, using {port} instead")
        ports[name] = port
    return ports


def _check_requested_ports(spec: PlatformSpec, requested: dict[str, int], fresh: bool) -> None:
    """Bad `--port` values fail before anything is created."""
    names = [ep.name for ep in spec.endpoints]
    unknown = sorted(set(requested) - set(names))
    if unknown:
        raise LocalEnvError(
            f"--port names unknown endpoint(s) {unknown}; endpoints: {', '.join(names) or 'none'}"
        )
    for name, port in requested.items():
        if not 1 <= port <= 65535:
            raise LocalEnvError(f"--port {name}={port}: a port is 1-65535")
        if fresh and not port_free(port):  # nothing of ours can hold it yet
            raise LocalEnvError(
                f"port {port} requested for endpoint {name} is already in use on {HOST}; "
                "choose another with --port NAME=PORT, or leave it out to pick a free one"
            )
    if len(set(requested.values())) < len(requested):
        raise LocalEnvError(f"--port: two endpoints cannot share a port ({requested})")


def up(
    stack: str = "local",
    state: str | Path | None = None,
    *,
    ports: dict[str, int] | None = None,
    stacks_dir: str | Path = "stacks",
) -> UpResult:
    """Stand up (or reconcile) the local environment of a stack; idempotent."""
    spec = load_stack(stack, stacks_dir)  # a bad spec raises SpecError before anything exists
    paths = StackPaths.of(stack, state)
    messages: list[str] = []
    _check_requested_ports(spec, ports or {}, fresh=not paths.root.exists())
    with locked(paths):
        chosen = _choose_ports(spec, paths, ports or {}, messages)
        descriptor = build_descriptor(spec, stack, paths, chosen)
        for purpose in ("raw", "features", "artifacts", "logs"):
            (paths.buckets / purpose).mkdir(parents=True, exist_ok=True)
        for group in descriptor.feature_store.groups.values():
            if group.offline_uri:
                uri_path(group.offline_uri).mkdir(parents=True, exist_ok=True)
        paths.registry.mkdir(parents=True, exist_ok=True)
        paths.endpoints.mkdir(parents=True, exist_ok=True)
        if (
            not paths.descriptor.is_file()
            or paths.descriptor.read_bytes() != descriptor.to_json().encode()
        ):
            descriptor.write(paths.descriptor)
        _init_stores(descriptor)
        statuses = [
            _reconcile_endpoint(spec, descriptor, paths, ep.name, chosen[ep.name], messages)
            for ep in spec.endpoints
        ]
        _forget_removed_endpoints(spec, paths, messages)
    return UpResult(descriptor, paths, messages, statuses)


def _init_stores(descriptor: PlatformDescriptor) -> None:
    """Create the feature store's tables and the registry's groups (both idempotent)."""
    from workloads.features.store import feature_store_from_descriptor
    from workloads.registry.store import registry_from_descriptor

    feature_store_from_descriptor(descriptor)  # the local backends create their stores
    registry_from_descriptor(descriptor)


def served_version(spec: PlatformSpec, descriptor: PlatformDescriptor, endpoint: str):
    """The model version an endpoint should serve: its pinned one, else the newest approved."""
    from workloads.registry.store import registry_from_descriptor

    ep = next(e for e in spec.endpoints if e.name == endpoint)
    registry = registry_from_descriptor(descriptor)
    if ep.model_version is not None:  # pinned: served only once it is approved
        try:
            pinned = registry.get(ep.model_group, ep.model_version)
        except (KeyError, ValueError):
            return None
        return pinned if pinned.status == "Approved" else None
    return registry.latest_approved(ep.model_group)


def _reconcile_endpoint(
    spec: PlatformSpec,
    descriptor: PlatformDescriptor,
    paths: StackPaths,
    name: str,
    port: int,
    messages: list[str],
) -> EndpointStatus:
    url, log = f"http://{HOST}:{port}", paths.endpoint_log(name)
    proc = read_process(paths, name) or EndpointProcess(name=name, port=port)
    version = served_version(spec, descriptor, name)
    alive = pid_alive(proc.pid)
    if version is None:
        if alive:  # its model version was removed from the registry
            stop_process(proc.pid)
            messages.append(f"endpoint {name}: stopped, no approved model to serve")
        proc = EndpointProcess(name=name, port=port)
        write_process(paths, proc)
        return EndpointStatus(name, url, "waiting for a model", None, None, log)
    healthy = alive and proc.port == port and ping(url)
    if healthy and proc.model_version == version.version:
        return EndpointStatus(name, url, "serving", proc.pid, proc.model_version, log, True)
    if proc.pid and not alive:
        messages.append(f"endpoint {name}: process {proc.pid} had died; restarting it")
    elif alive and proc.port != port:
        messages.append(f"endpoint {name}: moving from port {proc.port} to {port}")
    elif alive and not healthy:
        messages.append(f"endpoint {name}: process {proc.pid} did not answer /ping; restarting it")
    elif alive:
        messages.append(
            f"endpoint {name}: rolling out {version.group} v{version.version} "
            f"(was v{proc.model_version})"
        )
    stop_process(proc.pid if alive else None)
    model_dir = uri_path(version.model_uri)
    proc = start_server(
        paths,
        EndpointProcess(
            name=name, port=port, model_version=version.version, model_dir=str(model_dir)
        ),
        capture_env(paths, spec, name, version.version),
    )
    messages.append(f"endpoint {name}: serving {version.group} v{version.version} at {url}")
    return EndpointStatus(name, url, "serving", proc.pid, version.version, log, True)


def _forget_removed_endpoints(spec: PlatformSpec, paths: StackPaths, messages: list[str]) -> None:
    """An endpoint deleted from the spec: stop its process, as `pulumi up` would delete it."""
    declared = {ep.name for ep in spec.endpoints}
    for state_file in sorted(paths.endpoints.glob("*.json")):
        if state_file.stem in declared:
            continue
        proc = read_process(paths, state_file.stem)
        stop_process(proc.pid if proc else None)
        state_file.unlink(missing_ok=True)
        messages.append(f"endpoint {state_file.stem}: removed from the spec, stopped")


def rollout(
    stack: str, state: str | Path | None = None, *, stacks_dir: str | Path = "stacks"
) -> UpResult:
    """Bring every endpoint to the version it should serve (after an approval): a restart
    on the same port, so the URL in the descriptor stays valid."""
    return up(stack, state, stacks_dir=stacks_dir)


def status(stack: str = "local", state: str | Path | None = None) -> list[EndpointStatus]:
    """Each endpoint's state, from its process and a /ping; reads no spec (works when broken)."""
    paths = StackPaths.of(stack, state)
    if not paths.descriptor.is_file():
        return []
    descriptor = read_descriptor(paths)
    out = []
    for name, ref in descriptor.endpoints.items():
        proc = read_process(paths, name)
        url = ref.url or ""
        log = paths.endpoint_log(name)
        if proc is None or proc.pid is None:
            stopped = proc is not None and proc.stopped
            state_: EndpointState = "stopped" if stopped else "waiting for a model"
            out.append(EndpointStatus(name, url, state_, None, proc and proc.model_version, log))
            continue
        alive = pid_alive(proc.pid)
        answers = alive and ping(url)
        state_ = "serving" if answers else "not answering" if alive else "dead"
        out.append(EndpointStatus(name, url, state_, proc.pid, proc.model_version, log, answers))
    return out


def down(
    stack: str = "local", state: str | Path | None = None, *, purge: bool = False
) -> list[str]:
    """Stop the endpoint processes; with `purge`, delete the stack's whole state folder."""
    paths = StackPaths.of(stack, state)
    messages: list[str] = []
    if not paths.root.exists():
        return [f"nothing to stop: {paths.root} does not exist"]
    with locked(paths):
        try:
            _stop_endpoints(paths, messages)
        except (LocalEnvError, StorageError) as exc:
            if not purge:
                raise
            messages.append(f"{exc} (purging anyway)")  # --purge always works
    if purge:
        for pid in stack_servers(paths):  # nothing of the stack outlives its state
            with contextlib.suppress(LocalEnvError):
                stop_process(pid, timeout=5.0)
        shutil.rmtree(paths.root)
        messages.append(f"purged {paths.root}")
    elif not messages:
        messages.append("no endpoint process was running")
    return messages


def _stop_endpoints(paths: StackPaths, messages: list[str]) -> None:
    """Stop each recorded server; an unreadable record is written again as stopped, and a
    server of the stack that no record names is stopped too."""
    for state_file in sorted(paths.endpoints.glob("*.json")):
        name = state_file.stem
        try:
            proc = read_process(paths, name)
        except CorruptStoreError as exc:
            messages.append(f"endpoint {name}: {exc}")
            _rewrite_lost_record(paths, name, messages)
            continue
        if proc is None or proc.pid is None:
            continue
        if pid_alive(proc.pid):
            stop_process(proc.pid)
            messages.append(f"endpoint {proc.name}: stopped process {proc.pid}")
        write_process(paths, proc.model_copy(update={"pid": None, "stopped": True}))
    for pid in stack_servers(paths):
        stop_process(pid)
        messages.append(f"stopped process {pid}, a server of this stack that no record named")


def _rewrite_lost_record(paths: StackPaths, name: str, messages: list[str]) -> None:
    """A fresh stopped record on the port the descriptor gives, else none at all."""
    try:
        url = read_descriptor(paths).endpoints[name].url or ""
        port = urlparse(url).port
    except (LocalEnvError, StorageError, KeyError, ValueError):
        port = None
    if port is None:
        paths.endpoint_state(name).unlink(missing_ok=True)
        messages.append(f"endpoint {name}: removed its unreadable record")
        return
    write_process(paths, EndpointProcess(name=name, port=port, stopped=True))
    messages.append(f"endpoint {name}: wrote its record again (stopped, port {port})")
