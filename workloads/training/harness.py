"""`python -m workloads.train`: train a tabular model under the SageMaker training contract.

One process, or many under `torchrun` (DistributedDataParallel: gloo on CPU, nccl with
mixed precision on CUDA). Every rank reads the data and fits the same preprocessing (it is
deterministic); a DistributedSampler gives each rank its share of every epoch. Rank 0 writes
checkpoints (every `checkpoint_steps` steps and on SIGTERM) and the final artifact.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from workloads.training.artifact import TabularNet, publish_model, save_model
from workloads.training.contract import (
    ContractError,
    Hyperparameters,
    TrainingContract,
    failure_file_hint,
    resolve,
)
from workloads.training.data import DataError, infer_task, load_table, split_target
from workloads.training.tasks.tabular.preprocess import Preprocessor

log = logging.getLogger("workloads.train")
EXIT_FAILED = 1
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a container runtime expects
STOP_SYNC_STEPS = 8  # how often ranks agree on "SIGTERM received" (a tiny all-reduce)
EVAL_BATCH = 8192
KEEP_CHECKPOINTS = 2


# --- process group -----------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_dist(env: Mapping[str, str]) -> Dist:
    world = int(env.get("WORLD_SIZE", "1"))
    rank, local_rank = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        if not cuda:  # share the cores between the ranks on this node
            local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Dist(rank, world, local_rank, device)


# --- data --------------------------------------------------------------------------------


@dataclass
class Prepared:
    task: str
    classes: list | None
    preprocessor: Preprocessor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    target_mean: float = 0.0
    target_scale: float = 1.0


def _json_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def holdout_split(
    labels: pd.Series, task: str, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded validation/train row indices; stratified by class for classification, so a
    small validation set still has every class in proportion."""
    rng = np.random.default_rng(seed)
    if task == "regression":
        groups = [np.arange(len(labels))]
    else:
        groups = [np.flatnonzero(labels.to_numpy() == c) for c in pd.unique(labels)]
    val, train = [], []
    for rows in groups:
        rows = rng.permutation(rows)
        n_val = round(fraction * len(rows)) if len(rows) > 1 else 0
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    val_idx, train_idx = np.concatenate(val), np.concatenate(train)
    if len(val_idx) == 0:
        val_idx, train_idx = train_idx[:1], train_idx[1:]
    return np.sort(val_idx), rng.permutation(train_idx)


def prepare_data(contract: TrainingContract) -> Prepared:
    hp = contract.hyperparameters
    features, labels = split_target(load_table(contract.train), hp.target, contract.train)
    task = infer_task(labels, hp.task)
    if contract.validation:
        val_features, val_labels = split_target(
            load_table(contract.validation), hp.target, contract.validation
        )
        if list(val_features.columns) != list(features.columns):
            raise DataError(
                f"{contract.validation}: columns {list(val_features.columns)} differ from "
                f"the train channel's {list(features.columns)}"
            )
    else:  # hold out a seeded random share of the train channel
        if len(features) < 4:
            raise DataError(f"{contract.train}: {len(features)} rows are too few to train on")
        val_idx, train_idx = holdout_split(labels, task, hp.validation_fraction, hp.seed)
        val_features = features.iloc[val_idx].reset_index(drop=True)
        val_labels = labels.iloc[val_idx].reset_index(drop=True)
        features = features.iloc[train_idx].reset_index(drop=True)
        labels = labels.iloc[train_idx].reset_index(drop=True)

    pre = Preprocessor.fit(features, hp.max_categories)
    x_train = torch.from_numpy(pre.transform_frame(features))
    x_val = torch.from_numpy(pre.transform_frame(val_features))
    if task == "regression":
        y = labels.to_numpy(dtype=np.float64)
        mean, scale = float(y.mean()), float(y.std()) or 1.0
        y_val = val_labels.to_numpy(dtype=np.float64)
        return Prepared(
            task,
            None,
            pre,
            x_train,
            torch.from_numpy(((y - mean) / scale).astype(np.float32)),
            x_val,
            torch.from_numpy(((y_val - mean) / scale).astype(np.float32)),
            mean,
            scale,
        )
    classes = sorted(pd.unique(pd.concat([labels, val_labels], ignore_index=True)).tolist())
    if task == "binary" and len(classes) > 2:
        raise DataError(f"task binary but the train and validation labels have classes {classes}")
    if labels.nunique() < 2:
        raise DataError(f"the training labels have a single class ({labels.iloc[0]!r})")
    index = {c: i for i, c in enumerate(classes)}
    return Prepared(
        task,
        [_json_value(c) for c in classes],
        pre,
        x_train,
        torch.tensor(labels.map(index).to_numpy(dtype=np.int64)),
        x_val,
        torch.tensor(val_labels.map(index).to_numpy(dtype=np.int64)),
    )


# --- metrics -----------------------------------------------------------------------------


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(score).rank().to_numpy()  # average ranks for ties (Mann-Whitney U)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(net: nn.Module, data: Prepared, device: torch.device) -> dict[str, float]:
    outputs = predict_raw(net, data.x_val, device)
    if data.task == "regression":
        scale, mean = data.target_scale, data.target_mean
        pred = outputs[:, 0].double().numpy() * scale + mean
        true = data.y_val.double().numpy() * scale + mean
        resid = true - pred
        ss_tot = float(((true - true.mean()) ** 2).sum())
        mse = float((resid**2).mean())
        return {
            "r2": 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 0.0,
            "rmse": math.sqrt(mse),
            "mae": float(np.abs(resid).mean()),
            "validation_loss": mse / scale**2,
        }
    y = data.y_val.numpy()
    logp = torch.log_softmax(outputs.float(), dim=1).numpy()
    metrics = {
        "accuracy": float((logp.argmax(axis=1) == y).mean()),
        "log_loss": float(-logp[np.arange(len(y)), y].mean()),
    }
    if data.task == "binary":
        metrics["auc"] = _auc(y, logp[:, 1])
    metrics["validation_loss"] = metrics["log_loss"]
    return metrics


def predict_raw(net: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    net.eval()
    with torch.inference_mode():
        parts = [
            net(x[i : i + EVAL_BATCH].to(device)).float().cpu()
            for i in range(0, len(x), EVAL_BATCH)
        ]
    net.train()
    return torch.cat(parts)


# --- checkpoints -------------------------------------------------------------------------


def checkpoint_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob("ckpt-*.pt")) if directory.is_dir() else []


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{state['step']:010d}.pt"
    tmp = directory / f".{path.name}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a reader sees the old file set or the complete new one
    for old in checkpoint_paths(directory)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(directory: Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest readable checkpoint of this run, or None."""
    for path in reversed(checkpoint_paths(directory)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: try the previous one
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        if state.get("fingerprint") != fingerprint:
            log.warning("ignoring checkpoint %s: it is from a different run configuration", path)
            return None
        return state
    return None


def run_fingerprint(hp: Hyperparameters, data: Prepared) -> str:
    # Anything that changes the meaning of the weights or the sample order.
    doc = hp.model_dump(exclude={"epochs", "checkpoint_steps", "patience"})
    doc |= {"in": data.x_train.shape[1], "n": len(data.x_train), "task": data.task}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# --- training ----------------------------------------------------------------------------


class StopFlag:
    """Set by SIGTERM; training checks it between steps."""

    def __init__(self) -> None:
        self.set = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.set = True


def _state_copy(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def train(
    contract: TrainingContract, data: Prepared, ddp: Dist, stop: StopFlag
) -> tuple[nn.Module, dict[str, Any]] | None:
    """The training loop. Returns (best network, run info), or None if stopped by SIGTERM."""
    hp, device = contract.hyperparameters, ddp.device
    torch.manual_seed(hp.seed)
    out_dim = 1 if data.task == "regression" else len(data.classes or [])
    net = TabularNet(data.x_train.shape[1], out_dim, hp.hidden_sizes, hp.dropout).to(device)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay
    )
    loss_fn = nn.MSELoss() if data.task == "regression" else nn.CrossEntropyLoss()

    def squeeze(out: torch.Tensor) -> torch.Tensor:  # regression: one output column
        return out[:, 0] if data.task == "regression" else out

    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    fingerprint = run_fingerprint(hp, data)
    state = load_checkpoint(contract.checkpoint_dir, fingerprint) if ddp.main else None
    if ddp.enabled:  # rank 0's view of the checkpoint goes to everyone
        box = [state]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    info: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "best_loss": math.inf,
        "best_epoch": -1,
        "bad_epochs": 0,
        "curve": [],
        "samples": 0,
        "seconds": 0.0,
        "cpu_seconds": 0.0,  # this process's CPU time: steadier than wall time on a shared host
        "epoch_loss": 0.0,
        "resumed_from_step": 0,
    }
    best_state = _state_copy(net)
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best_state = state["best_state"]
        info.update(state["info"])
        info["resumed_from_step"] = info["step"]
        log.info("resumed from checkpoint at step %d (epoch %d)", info["step"], info["epoch"] + 1)
    info["world_size"] = ddp.world

    model: nn.Module = net
    if ddp.enabled:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    sampler = DistributedSampler(
        range(len(x_train)), num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=hp.seed
    )
    stop_tensor = torch.zeros(1, device=device)

    def checkpoint() -> None:
        if ddp.main:
            save_checkpoint(
                contract.checkpoint_dir,
                {
                    "fingerprint": fingerprint,
                    "step": info["step"],
                    "model": _state_copy(net),
                    "optimizer": optimizer.state_dict(),
                    "best_state": best_state,
                    "info": {
                        k: v
                        for k, v in info.items()
                        if k not in ("resumed_from_step", "world_size")
                    },
                },
            )

    def should_stop() -> bool:
        if not ddp.enabled:
            return stop.set
        if info["step"] % STOP_SYNC_STEPS:
            return False
        stop_tensor.fill_(1.0 if stop.set else 0.0)
        dist.all_reduce(stop_tensor, op=dist.ReduceOp.MAX)
        return bool(stop_tensor.item())

    model.train()
    log.info(
        "training: %d steps per epoch, from epoch %d",
        math.ceil(len(sampler) / hp.batch_size),
        info["epoch"] + 1,
    )
    while info["epoch"] < hp.epochs:
        started, cpu_started = time.perf_counter(), time.process_time()
        sampler.set_epoch(info["epoch"])
        order = torch.tensor(list(sampler), dtype=torch.long, device=device)
        # One gather per epoch (this rank's share, shuffled), then each step is a slice view:
        # cheaper than gathering random rows every step.
        x_epoch, y_epoch = x_train[order], y_train[order]
        loss_sum = torch.zeros((), device=device)
        for start in range(info["batch"] * hp.batch_size, len(order), hp.batch_size):
            xb = x_epoch[start : start + hp.batch_size]
            yb = y_epoch[start : start + hp.batch_size]
            if amp_dtype is None:
                loss = loss_fn(squeeze(model(xb)), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                with torch.autocast(device.type, dtype=amp_dtype):
                    loss = loss_fn(squeeze(model(xb)), yb)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            loss_sum += loss.detach()
            info["step"] += 1
            info["batch"] += 1
            info["samples"] += len(xb) * ddp.world
            stopping = should_stop()  # every rank calls it: it may be a collective
            if stopping or info["step"] % hp.checkpoint_steps == 0:
                info["epoch_loss"] += float(loss_sum)
                loss_sum.zero_()
                info["seconds"] += time.perf_counter() - started
                info["cpu_seconds"] += time.process_time() - cpu_started
                started, cpu_started = time.perf_counter(), time.process_time()
                checkpoint()
                if stopping:
                    log.info("SIGTERM: checkpoint written at step %d, stopping", info["step"])
                    return None
        del x_epoch, y_epoch  # before the next epoch's copy is made
        info["epoch_loss"] += float(loss_sum)
        train_loss = info["epoch_loss"] / max(1, info["batch"])
        val_loss = evaluate(net, data, device)["validation_loss"] if ddp.main else 0.0
        if ddp.enabled:  # every rank takes rank 0's early-stopping decision
            val_tensor = torch.tensor([val_loss], device=device, dtype=torch.float64)
            dist.broadcast(val_tensor, src=0)
            val_loss = float(val_tensor.item())
        info["curve"].append(
            {
                "epoch": info["epoch"] + 1,
                "step": info["step"],
                "train_loss": train_loss,
                "validation_loss": val_loss,
            }
        )
        if val_loss < info["best_loss"] - 1e-7:
            info.update(best_loss=val_loss, best_epoch=info["epoch"] + 1, bad_epochs=0)
            best_state = _state_copy(net)
        else:
            info["bad_epochs"] += 1
        info.update(epoch=info["epoch"] + 1, batch=0, epoch_loss=0.0)
        info["seconds"] += time.perf_counter() - started
        info["cpu_seconds"] += time.process_time() - cpu_started
        if info["bad_epochs"] >= hp.patience:
            log.info("early stopping after epoch %d (best %d)", info["epoch"], info["best_epoch"])
            break
        if stop.set and not ddp.enabled:
            checkpoint()
            return None
    net.load_state_dict(best_state)
    return net, info


# --- outputs -----------------------------------------------------------------------------


def write_outputs(contract: TrainingContract, data: Prepared, net: nn.Module, info: dict) -> dict:
    hp = contract.hyperparameters
    net = net.cpu()  # the artifact and its metrics are computed on CPU, as serving runs it
    metrics = evaluate(net, data, torch.device("cpu"))
    meta = {
        "format": 1,
        "task": data.task,
        "target": hp.target,
        "classes": data.classes,
        "feature_columns": data.preprocessor.feature_columns,
        "in_dim": data.x_train.shape[1],
        "out_dim": 1 if data.task == "regression" else len(data.classes or []),
        "hidden_sizes": hp.hidden_sizes,
        "dropout": hp.dropout,
        "target_mean": data.target_mean,
        "target_scale": data.target_scale,
        "hyperparameters": hp.model_dump(),
        "torch_version": torch.__version__,
    }
    samples_per_second = info["samples"] / info["seconds"] if info["seconds"] > 0 else 0.0
    report = {
        "task": data.task,
        "metrics": metrics,
        "loss_curve": info["curve"],
        "samples_per_second": samples_per_second,
        "train_seconds": info["seconds"],
        "train_cpu_seconds": info["cpu_seconds"],
        "steps": info["step"],
        "epochs": info["epoch"],
        "best_epoch": info["best_epoch"],
        "resumed_from_step": info["resumed_from_step"],
        "world_size": info["world_size"],
        "train_rows": len(data.x_train),
        "validation_rows": len(data.x_val),
    }
    save_model(contract.model_dir, net, data.preprocessor, meta, metrics)
    contract.output_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(contract.output_dir / "metrics.json", json.dumps(report, indent=2))
    plot_loss_curve(info["curve"], contract.output_dir / "loss_curve.png")
    if contract.model_uri:
        publish_model(contract.model_dir, contract.model_uri)
    return report


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    fig.savefig(path, dpi=80)
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
    ddp = Dist()
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
            "train=%s validation=%s model_dir=%s",
            contract.train,
            contract.validation,
            contract.model_dir,
        )
        data = prepare_data(contract)
        log.info(
            "task=%s rows train=%d validation=%d inputs=%d",
            data.task,
            len(data.x_train),
            len(data.x_val),
            data.x_train.shape[1],
        )
        result = train(contract, data, ddp, stop)
        if result is None:
            return EXIT_TERMINATED
        net, info = result
        if ddp.main:
            report = write_outputs(contract, data, net, info)
            log.info("done: %s", json.dumps(report["metrics"]))
        if ddp.enabled:
            dist.barrier()
        return 0
    except (DataError, ContractError) as exc:
        kind = "data error" if isinstance(exc, DataError) else "configuration error"
        message = f"{kind}: {exc}"
    except Exception as exc:
        traceback.print_exc()
        message = f"training failed: {type(exc).__name__}: {exc}"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(message, file=sys.stderr, flush=True)
    write_failure(failure_file_hint(argv, env), message)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
