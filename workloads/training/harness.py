"""The training harness: everything about training a PyTorch model that is not the data.

`python -m workloads.train` resolves the training contract (paths and hyperparameters), loads
the task the `task` hyperparameter names (`workloads.training.tasks`), and runs it: one
process, or many under `torchrun` (DistributedDataParallel: gloo on CPU; nccl with mixed
precision, and channels_last for convolutional tasks, on CUDA). Every rank reads the data
and fits the same preprocessing (it is deterministic); a DistributedSampler gives each rank
its share of every epoch. Rank 0 evaluates after each epoch (early stopping restores the
best weights), prints the metric line, writes checkpoints (every `checkpoint_steps` steps
and on SIGTERM; resumed mid-epoch) and the final artifact, atomically.

Exit status: 0 done, 1 failed (reason in the failure file), 143 stopped by SIGTERM after
writing a checkpoint (a restart resumes from it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from workloads.monitoring.baseline import FILE as BASELINE_FILE
from workloads.storage import StorageError, atomic_write, file_error
from workloads.training import metric_line
from workloads.training.artifact import publish_model, save_artifact
from workloads.training.checkpoints import CheckpointStore
from workloads.training.contract import (
    ContractError,
    TrainingContract,
    failure_file_hint,
    resolve,
)
from workloads.training.data import DataError
from workloads.training.distributed import Dist, init_dist, shutdown
from workloads.training.tasks.base import to_device

log = logging.getLogger("workloads.train")
EXIT_FAILED = 1
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a container runtime expects
EXIT_INTERRUPTED = 130  # 128 + SIGINT
STOP_SYNC_STEPS = 8  # how often ranks agree on "SIGTERM received" (a tiny all-reduce)
# Settings that change neither the weights' meaning nor the sample order: a run resumed
# with other values of these continues from its checkpoint.
NOT_IN_FINGERPRINT = {"epochs", "checkpoint_steps", "patience", "data_workers", "amp"}


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    epoch_loss: float = 0.0  # sum of this epoch's batch losses so far
    samples: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time: steadier than wall time on a shared host
    curve: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0  # where this process started (0: from scratch)


@dataclass
class Run:
    """What one training run works with."""

    contract: TrainingContract
    task: Any
    train_set: Dataset
    val_set: Dataset
    ddp: Dist
    fingerprint: str
    batch_size: int
    validation: Any = None  # the task's validation data as read (for the baseline)


class StopFlag:
    """Set by SIGTERM; training checks it between steps."""

    def __init__(self) -> None:
        self.set = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.set = True


# --- data --------------------------------------------------------------------------------


def prepare(contract: TrainingContract, ddp: Dist) -> Run:
    """Build the task, read its channels, hold out validation data if needed, fit."""
    hp = contract.hyperparameters
    task = hp.task(hp.params, hp.settings)
    train = task.read_channel(contract.train)
    if contract.validation:
        validation = task.read_channel(contract.validation)
    else:  # hold out a seeded share of the train channel
        train, validation = task.split(train, hp.settings.validation_fraction, hp.settings.seed)
    task.fit_preprocessing(train, validation)
    train_set, val_set = task.datasets(train, validation)
    if len(train_set) == 0 or len(val_set) == 0:
        raise DataError(f"{contract.train}: no rows to train or validate on")
    batch_size = hp.settings.batch_size or auto_batch_size(len(train_set))
    fingerprint = run_fingerprint(contract, task)
    return Run(contract, task, train_set, val_set, ddp, fingerprint, batch_size, validation)


def auto_batch_size(train_rows: int) -> int:
    """About ten steps an epoch, a power of two from 32 to 128: small data sets get enough
    optimizer steps between early-stopping checks; larger ones keep the throughput."""
    return int(min(128, max(32, 2 ** math.floor(math.log2(max(train_rows, 1) / 10)))))


def run_fingerprint(contract: TrainingContract, task: Any) -> str:
    # Anything that changes the meaning of the weights or the sample order.
    hp = contract.hyperparameters
    doc = {k: v for k, v in hp.dump().items() if k not in NOT_IN_FINGERPRINT}
    doc |= {"task_fingerprint": task.fingerprint()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _batches(run: Run, order: list[int], start: int) -> Iterator[Any]:
    """This rank's batches of an epoch, from batch number `start` on (resume mid-epoch)."""
    settings, device = run.contract.hyperparameters.settings, run.ddp.device
    size = run.batch_size
    rest = order[start * size :]
    channels_last = device.type == "cuda" and run.task.channels_last
    if isinstance(run.train_set, TensorDataset):
        # In memory: one gather per epoch (this rank's share, shuffled), then each batch is
        # a slice view, cheaper than gathering random rows every step.
        index = torch.tensor(rest, dtype=torch.long)
        tensors = [t[index].to(device) for t in run.train_set.tensors]
        for i in range(0, len(rest), size):
            yield to_device(tuple(t[i : i + size] for t in tensors), device, channels_last)
        return
    workers = settings.data_workers
    if workers is None:
        workers = getattr(run.task, "data_workers", 0)
    loader = DataLoader(
        run.train_set,
        batch_size=size,
        sampler=rest,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    for batch in loader:
        yield to_device(batch, device, channels_last)


# --- training ----------------------------------------------------------------------------


def _state_copy(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _amp_dtype(run: Run) -> torch.dtype | None:
    if run.ddp.device.type != "cuda" or not run.contract.hyperparameters.settings.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train(run: Run, stop: StopFlag) -> tuple[nn.Module, TrainState] | None:
    """The training loop. Returns (best network, state), or None if stopped by SIGTERM."""
    contract, task, ddp = run.contract, run.task, run.ddp
    settings, device = contract.hyperparameters.settings, ddp.device
    torch.manual_seed(settings.seed)
    net = task.build_model().to(device)
    if device.type == "cuda" and task.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    amp_dtype = _amp_dtype(run)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    store = CheckpointStore(contract.checkpoint_dir, contract.checkpoint_uri)

    # Rank 0's view of the checkpoint goes to everyone.
    saved = ddp.broadcast_object(store.load_latest(run.fingerprint) if ddp.main else None)
    state, best_state = TrainState(), _state_copy(net)
    if saved is not None:
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        task.load_state_dict(saved["task"])
        best_state = saved["best_state"]
        state = TrainState(**saved["state"])
        state.resumed_from_step = state.step
        log.info("resumed from checkpoint at step %d (epoch %d)", state.step, state.epoch + 1)

    model: nn.Module = net
    if ddp.enabled:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = DistributedSampler(
        range(len(run.train_set)),
        num_replicas=ddp.world,
        rank=ddp.rank,
        shuffle=True,
        seed=settings.seed,
    )

    def checkpoint() -> None:
        if ddp.main:
            store.save(
                state.step,
                {
                    "fingerprint": run.fingerprint,
                    "step": state.step,
                    "model": _state_copy(net),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "state": asdict(state),
                    "best_state": best_state,
                    "task": task.state_dict(),
                },
            )

    def should_stop() -> bool:  # every rank calls it: it may be a collective
        if not ddp.enabled:
            return stop.set
        return state.step % STOP_SYNC_STEPS == 0 and ddp.any(stop.set)

    model.train()
    log.info(
        "training: %d steps per epoch, from epoch %d",
        math.ceil(len(sampler) / run.batch_size),
        state.epoch + 1,
    )
    while state.epoch < settings.epochs:
        started, cpu_started = time.perf_counter(), time.process_time()

        def clock() -> None:
            nonlocal started, cpu_started
            state.seconds += time.perf_counter() - started
            state.cpu_seconds += time.process_time() - cpu_started
            started, cpu_started = time.perf_counter(), time.process_time()

        sampler.set_epoch(state.epoch)
        loss_sum = torch.zeros((), device=device)
        for batch in _batches(run, list(sampler), state.batch):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = task.compute_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()
            state.step += 1
            state.batch += 1
            state.samples += _batch_len(batch) * ddp.world
            stopping = should_stop()
            if stopping or state.step % settings.checkpoint_steps == 0:
                state.epoch_loss += float(loss_sum)
                loss_sum.zero_()
                clock()
                checkpoint()
                if stopping:
                    log.info("SIGTERM: checkpoint written at step %d, stopping", state.step)
                    return None
        state.epoch_loss += float(loss_sum)
        train_loss = state.epoch_loss / max(1, state.batch)
        metrics = task.compute_metrics(net, run.val_set, device) if ddp.main else {}
        # Every rank takes rank 0's early-stopping decision.
        val_loss = float(ddp.broadcast_object(metrics.get("validation_loss", math.inf)))
        if ddp.main:
            metric_line.emit({"train_loss": train_loss, **metrics}, epoch=state.epoch + 1)
        state.curve.append(
            {
                "epoch": state.epoch + 1,
                "step": state.step,
                "train_loss": train_loss,
                "validation_loss": val_loss,
            }
        )
        if val_loss < state.best_loss - 1e-7:
            state.best_loss, state.best_epoch, state.bad_epochs = val_loss, state.epoch + 1, 0
            best_state = _state_copy(net)
        else:
            state.bad_epochs += 1
        state.epoch, state.batch, state.epoch_loss = state.epoch + 1, 0, 0.0
        clock()
        if state.bad_epochs >= settings.patience:
            log.info("early stopping after epoch %d (best %d)", state.epoch, state.best_epoch)
            break
        if ddp.any(stop.set):
            checkpoint()
            log.info("SIGTERM: checkpoint written after epoch %d, stopping", state.epoch)
            return None
    net.load_state_dict(best_state)
    return net, state


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, tuple | list) else batch
    if isinstance(first, dict):
        first = next(iter(first.values()))
    return len(first)


# --- outputs -----------------------------------------------------------------------------


def write_outputs(run: Run, net: nn.Module, state: TrainState) -> dict[str, Any]:
    contract, task = run.contract, run.task
    hp = contract.hyperparameters
    net = net.cpu()  # the artifact and its metrics are computed on CPU, as serving runs it
    metrics = task.compute_metrics(net, run.val_set, torch.device("cpu"))
    metric_line.emit(metrics)
    meta = {
        "task": hp.settings.task,
        "hyperparameters": hp.dump(),
        "torch_version": torch.__version__,
    }
    report = {
        "task": hp.settings.task,
        **task.describe(),
        "metrics": metrics,
        "loss_curve": state.curve,
        "samples_per_second": state.samples / state.seconds if state.seconds > 0 else 0.0,
        "train_seconds": state.seconds,
        "train_cpu_seconds": state.cpu_seconds,
        "steps": state.step,
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "resumed_from_step": state.resumed_from_step,
        "world_size": run.ddp.world,
        "batch_size": run.batch_size,
    }
    baseline = write_baseline(run, net)
    extra = {BASELINE_FILE: baseline} if baseline else {}
    save_artifact(contract.model_dir, task, net, meta, metrics, extra)
    contract.output_dir.mkdir(parents=True, exist_ok=True)
    if baseline:
        atomic_write(contract.output_dir / BASELINE_FILE, baseline)
    atomic_write(contract.output_dir / "metrics.json", json.dumps(report, indent=2))
    plot_loss_curve(state.curve, contract.output_dir / "loss_curve.png")
    if contract.model_uri:
        publish_model(contract.model_dir, contract.model_uri)
    return report


def write_baseline(run: Run, net: nn.Module) -> str | None:
    """The task's monitoring baseline as JSON text; a task whose hook fails gets none (a
    warning), never a failed training run."""
    task = run.task
    if not hasattr(task, "baseline"):
        return None
    try:
        device = torch.device("cpu")
        predictions = task.validation_predictions(net, run.val_set, device)
        doc = task.baseline(run.validation, predictions)
        return json.dumps(doc, default=_json_default)
    except Exception as exc:  # a team's own task: its baseline must not lose the model
        log.warning("no monitoring baseline: %s.baseline failed: %s", type(task).__name__, exc)
        return None


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def plot_loss_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [p["epoch"] for p in curve]
    ax.plot(epochs, [p["train_loss"] for p in curve], label="train")
    ax.plot(epochs, [p["validation_loss"] for p in curve], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda p: fig.savefig(p, dpi=80, format="png"))
    finally:
        plt.close(fig)


def write_failure(path: Path, message: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A plain write: the file may be a mount (Kubernetes' /dev/termination-log).
        path.write_text(message + "\n")
    except OSError as exc:
        log.error("cannot write the failure file %s: %s", path, exc)


# --- entrypoint --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    code = EXIT_FAILED
    try:
        ddp = init_dist(env)
        logging.basicConfig(
            level=logging.INFO,
            format=f"%(asctime)s train[rank {ddp.rank}] %(message)s",
            stream=sys.stderr,
            force=True,
        )
        stop = StopFlag()
        stop.install()
        contract = resolve(argv, env)
        log.info(
            "task=%s train=%s validation=%s model_dir=%s",
            contract.hyperparameters.settings.task,
            contract.train,
            contract.validation,
            contract.model_dir,
        )
        run = prepare(contract, ddp)
        log.info(
            "%s rows train=%d validation=%d",
            " ".join(f"{k}={v}" for k, v in run.task.describe().items()),
            len(run.train_set),
            len(run.val_set),
        )
        result = train(run, stop)
        if result is None:
            return EXIT_TERMINATED
        if ddp.main:
            report = write_outputs(run, *result)
            log.info("done: %s", json.dumps(report["metrics"]))
        if ddp.enabled:
            torch.distributed.barrier()
        return 0
    except (DataError, ContractError, StorageError) as exc:
        kinds = {DataError: "data error", ContractError: "configuration error"}
        message = f"{kinds.get(type(exc), 'storage error')}: {exc}"
    except Exception as exc:
        error = file_error(exc) if isinstance(exc, OSError) else None
        if error is not None:  # a file that cannot be written: permissions, a read-only disk
            message = f"storage error: {error}"
        else:
            traceback.print_exc()
            message = f"training failed: {type(exc).__name__}: {exc}"
    except KeyboardInterrupt:  # Ctrl-C: one line (the artifact and checkpoints are atomic)
        code = EXIT_INTERRUPTED
        message = "interrupted (Ctrl-C): a rerun resumes from the newest checkpoint"
    finally:
        shutdown()
    print(message, file=sys.stderr, flush=True)
    write_failure(failure_file_hint(argv, env), message)
    return code
