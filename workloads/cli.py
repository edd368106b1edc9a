"""`mlinfra`: the local environment's command line (`make up` drives it).

    mlinfra up [--stack local] [--port NAME=PORT]   stand up / reconcile the local platform
    mlinfra pipeline [--stack local] [--rows N]     the reference lifecycle, end to end
    mlinfra status [--stack local]                  what is up, where, does it answer /ping
    mlinfra predict ENDPOINT FILE                   send CSV or JSON rows, print predictions
    mlinfra down [--stack local] [--purge]          stop the endpoints (data stays)
    mlinfra tune --train DATA [--space tune.yaml]   tune hyperparameters, register the best

State lives under `--state-dir` (default `$MLINFRA_STATE_DIR` or `.mlinfra/`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from components.plan import plan_command
from components.spec import SpecError
from workloads.local import env as localenv
from workloads.local.pipeline import PipelineError, default_stack, run_pipeline
from workloads.monitoring.baseline import BaselineError
from workloads.monitoring.local import monitor_local_endpoint, newest_result
from workloads.monitoring.monitor import MonitorError
from workloads.monitoring.reader import CaptureError
from workloads.monitoring.report import summary_table
from workloads.monitoring.run import monitor_model_dir
from workloads.platform import NotDeclaredError, PlatformDescriptor
from workloads.registry.store import RegistryError, registry_from_descriptor
from workloads.storage import StorageError, file_error

app = typer.Typer(
    help="The ML platform of a stack, on this machine: up, pipeline, status, predict, down.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: messages and paths stay on one line (copyable); tables still fit the terminal.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

StackOpt = Annotated[
    str, typer.Option("--stack", "-s", help="Stack config: stacks/Pulumi.<stack>.yaml")
]
StateOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help=f"State folder (default ${localenv.STATE_ENV} or .mlinfra/)"),
]
StacksDirOpt = Annotated[
    Path, typer.Option("--stacks-dir", help="Folder of the stack configs", hidden=True)
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


# What a user can cause or fix: one line on stderr and exit 1, never a traceback.
USER_ERRORS = (
    SpecError,
    localenv.LocalEnvError,
    PipelineError,
    StorageError,
    RegistryError,
    NotDeclaredError,
    MonitorError,
    BaselineError,
    CaptureError,
)


def cloud_error(exc: BaseException) -> str | None:
    """One line for what AWS or the cluster answered (no credentials, access denied, a
    throttled or refused call, an unreachable endpoint); None for anything else. Only the
    CLI catches these: below it, a refused call is an error like any other."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "error"), error.get("Message", "")
        return f"AWS refused {exc.operation_name}: {code}: {message}".rstrip(": ")
    if isinstance(exc, BotoCoreError):  # no credentials, no region, endpoint unreachable
        return f"AWS: {exc} (check the credentials and region of the stack's account)"
    try:
        from kubernetes.client.exceptions import ApiException
    except ImportError:  # the `kubernetes` extra is not installed: nothing of it can fail
        return None
    if isinstance(exc, ApiException):
        try:
            detail = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            detail = ""
        return f"Kubernetes API: {exc.status} {exc.reason}: {detail}".rstrip(": ")
    from urllib3.exceptions import MaxRetryError

    if isinstance(exc, MaxRetryError):  # the client's way of saying: no answer from there
        return f"Kubernetes API unreachable: {exc.reason} (is the cluster endpoint reachable?)"
    return None


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # a full disk outside the atomic writes, a read-only folder
        error = file_error(exc, "a file of the stack")
        if error is None:
            raise
        raise _fail(str(error)) from None
    except Exception as exc:
        message = cloud_error(exc)
        if message is None:
            raise
        raise _fail(message) from None


def _parse_ports(values: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for value in values:
        name, sep, port = value.partition("=")
        if not sep or not name or not port.isdigit():
            raise _fail(f"--port {value!r}: expected NAME=PORT, e.g. --port churn=8080")
        ports[name] = int(port)
    return ports


def monitoring_line(paths: localenv.StackPaths, endpoint: str) -> str:
    result = newest_result(paths.buckets, endpoint)
    if result is None:
        return f"no report yet (mlinfra monitor {endpoint})"
    if "error" in result:
        return f"{result['when']}: {result['error']}"
    if not result["rows"]:
        return f"{result['when']}: no captured rows in the window"
    drift = "DATASET DRIFT" if result["dataset_drift"] else "no dataset drift"
    drifted = f" (drifted: {', '.join(result['drifted'])})" if result["drifted"] else ""
    return (
        f"{result['when']}: {result['rows']} rows, {drift}{drifted}, "
        f"{result['violations']} violations; {result['report']}"
    )


# --- tables -----------------------------------------------------------------------------------


def descriptor_table(d: PlatformDescriptor) -> Table:
    table = Table(title=f"platform {d.stack} ({d.backend}): team {d.team}, {d.environment}")
    for col in ("part", "name", "where / what"):
        table.add_column(col, overflow="fold")
    for purpose, uri in d.buckets.model_dump().items():
        table.add_row("bucket", purpose, uri)
    for name, fg in d.feature_store.groups.items():
        stores = "+".join(s for s, on in (("online", fg.online), ("offline", fg.offline)) if on)
        table.add_row("feature group", name, f"{fg.name} [{stores}] {fg.offline_uri or ''}")
    for name, mg in d.registry.model_groups.items():
        gate = (
            f"gate {mg.gate.metric} {'>=' if mg.gate.mode == 'max' else '<='} {mg.gate.threshold}"
            if mg.gate
            else "manual approval"
        )
        table.add_row("model group", name, f"{mg.name}, {gate}")
    for role, repo in d.registry.repositories.items():
        table.add_row("repository", role, repo)
    for name, ep in d.endpoints.items():
        table.add_row("endpoint", name, f"{ep.url} (model group {ep.model_group})")
    if d.cluster:
        table.add_row("cluster", d.cluster.name, f"namespace {d.cluster.namespace}, "
                      f"service account {d.cluster.service_account}")  # fmt: skip
        for name, pool in d.cluster.node_pools.items():
            device = f"{pool.gpus_per_node} x {pool.gpu}" if pool.gpu else "CPU (no GPU here)"
            table.add_row("node pool", name, f"{', '.join(pool.instance_types)} -> {device}")
    if d.local:
        table.add_row("state", "root", d.local.root)
        table.add_row("state", "online store", d.local.online_store)
        table.add_row("state", "registry", d.local.registry)
    return table


_STATE_STYLE = {
    "serving": "green",
    "waiting for a model": "yellow",
    "stopped": "dim",
    "dead": "bold red",
    "not answering": "bold red",
}


def endpoints_table(statuses: list[localenv.EndpointStatus]) -> Table:
    table = Table(title="endpoints")
    for col in ("endpoint", "url", "state", "/ping", "model version", "pid"):
        table.add_column(col, overflow="fold")
    for s in statuses:
        style = _STATE_STYLE.get(s.state, "")
        table.add_row(
            s.name,
            s.url,
            f"[{style}]{s.state}[/]",
            {None: "-", True: "200 OK", False: "no answer"}[s.answers_ping],
            "-" if s.model_version is None else f"v{s.model_version}",
            "-" if s.pid is None else str(s.pid),
        )
    return table


# --- commands ---------------------------------------------------------------------------------


@app.command()
def up(
    stack: StackOpt = "local",
    state_dir: StateOpt = None,
    port: Annotated[
        list[str] | None,
        typer.Option("--port", "-p", help="Pin an endpoint's port: NAME=PORT (repeatable)"),
    ] = None,
    stacks_dir: StacksDirOpt = Path("stacks"),
) -> None:
    """Stand up the local environment of a stack (idempotent; restarts dead endpoints)."""
    ports = _parse_ports(port or [])
    with _one_line_errors(), console.status(f"standing up stack {stack} ..."):
        result = localenv.up(stack, state_dir, ports=ports, stacks_dir=stacks_dir)
    for message in result.messages:
        console.print(f"- {escape(message)}", highlight=False)
    console.print(descriptor_table(result.descriptor))
    console.print(endpoints_table(result.endpoints))
    console.print(f"descriptor: {result.paths.descriptor}", highlight=False)
    if any(s.state == "waiting for a model" for s in result.endpoints):
        console.print(f"waiting for a model: run `mlinfra pipeline --stack {stack}`")


@app.command()
def down(
    stack: StackOpt = "local",
    state_dir: StateOpt = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the data: buckets, stores, registry")
    ] = False,
) -> None:
    """Stop the endpoint processes; the data stays unless --purge."""
    with _one_line_errors():
        messages = localenv.down(stack, state_dir, purge=purge)
    for message in messages:
        console.print(f"- {escape(message)}", highlight=False)


@app.command()
def status(stack: StackOpt = "local", state_dir: StateOpt = None) -> None:
    """What is up and where; exits 1 if an endpoint process died or does not answer."""
    paths = localenv.StackPaths.of(stack, state_dir)
    with _one_line_errors():
        descriptor = localenv.read_descriptor(paths)
        statuses = localenv.status(stack, state_dir)
        registry_table = _registry_table(descriptor)
    console.print(f"stack {stack}: state in {paths.root}", highlight=False)
    console.print(f"  descriptor    {paths.descriptor}", highlight=False)
    console.print(f"  buckets       {paths.buckets}", highlight=False)
    if descriptor.local:
        console.print(f"  online store  {descriptor.local.online_store}", highlight=False)
        console.print(f"  registry      {descriptor.local.registry}", highlight=False)
    console.print(f"  endpoint logs {paths.endpoints}", highlight=False)
    console.print(registry_table)
    console.print(endpoints_table(statuses))
    for s in statuses:
        console.print(f"  monitoring {s.name}: {monitoring_line(paths, s.name)}", highlight=False)
    bad = [s for s in statuses if s.state in ("dead", "not answering")]
    for s in bad:
        console.print(
            f"[bold red]endpoint {s.name} is {s.state}[/] (process {s.pid}); "
            f"`mlinfra up --stack {stack}` restarts it; log: {s.log}",
            highlight=False,
        )
    if bad:
        raise typer.Exit(1)


def _registry_table(descriptor: PlatformDescriptor) -> Table:
    registry = registry_from_descriptor(descriptor)
    table = Table(title="model registry")
    for col in ("model group", "versions", "newest", "newest approved"):
        table.add_column(col)
    for group in descriptor.registry.model_groups:
        versions = registry.list_versions(group)
        approved = registry.latest_approved(group)
        newest = versions[-1] if versions else None
        table.add_row(
            group,
            str(len(versions)),
            f"v{newest.version} {newest.status}" if newest else "-",
            f"v{approved.version}" if approved else "-",
        )
    return table


@app.command()
def predict(
    endpoint: Annotated[str, typer.Argument(help="Endpoint name in the stack, or a URL")],
    file: Annotated[Path, typer.Argument(help="CSV (with a header) or JSON rows")],
    stack: StackOpt = "local",
    state_dir: StateOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the endpoint's JSON answer as it is")
    ] = False,
) -> None:
    """Send the rows of FILE to an endpoint and print the predictions."""
    with _one_line_errors():
        url = _endpoint_url(endpoint, stack, state_dir)
    try:
        records = read_records(file)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    try:
        response = httpx.post(f"{url}/invocations", json={"instances": records}, timeout=60)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach {url}: {exc}; is it up? (mlinfra status)") from None
    if response.status_code != 200:
        raise _fail(f"{url} answered {response.status_code}: {response.text.strip()}")
    if as_json:
        print(response.text)  # plain stdout: for scripts and pipes
        return
    predictions = response.json()["predictions"]
    console.print(predictions_table(records, predictions))


def _endpoint_url(endpoint: str, stack: str, state_dir: Path | None) -> str:
    if endpoint.startswith(("http://", "https://")):
        return endpoint.rstrip("/")
    descriptor = localenv.read_descriptor(localenv.StackPaths.of(stack, state_dir))
    ref = descriptor.endpoints.get(endpoint)
    if ref is None or not ref.url:
        known = ", ".join(descriptor.endpoints) or "none"
        raise _fail(f"no endpoint {endpoint!r} in stack {stack}; endpoints: {known}")
    return ref.url


def read_records(file: Path) -> list[dict[str, Any]]:
    """CSV with a header, a JSON list of objects, `{"instances": [...]}`, or JSON lines."""
    if not file.exists():
        raise ValueError(f"{file}: no such file")
    if not file.is_file():
        raise ValueError(f"{file}: not a file (a folder?): give a CSV or JSON file of rows")
    if file.suffix.lower() == ".csv":
        try:
            frame = pd.read_csv(file)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file}: not a readable CSV: {exc}") from None
        # JSON has no NaN: a missing value travels as null.
        frame = frame.astype(object).where(frame.notna(), None)
        records = frame.to_dict(orient="records")
    else:
        try:
            text = file.read_text()
        except UnicodeDecodeError as exc:
            where = f"offset {exc.start}"
            raise ValueError(f"{file}: not UTF-8 text ({where}); give CSV or JSON rows") from None
        try:
            doc: Any = json.loads(text)
        except json.JSONDecodeError:
            try:
                doc = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file}: neither JSON nor JSON lines: {exc}") from None
        if isinstance(doc, dict) and "instances" in doc:
            doc = doc["instances"]
        if isinstance(doc, dict):
            doc = [doc]
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            raise ValueError(f"{file}: expected objects {{column: value}}, one per row")
        records = doc
    if not records:
        raise ValueError(f"{file}: no rows")
    return records


def predictions_table(records: list[dict], predictions: list) -> Table:
    table = Table(title=f"{len(predictions)} predictions")
    table.add_column("#", justify="right")
    table.add_column("prediction")
    table.add_column("probabilities / value")
    for i, pred in enumerate(predictions):
        if isinstance(pred, dict):
            probs = ", ".join(f"{k}: {v:.3f}" for k, v in pred.get("probabilities", {}).items())
            table.add_row(str(i), str(pred.get("label")), probs)
        else:
            table.add_row(str(i), f"{pred:.4g}" if isinstance(pred, float) else str(pred), "")
    return table


@app.command()
def approve(
    model_group: Annotated[str, typer.Argument(help="Model group name in the stack's spec")],
    version: Annotated[int, typer.Argument(help="Version to approve", min=1)],
    reason: Annotated[str, typer.Option(help="Why (kept with the version)")] = "manual",
    stack: StackOpt = "local",
    state_dir: StateOpt = None,
    stacks_dir: StacksDirOpt = Path("stacks"),
) -> None:
    """Approve a model version by hand (one the gate left pending), then roll it out."""
    paths = localenv.StackPaths.of(stack, state_dir)
    with _one_line_errors():
        registry = registry_from_descriptor(localenv.read_descriptor(paths))
        approved = registry.approve(model_group, version, reason=reason)
        result = localenv.rollout(stack, state_dir, stacks_dir=stacks_dir)
    console.print(f"{model_group} v{approved.version}: {approved.status}", highlight=False)
    for message in result.messages:
        console.print(f"- {escape(message)}", highlight=False)
    console.print(endpoints_table(result.endpoints))


@app.command()
def pipeline(
    stack: Annotated[
        str | None,
        typer.Option(
            "--stack",
            "-s",
            help="Stack config (default: local for churn, vision-dev for defects, nlp-dev for "
            "tickets)",
        ),
    ] = None,
    state_dir: StateOpt = None,
    rows: Annotated[int, typer.Option(help="Label rows of churn data", min=100)] = 10_000,
    epochs: Annotated[int, typer.Option(help="Most training epochs", min=1)] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the generated data")] = 0,
    wait: Annotated[
        bool, typer.Option("--wait", help="If another run of the stack is in progress, queue")
    ] = False,
    stacks_dir: StacksDirOpt = Path("stacks"),
    workload: Annotated[
        str, typer.Option(help="Reference workload: churn, defects (vision) or tickets (NLP)")
    ] = "churn",
) -> None:
    """The reference lifecycle: data -> features -> train -> register -> gate -> rollout."""
    with _one_line_errors():
        run_pipeline(
            stack or default_stack(workload),
            state_dir,
            rows=rows,
            epochs=epochs,
            seed=seed,
            stacks_dir=stacks_dir,
            console=console,
            wait=wait,
            workload=workload,
        )


# --- training jobs ----------------------------------------------------------------------------

jobs_app = typer.Typer(
    help="Training jobs of a stack: list, describe, logs, stop.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")

OnOpt = Annotated[
    str | None,
    typer.Option(
        "--on",
        help="Backend: local, sagemaker or kubernetes (default: local for the local stack, "
        "kubernetes when the stack has GPU pools, else sagemaker)",
    ),
]
PlatformOpt = Annotated[
    Path | None,
    typer.Option(
        "--platform",
        help="The stack's descriptor (`pulumi stack output platform --json`); default "
        "$MLINFRA_PLATFORM or the local environment's",
    ),
]


def _jobs(stack: str, state_dir: Path | None, platform: Path | None, on: str | None):
    from workloads.jobs.base import get_backend
    from workloads.jobs.run import stack_descriptor

    return get_backend(stack_descriptor(stack, state_dir, platform), on)


@contextmanager
def _rollout_errors() -> Iterator[None]:
    """deploy and batch: a refused rollout or bad input (KeyError, ValueError, RuntimeError)
    is one line and exit 1; a line `_one_line_errors` printed is not printed again (its
    typer.Exit is a RuntimeError too)."""
    try:
        with _one_line_errors():
            yield
    except typer.Exit:
        raise
    except (KeyError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from None


@contextmanager
def _job_errors() -> Iterator[None]:
    """A job error (bad input, no such job) is one line on stderr and exit 1."""
    from workloads.jobs.base import JobError

    with _one_line_errors():
        try:
            yield
        except (JobError, ValueError) as exc:
            raise _fail(str(exc)) from None


@app.command()
def train(
    channel: Annotated[
        list[str], typer.Option("--channel", help="NAME=URI in the team's buckets (train=...)")
    ],
    stack: StackOpt = "local",
    on: OnOpt = None,
    pool: Annotated[str | None, typer.Option(help="Node pool (Kubernetes)")] = None,
    nodes: Annotated[int, typer.Option(help="Nodes (torchrun across them)", min=1)] = 1,
    instance_type: Annotated[str | None, typer.Option(help="SageMaker instance type")] = None,
    spot: Annotated[bool, typer.Option("--spot/--on-demand", help="Spot capacity")] = False,
    hp: Annotated[list[str] | None, typer.Option("--hp", help="Hyperparameter KEY=VALUE")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Training image tag")] = None,
    serve_image: Annotated[
        str | None, typer.Option(help="Serving image tag to register with (default --image)")
    ] = None,
    model_group: Annotated[
        str | None, typer.Option(help="Register the artifact here and apply its gate")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Job name (default GROUP-MMDD-HHMMSS)")] = None,
    max_run: Annotated[int, typer.Option(help="Most seconds the job may run", min=1)] = 86400,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the log")] = True,
    platform: PlatformOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Start a training job and print its id; with --wait follow it, then register and gate
    the model (Ctrl-C stops the job)."""
    from workloads.jobs.run import job_request, stack_descriptor
    from workloads.jobs.run import train as run_training

    def started(backend: str, job_id: str) -> None:
        if wait:
            errors.print(f"job {job_id} started on {backend}", highlight=False)
        else:
            print(job_id)  # plain stdout: for scripts

    try:
        with _job_errors():
            request = job_request(
                name=name,
                channels=channel,
                hyperparameters=hp or [],
                model_group=model_group,
                image_tag=image,
                pool=pool,
                nodes=nodes,
                instance_type=instance_type,
                spot=spot,
                max_run_seconds=max_run,
            )
            result = run_training(
                stack_descriptor(stack, state_dir, platform),
                request,
                on=on,
                wait=wait,
                on_line=lambda line: print(line, flush=True),
                on_submit=started,
                serve_image_tag=serve_image,
            )
    except KeyboardInterrupt:
        raise _fail("interrupted: the job was stopped", 130) from None
    final = result.status
    if final is None:
        return
    console.print(f"job {final.id}: {final.state}" + (f" ({final.reason})" if final.reason else ""),
                  highlight=False)  # fmt: skip
    for metric, value in final.metrics.items():
        console.print(f"  {metric} {value:.4f}", highlight=False)
    if result.registered:
        r = result.registered
        console.print(f"registered {r.model_group} v{r.version}: {r.status} ({r.why})",
                      highlight=False)  # fmt: skip
    if final.state != "Completed":
        raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(
    stack: StackOpt = "local",
    on: OnOpt = None,
    platform: PlatformOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """The stack's training jobs on one backend, newest first."""
    with _job_errors():
        jobs = _jobs(stack, state_dir, platform, on).list()
    table = Table(title=f"training jobs of {stack}")
    for col in ("job", "state", "model group", "created", "reason"):
        table.add_column(col, overflow="fold")
    for job in jobs:
        table.add_row(job.id, job.state, job.model_group or "-", job.created or "-",
                      job.reason or "")  # fmt: skip
    console.print(table)


@jobs_app.command("describe")
def jobs_describe(
    job: Annotated[str, typer.Argument(help="Job id")],
    stack: StackOpt = "local",
    on: OnOpt = None,
    platform: PlatformOpt = None,
    state_dir: StateOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """A job as its backend reports it now."""
    from workloads.jobs.run import describe_lines

    with _job_errors():
        status = _jobs(stack, state_dir, platform, on).status(job)
    if as_json:
        print(json.dumps(status.to_dict(), indent=2))
        return
    for key, value in describe_lines(status).items():
        console.print(f"{key:<24} {escape(value)}", highlight=False)


@jobs_app.command("logs")
def jobs_logs(
    job: Annotated[str, typer.Argument(help="Job id")],
    stack: StackOpt = "local",
    on: OnOpt = None,
    platform: PlatformOpt = None,
    state_dir: StateOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Until the job ends")] = False,
) -> None:
    """The job's log (metric lines included)."""
    with _job_errors():
        for line in _jobs(stack, state_dir, platform, on).logs(job, follow=follow):
            print(line, flush=True)


@jobs_app.command("stop")
def jobs_stop(
    job: Annotated[str, typer.Argument(help="Job id")],
    stack: StackOpt = "local",
    on: OnOpt = None,
    platform: PlatformOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Stop a job (SIGTERM: it checkpoints; a Kubernetes Job is deleted)."""
    with _job_errors():
        _jobs(stack, state_dir, platform, on).cancel(job)
    console.print(f"stopped {job}", highlight=False)


@app.command()
def tune(
    train: Annotated[str, typer.Option(help="Training data (file, folder, file:// or s3://)")],
    validation: Annotated[
        str | None, typer.Option(help="Validation data (default: a held-out share)")
    ] = None,
    space: Annotated[Path, typer.Option(help="The search space (YAML)")] = Path("tune.yaml"),
    group: Annotated[
        str | None, typer.Option(help="Model group (default: the stack's only one)")
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: GROUP-SPACE)")] = None,
    deploy: Annotated[bool, typer.Option(help="Roll the best model out if approved")] = False,
    image: Annotated[
        str | None,
        typer.Option("--image", help="Training image tag (Kubernetes or SageMaker trials)"),
    ] = None,
    pool: Annotated[
        str | None, typer.Option(help="GPU pool of the trials (default: the stack's only one)")
    ] = None,
    instance_type: Annotated[
        str | None,
        typer.Option(help="SageMaker instance type of the trials (default: the stack's)"),
    ] = None,
    serve_image: Annotated[
        str | None, typer.Option(help="Serving image tag to register with (default --image)")
    ] = None,
    stack: StackOpt = "local",
    platform: PlatformOpt = None,
    state_dir: StateOpt = None,
    stacks_dir: StacksDirOpt = Path("stacks"),
) -> None:
    """Tune hyperparameters: trials under the training contract (local processes, Jobs on
    the stack's GPU pool within the namespace's quota, or SageMaker's tuner), pruned,
    resumable; the best is registered, gated and (with --deploy) rolled out."""
    try:
        from workloads.tuning import report
        from workloads.tuning.run import tune_stack
        from workloads.tuning.space import SpaceError
        from workloads.tuning.study import TuningError
    except ImportError as exc:
        raise _fail(f"{exc}: tuning needs the 'tune' extra (pip install -e '.[tune]')") from None
    from rich.live import Live

    views: dict[int, Any] = {}
    live = Live(console=console, auto_refresh=False)
    metric = ""

    def started(searched: Any, name: str) -> None:
        nonlocal metric
        metric = searched.objective.metric
        console.print(f"study {name}: {searched.budget.trials} trials, "
                      f"{searched.budget.parallel} at a time", highlight=False)  # fmt: skip
        live.start()

    def update(view: Any) -> None:
        views[view.number] = view
        live.update(report.trials_table(list(views.values()), metric), refresh=True)

    try:
        with _one_line_errors():
            outcome = tune_stack(
                space,
                train=train,
                validation=validation,
                stack=stack,
                state=state_dir,
                platform=platform,
                image=image,
                pool=pool,
                instance_type=instance_type,
                serve_image=serve_image,
                group=group,
                study=study,
                deploy=deploy,
                stacks_dir=stacks_dir,
                on_start=started,
                on_update=update,
                on_note=lambda line: console.print(f"- {escape(line)}", highlight=False),
            )
    except (SpaceError, TuningError) as exc:
        raise _fail(str(exc)) from None
    finally:
        live.stop()
    for line in report.summary_lines(outcome.result, outcome.space.objective.metric):
        console.print(escape(line), highlight=False)
    console.print(f"report: {outcome.report}", highlight=False)
    for message in outcome.messages:
        console.print(f"- {escape(message)}", highlight=False)


@app.command()
def deploy(
    endpoint: Annotated[str, typer.Argument(help="Endpoint name in the stack's spec")],
    stack: StackOpt = "local",
    version: Annotated[
        int | None, typer.Option(help="Model version (default: the newest approved)", min=1)
    ] = None,
    image_tag: Annotated[
        str | None,
        typer.Option(help="Serve with this tag of the serve image (default: the version's)"),
    ] = None,
    platform: Annotated[
        Path | None,
        typer.Option(help="The stack's descriptor (pulumi stack output platform --json)"),
    ] = None,
    state_dir: StateOpt = None,
    stacks_dir: StacksDirOpt = Path("stacks"),
) -> None:
    """Serve an approved model version on an endpoint (SageMaker, Kubernetes or local)."""
    from workloads.jobs import rollout
    from workloads.jobs.run import stack_descriptor

    with _rollout_errors():
        descriptor = stack_descriptor(stack, state_dir, platform)
        kind = descriptor.endpoints[endpoint].kind if endpoint in descriptor.endpoints else ""
        extra = {"stacks_dir": stacks_dir} if kind == "local" else {}
        with console.status(f"deploying to {endpoint} ..."):
            result = rollout.deploy(descriptor, endpoint, version, image_tag=image_tag, **extra)
    for message in result.messages:
        console.print(f"- {escape(message)}", highlight=False)
    console.print(
        f"{endpoint} ({result.physical}): v{result.version} {result.outcome}", highlight=False
    )


@app.command("batch")
def batch_command(
    input_uri: Annotated[str, typer.Argument(help="What to score: s3:// prefix (or a local file)")],
    output_uri: Annotated[str, typer.Argument(help="Where predictions go: s3:// prefix or a file")],
    model_group: Annotated[
        str, typer.Option("--model-group", "-g", help="Model group in the spec")
    ],
    stack: StackOpt = "local",
    version: Annotated[
        int | None, typer.Option(help="Model version (default: the newest approved)", min=1)
    ] = None,
    on: Annotated[
        str | None,
        typer.Option(help="sagemaker, kubernetes or local (default: the stack's backend)"),
    ] = None,
    image_tag: Annotated[str | None, typer.Option(help="Serve image tag (SageMaker)")] = None,
    platform: Annotated[
        Path | None,
        typer.Option(help="The stack's descriptor (pulumi stack output platform --json)"),
    ] = None,
    state_dir: StateOpt = None,
) -> None:
    """Score a dataset with an approved model version (SageMaker Batch Transform, or here)."""
    from workloads.jobs.batch import batch
    from workloads.jobs.run import stack_descriptor

    with _rollout_errors():
        descriptor = stack_descriptor(stack, state_dir, platform)
        with console.status(f"scoring {input_uri} ..."):
            result = batch(
                descriptor, model_group, input_uri, output_uri, version, on=on, image_tag=image_tag
            )
    for message in result.messages:
        console.print(f"- {escape(message)}", highlight=False)
    console.print(f"{model_group} v{result.version}: {result.output_uri}", highlight=False)


@app.command()
def monitor(
    endpoint: Annotated[
        str | None, typer.Argument(help="A local stack's endpoint (or use --model-dir ...)")
    ] = None,
    stack: StackOpt = "local",
    state_dir: StateOpt = None,
    model_dir: Annotated[
        Path | None,
        typer.Option("--model-dir", help="The served model's artifact (its baseline.json)"),
    ] = None,
    capture: Annotated[
        str | None,
        typer.Option("--capture", help="Captured traffic: a folder, file:// or s3:// URI"),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Folder for the report files")
    ] = None,
    ground_truth: Annotated[
        str | None, typer.Option("--ground-truth", help="Ground-truth labels (JSON Lines)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Window start: 24h, 30m or an ISO time")] = None,
    until: Annotated[
        str | None, typer.Option(help="Window end: a duration ago or an ISO time")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="One drift test for all features (e.g. psi); default: Evidently's"),
    ] = None,
    drift_share: Annotated[
        float, typer.Option(help="Dataset drift when at least this share of features drift")
    ] = 0.5,
    model_version: Annotated[
        str | None, typer.Option(help="Report (not mix) events captured from other versions")
    ] = None,
) -> None:
    """Compare captured traffic with the model's baseline: drift, data and model quality.
    Exit 0: nothing found; 3: drift or violations; 1: error."""
    if endpoint is None and (model_dir is None or capture is None or output is None):
        raise _fail("give an ENDPOINT (with --stack), or --model-dir, --capture and --output")
    if endpoint is not None and (model_dir or capture or output):
        raise _fail("give either an ENDPOINT or --model-dir/--capture/--output, not both")
    with _one_line_errors():
        if endpoint is not None:
            outcome = monitor_local_endpoint(
                localenv.StackPaths.of(stack, state_dir),
                endpoint,
                since=since or "24h",
                until=until,
                method=method,
                drift_share=drift_share,
            )
            output = outcome.files[0].parent
        else:
            assert model_dir and capture and output
            outcome = monitor_model_dir(
                model_dir,
                capture,
                output,
                ground_truth=ground_truth,
                since=since,
                until=until,
                method=method,
                drift_share=drift_share,
                model_version=model_version,
            )
    report = outcome.report
    if not report.get("rows"):
        skipped = report.get("unreadable_lines", 0)
        console.print(
            f"no captured rows in the window ({report.get('requests', 0)} requests"
            + (f", {skipped} unreadable lines skipped" if skipped else "")
            + "): nothing to compare; no drift report written"
        )
        raise typer.Exit(outcome.exit_code)
    console.print(summary_table(report))
    quality = report["data_quality"]
    console.print(
        f"{len(report['violations'])} violations; rejected {quality['rejected_share']:.1%}; "
        f"unreadable lines {quality['unreadable_lines']}; reports in {escape(str(output))}"
    )
    raise typer.Exit(outcome.exit_code)


if __name__ == "__main__":
    app()


# The offline plan (resource tree, policies, monthly cost) lives with the components.
app.command("plan")(plan_command)
