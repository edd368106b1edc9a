"""The reference lifecycle on the local platform, end to end.

    generate (or load) churn data -> ingest into the feature groups -> point-in-time training
    set -> train (a subprocess under the SageMaker training contract) -> publish the artifact
    -> register with its metrics -> approve if it passes the group's gate -> roll out to the
    endpoint -> sample requests

The vision and NLP reference workloads (`workload="defects"|"tickets"`, see
`workloads.local.reference`) generate their images or texts into the raw bucket and train
from those files (no feature store), then take the same steps from `train` on.

It reads only the platform descriptor, so the steps are the same ones a cloud run makes.

Resumable: a run's progress is saved in `<state>/<stack>/pipeline/run.json` after every
step, and a run that was interrupted (a crash, Ctrl-C, a failed training) carries on from
where it stopped when the pipeline is run again: training resumes from its checkpoint, the
artifact is published by one atomic rename, and a version is registered only once the
artifact is complete (the registry gives an artifact one version, never two). Data files
are written to a temporary name and renamed (`workloads.storage.atomic_write`).

One run at a time per stack: a run holds `<state>/<stack>/pipeline/.lock` (an `flock`, so
the kernel frees it when the run dies, however it dies); a second run says who holds it,
or with `wait` queues behind it. The training subprocess dies with the pipeline.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from pydantic import BaseModel, Field, ValidationError
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from components.spec import load_stack
from workloads.jobs import local as local_jobs
from workloads.jobs.base import JobRequest
from workloads.jobs.local import LocalJobs
from workloads.jobs.run import apply_gate
from workloads.local import churn
from workloads.local import env as localenv
from workloads.local.process import LockHeldError, exclusive
from workloads.local.reference import REFERENCES, Reference
from workloads.platform import PlatformDescriptor
from workloads.storage import CorruptStoreError, atomic_path, atomic_write

FEATURE_GROUPS = ("customer-profile", "customer-activity")
LAUNCHER_ENV = local_jobs.LAUNCHER_ENV  # e.g. "torchrun --nproc-per-node 2"
SAMPLE_REQUESTS = 5
# The columns the pipeline's monitoring window shifts (in its second half).
MONITOR_SHIFT = ["sessions_30d", "avg_session_minutes", "monthly_charges", "plan"]


class PipelineError(RuntimeError):
    """A step that cannot complete; the message says which and why."""


class RunState(BaseModel):
    """One pipeline run's progress, saved after every step."""

    run_id: str
    dataset: str
    rows: int
    seed: int
    epochs: int
    model_group: str
    done: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    model_uri: str | None = None
    version: int | None = None
    status: str | None = None


class Pipeline:
    def __init__(
        self,
        stack: str,
        state: str | Path | None,
        *,
        rows: int,
        epochs: int,
        seed: int,
        stacks_dir: str | Path,
        console: Console,
        wait: bool = False,
        workload: str = "churn",
    ):
        if workload != "churn" and workload not in REFERENCES:
            known = ", ".join(["churn", *REFERENCES])
            raise PipelineError(f"unknown workload {workload!r}: use one of {known}")
        self.reference: Reference | None = REFERENCES.get(workload)
        self.stack, self.state, self.stacks_dir = stack, state, stacks_dir
        self.rows, self.epochs, self.seed = rows, epochs, seed
        self.console, self.wait = console, wait
        self.spec = load_stack(stack, stacks_dir)
        self.paths = localenv.StackPaths.of(stack, state)
        try:
            self.descriptor: PlatformDescriptor = localenv.read_descriptor(self.paths)
        except localenv.LocalEnvError as exc:
            raise PipelineError(str(exc)) from None
        groups = self.descriptor.feature_store.groups
        missing = [g for g in FEATURE_GROUPS if g not in groups] if not self.reference else []
        if missing:
            raise PipelineError(
                f"stack {stack} declares no feature group(s) {missing}: the churn pipeline needs "
                f"{', '.join(FEATURE_GROUPS)} (see stacks/Pulumi.local.yaml)"
            )
        if not self.spec.endpoints:
            raise PipelineError(f"stack {stack} declares no endpoint to roll the model out to")
        self.endpoint = self.spec.endpoints[0]
        self.group = self.endpoint.model_group
        self.dataset = f"{workload}-rows{rows}-seed{seed}"
        self.buckets = {
            k: localenv.uri_path(v) for k, v in self.descriptor.buckets.model_dump().items()
        }
        self.run_file = self.paths.pipeline / "run.json"
        self.sample_file = self.paths.root / "sample-requests.csv"

    # --- run state ---------------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One run per stack at a time: a second one says who runs, or waits (`wait`)."""
        hint = "; wait for it to finish, or run `mlinfra pipeline --wait` to queue behind it"
        try:
            with exclusive(
                self.paths.pipeline / ".lock",
                wait=self.wait,
                what=f"the pipeline of stack {self.stack}",
                hint=hint,
            ):
                yield
        except LockHeldError as exc:
            raise PipelineError(str(exc)) from None

    def load_or_start_run(self) -> RunState:
        if self.run_file.is_file():
            try:
                run = RunState.model_validate_json(self.run_file.read_bytes())
            except ValidationError as exc:
                raise CorruptStoreError(
                    f"{self.run_file} is not a readable run record ({exc.errors()[0]['msg']}): "
                    "delete it to start a new run (done steps are found again on disk)"
                ) from None
            if (run.dataset, run.epochs) == (self.dataset, self.epochs):
                self.console.print(
                    f"resuming run {run.run_id} (done: {', '.join(run.done) or 'nothing'})",
                    highlight=False,
                )
                return run
            self.console.print(
                f"an interrupted run {run.run_id} used other settings; starting a new run",
                highlight=False,
            )
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        run = RunState(
            run_id=run_id,
            dataset=self.dataset,
            rows=self.rows,
            seed=self.seed,
            epochs=self.epochs,
            model_group=self.group,
        )
        self.save(run)
        return run

    def save(self, run: RunState) -> None:
        atomic_write(self.run_file, run.model_dump_json(indent=2))

    def run_dir(self, run: RunState) -> Path:
        return self.paths.pipeline / "runs" / run.run_id

    # --- steps -------------------------------------------------------------------------------

    def generate(self) -> churn.ChurnData:
        """Generate the data once per (rows, seed) into the raw bucket; later runs load it."""
        folder = self.buckets["raw"] / "churn" / self.dataset
        files = {name: folder / f"{name}.parquet" for name in ("profile", "activity", "labels")}
        if all(f.is_file() for f in files.values()):
            frames = {name: pd.read_parquet(f) for name, f in files.items()}
            return churn.ChurnData(**frames)
        data = churn.generate_churn(self.rows, seed=self.seed)
        for name, path in files.items():
            frame: pd.DataFrame = getattr(data, name)
            atomic_write(path, lambda p, f=frame: f.to_parquet(p, index=False))
        return data

    def ingest(self, data: churn.ChurnData) -> dict[str, int]:
        """Each feature group is ingested once per data set (a marker file says it is done)."""
        marker_dir = self.paths.pipeline / "ingested"
        held = sorted({p.parent.name for p in marker_dir.glob("*/*.done")} - {self.dataset})
        if held:
            raise PipelineError(
                f"the feature store already holds data set {held[0]}; its customers would mix "
                f"with {self.dataset}'s. Use the same --rows/--seed, or start afresh with "
                f"`mlinfra down --stack {self.stack} --purge` and `mlinfra up`"
            )
        store = self.feature_store()
        counts = {}
        for group, frame in zip(FEATURE_GROUPS, (data.profile, data.activity), strict=True):
            marker = marker_dir / self.dataset / f"{group}.done"
            if marker.is_file():
                counts[group] = int(marker.read_text())
                continue
            counts[group] = store.ingest(group, frame)
            atomic_write(marker, str(counts[group]))
        return counts

    def training_set(self, data: churn.ChurnData) -> tuple[Path, Path, int, int]:
        """Point-in-time join of the labels with both groups, split by time, as CSV."""
        folder = self.buckets["artifacts"] / "datasets" / self.group / self.dataset
        train_csv = folder / "train" / "train.csv"
        validation_csv = folder / "validation" / "validation.csv"
        if train_csv.is_file() and validation_csv.is_file():
            return train_csv, validation_csv, *self._count_rows(train_csv, validation_csv)
        joined = self.feature_store().training_set(
            data.labels,
            list(FEATURE_GROUPS),
            entity_column=churn.ENTITY,
            time_column=churn.TIME,
        )
        columns = churn.FEATURES + [churn.TARGET]
        missing = [c for c in columns if c not in joined.columns]
        if missing:
            raise PipelineError(f"the training set lacks columns {missing}")
        train, validation = churn.time_split(joined)
        for frame, path in ((train, train_csv), (validation, validation_csv)):
            atomic_write(path, lambda p, f=frame: f[columns].to_csv(p, index=False))
        return train_csv, validation_csv, len(train), len(validation)

    @staticmethod
    def _count_rows(*files: Path) -> tuple[int, int]:
        a, b = (sum(1 for _ in f.open()) - 1 for f in files)
        return a, b

    def train(
        self, run: RunState, train: Path, validation: Path, hps: dict[str, Any]
    ) -> dict[str, float]:
        """The training job, as SageMaker would run it: a job of the local job backend,
        attached to this process (it gets SIGTERM, checkpoints and stops if we die)."""
        jobs = self.jobs()
        name = self.job_name(run)
        if (jobs.job_dir(name) / "job.json").is_file():
            status = jobs.status(name)
            if status.state == "Completed":
                return status.metrics  # trained before a crash
            if not status.terminal:
                status = jobs.wait(name)
        request = JobRequest(
            name=name,
            channels={
                "train": localenv.file_uri(train),
                "validation": localenv.file_uri(validation),
            },
            hyperparameters={k: str(v) for k, v in hps.items()},
            model_group=self.group,
        )
        status = jobs.wait(jobs.submit(request).id)  # a failed job's name resumes it
        if status.state != "Completed":
            log_path = jobs.job_dir(name) / "train.log"
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
            raise PipelineError(
                f"training {status.state.lower()}: {status.reason}; run the pipeline again to "
                f"resume from the last checkpoint.\n{tail}\nlog: {log_path}"
            )
        return status.metrics

    def job_name(self, run: RunState) -> str:
        return f"pipeline-{run.run_id.lower()}"

    def publish(self, run: RunState) -> str:
        """Copy the model into the artifacts bucket in one rename: complete or absent."""
        target = self.buckets["artifacts"] / "models" / self.group / run.run_id
        if not (target / "meta.json").is_file():
            for stale in target.parent.glob(f".{target.name}.*.tmp"):  # an interrupted copy
                shutil.rmtree(stale, ignore_errors=True)
            with atomic_path(target) as tmp:
                shutil.copytree(self.jobs().job_dir(self.job_name(run)) / "model", tmp)
        return localenv.file_uri(target)

    def register(self, run: RunState) -> int:
        """Register once: the registry gives an artifact one version (a rerun reuses it)."""
        registry = self.registry()
        assert run.model_uri is not None
        version = registry.register(
            self.group,
            run.model_uri,
            run.metrics,
            image=f"{self.descriptor.registry.repositories.get('serve', 'local')}:local",
            description=f"pipeline run {run.run_id}, data {run.dataset}",
        )
        return version.version

    def gate(self, run: RunState) -> tuple[str, str]:
        assert run.version is not None
        return apply_gate(self.registry(), self.descriptor, self.group, run.version, run.metrics)

    def rollout(self) -> list[str]:
        return localenv.rollout(self.stack, self.state, stacks_dir=self.stacks_dir).messages

    def sample(self, validation_csv: Path) -> tuple[list[dict], list[Any], list[Any]]:
        frame = pd.read_csv(validation_csv, nrows=SAMPLE_REQUESTS)
        truth = frame[churn.TARGET].tolist()
        features = frame[churn.FEATURES]
        # The same rows as a file for `mlinfra predict` (features only, as a client sends).
        atomic_write(self.sample_file, lambda p: features.to_csv(p, index=False))
        records = features.astype(object).where(features.notna(), None).to_dict("records")
        url = self.endpoint_url()
        response = httpx.post(f"{url}/invocations", json={"instances": records}, timeout=60)
        if response.status_code != 200:
            raise PipelineError(f"{url}/invocations answered {response.status_code}: "
                                f"{response.text.strip()}")  # fmt: skip
        return records, response.json()["predictions"], truth

    def endpoint_url(self) -> str:
        descriptor = localenv.read_descriptor(self.paths)  # up may have moved the port
        return descriptor.endpoints[self.endpoint.name].url or ""

    # --- backends ----------------------------------------------------------------------------

    def feature_store(self):
        from workloads.features.store import feature_store_from_descriptor

        return feature_store_from_descriptor(self.descriptor)

    def registry(self):
        from workloads.registry.store import registry_from_descriptor

        return registry_from_descriptor(self.descriptor)

    def jobs(self) -> LocalJobs:
        return LocalJobs(self.descriptor, attached=True)

    # --- the whole run -----------------------------------------------------------------------

    def run(self) -> RunState:
        with self.exclusive():
            return self._run()

    def _run(self) -> RunState:
        run = self.load_or_start_run()
        say = self.console.print
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:

            def step(name: str, text: str) -> Callable[[str], None]:
                task = progress.add_task(f"{name}: {text}", total=1)

                def finish(result: str) -> None:
                    progress.update(task, description=f"[green]✓[/] {name}: {result}")
                    progress.update(task, completed=1)
                    if name not in run.done:
                        run.done.append(name)
                        self.save(run)

                return finish

            if self.reference is None:
                train, validation, hps = self._churn_data(step)
            else:
                ref = self.reference
                finish = step("data", f"{ref.summary}, {self.rows} train rows, seed {self.seed}")
                folder = self.buckets["raw"] / ref.name / self.dataset
                train, validation, n_train, n_val = ref.write_data(folder, self.rows, self.seed)
                finish(f"{n_train} train / {n_val} validation in {folder}")
                hps = ref.hyperparameters(self.epochs, self.seed)

            finish = step("train", f"python -m workloads.train, {self.epochs} epochs at most")
            run.metrics = self.train(run, train, validation, hps)
            finish(", ".join(f"{k} {v:.4f}" for k, v in run.metrics.items()))

            finish = step("publish", "model artifact into the artifacts bucket")
            run.model_uri = self.publish(run)
            finish(run.model_uri)

            finish = step("register", f"model group {self.group}")
            run.version = self.register(run)
            finish(f"{self.group} v{run.version}")

            finish = step("gate", "approval gate of the model group")
            run.status, why = self.gate(run)
            finish(f"{run.status}: {why}")

            if run.status == "Approved":
                finish = step("rollout", f"endpoint {self.endpoint.name}")
                messages = self.rollout()
                finish("; ".join(messages) or "already serving it")
            else:
                say(f"[yellow]v{run.version} is {run.status}: {why}; the endpoint keeps "
                    "serving the previous approved version (if any)[/]")  # fmt: skip
        self._report(run, validation)
        # Done: the next pipeline run starts a new run (and registers a new version).
        self.run_dir(run).mkdir(parents=True, exist_ok=True)
        shutil.move(self.run_file, self.run_dir(run) / "run.json")
        return run

    def _churn_data(self, step: Callable[[str, str], Callable[[str], None]]):
        finish = step("data", f"churn data, {self.rows} label rows, seed {self.seed}")
        data = self.generate()
        finish(
            f"{len(data.labels)} labels, {len(data.profile)} profile and "
            f"{len(data.activity)} activity records"
        )

        finish = step("ingest", "feature groups " + ", ".join(FEATURE_GROUPS))
        counts = self.ingest(data)
        finish(", ".join(f"{g}: {n} records" for g, n in counts.items()))

        finish = step("training set", "point-in-time join, split by time")
        train_csv, validation_csv, n_train, n_val = self.training_set(data)
        finish(f"{n_train} train / {n_val} validation rows (later period)")
        hps = {"target": churn.TARGET, "epochs": self.epochs, "seed": self.seed}
        hps |= {"batch_size": 256, "hidden_sizes": "64,32", "patience": 5}
        return train_csv.parent, validation_csv.parent, hps

    def _reference_sample(self, validation: Path) -> tuple[Table, list]:
        assert self.reference is not None
        columns, cells, request, truth = self.reference.samples(validation)
        url = self.endpoint_url()
        response = httpx.post(f"{url}/invocations", json=request, timeout=60)
        if response.status_code != 200:
            raise PipelineError(f"{url}/invocations answered {response.status_code}: "
                                f"{response.text.strip()}")  # fmt: skip
        table = Table()
        for col in (*columns, "predicted", "p(predicted)", "actual"):
            table.add_column(col)
        for row, pred, actual in zip(cells, response.json()["predictions"], truth, strict=True):
            p = pred["probabilities"].get(str(pred["label"]), 0.0)
            table.add_row(*row, str(pred["label"]), f"{p:.3f}", str(actual))
        return table, truth

    def _report(self, run: RunState, validation: Path) -> None:
        say = self.console.print
        later = " (validation = the later period)" if self.reference is None else ""
        metrics = Table(title=f"metrics of run {run.run_id}{later}")
        metrics.add_column("metric")
        metrics.add_column("value", justify="right")
        for name, value in run.metrics.items():
            metrics.add_row(name, f"{value:.4f}")
        say(metrics)
        say(f"registered: {self.group} v{run.version} ({run.status}) at {run.model_uri}")
        statuses = {s.name: s for s in localenv.status(self.stack, self.state)}
        ep = statuses.get(self.endpoint.name)
        if ep is None or ep.state != "serving":
            say(f"endpoint {self.endpoint.name}: {ep.state if ep else 'unknown'}")
            return
        if self.reference is not None:
            table, _ = self._reference_sample(validation)
            table.title = f"sample requests to {ep.url}/invocations (serving v{ep.model_version})"
            say(table)
            say(f"endpoint {ep.name}: {ep.url} (serving {self.group} v{ep.model_version})")
            return
        records, predictions, truth = self.sample(validation / "validation.csv")
        table = Table(
            title=f"sample requests to {ep.url}/invocations (serving v{ep.model_version})"
        )
        for col in (
            "plan",
            "sessions_30d",
            "support_tickets_30d",
            "predicted",
            "p(churn)",
            "actual",
        ):
            table.add_column(col)
        for record, pred, actual in zip(records, predictions, truth, strict=True):
            probability = pred.get("probabilities", {}).get("1") if isinstance(pred, dict) else None
            table.add_row(
                str(record["plan"]),
                str(record["sessions_30d"]),
                str(record["support_tickets_30d"]),
                str(pred.get("label") if isinstance(pred, dict) else pred),
                "-" if probability is None else f"{probability:.3f}",
                str(actual),
            )
        say(table)
        say(f"endpoint {ep.name}: {ep.url} (serving {self.group} v{ep.model_version})")
        say(f"try it: mlinfra predict {ep.name} {self.sample_file} --stack {self.stack}")
        self._monitor(ep.name, ep.url or "", validation / "validation.csv")

    def _monitor(self, name: str, url: str, validation_csv: Path) -> None:
        """A window of traffic with a known shift, then the monitor's summary."""
        from workloads.monitoring import local as monitoring
        from workloads.monitoring.report import summary_table

        say = self.console.print
        if not self.endpoint.data_capture.enabled:
            say(f"endpoint {name}: dataCapture is off; no monitoring window sent")
            return
        frame = pd.read_csv(validation_csv)[churn.FEATURES]
        sent = monitoring.send_window(url, frame, MONITOR_SHIFT, seed=self.seed)
        monitoring.wait_for_capture(url)
        say(
            f"monitoring window: {sent['rows']} rows sent to {name}; the last "
            f"{sent['shifted_rows']} shifted ({', '.join(MONITOR_SHIFT)}: numbers x"
            f"{monitoring.SHIFT_SCALE:g}, the plan set to its rarest value); "
            f"{self.endpoint.data_capture.sampling_percent}% of requests captured"
        )
        outcome = monitoring.monitor_local_endpoint(self.paths, name, since="1h")
        if not outcome.report.get("rows"):
            say("monitor: no captured rows in the window")
            return
        say(summary_table(outcome.report))
        say(f"monitor report: {outcome.files[-1]} (mlinfra monitor {name} --stack {self.stack})")


def run_pipeline(
    stack: str = "local",
    state: str | Path | None = None,
    *,
    rows: int = 10_000,
    epochs: int = 20,
    seed: int = 0,
    stacks_dir: str | Path = "stacks",
    console: Console | None = None,
    wait: bool = False,
    workload: str = "churn",
) -> RunState:
    pipeline = Pipeline(
        stack,
        state,
        rows=rows,
        epochs=epochs,
        seed=seed,
        stacks_dir=stacks_dir,
        console=console or Console(soft_wrap=True),
        wait=wait,
        workload=workload,
    )
    return pipeline.run()


def default_stack(workload: str) -> str:
    """The stack a workload's pipeline runs on unless told: its team's."""
    reference = REFERENCES.get(workload)
    return reference.stack if reference else "local"
