"""The task protocol: what a kind of data brings to the training harness.

The harness (`workloads.training.harness`) owns the training contract, `torchrun`/DDP, AMP,
checkpoints and resume, SIGTERM, early stopping, the metric line and the atomic artifact. A
task owns the data: it reads a channel, fits its preprocessing, builds the model, computes
the loss and the metrics, saves what serving needs and loads a predictor back. Every rank
runs the same task code on the same data, so fitted preprocessing must be deterministic.

The call order on each rank:

    task = Task(params, settings)
    train = task.read_channel(uri)                  # and the validation channel, if any
    train, val = task.split(train, fraction, seed)  # only without a validation channel
    task.fit_preprocessing(train, val)
    train_ds, val_ds = task.datasets(train, val)    # torch Datasets (or a TensorDataset)
    model = task.build_model()
    loss = task.compute_loss(model, batch)          # per step; `model` may be DDP-wrapped
    metrics = task.compute_metrics(model, val_ds, device)   # per epoch, on rank 0
    preds = task.validation_predictions(model, val_ds, device)  # rank 0, once at the end
    baseline = task.baseline(val, preds)           # rank 0: baseline.json, for monitoring
    meta = task.save(directory, model)              # rank 0, into the artifact being written
    predictor = TaskClass.load_predictor(directory, meta)   # serving, batch scoring

`TaskBase` gives defaults for everything but the data-specific core.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

# What `load_task` checks a class has before the harness uses it.
REQUIRED_MEMBERS = (
    "name",
    "Params",
    "read_channel",
    "fit_preprocessing",
    "datasets",
    "build_model",
    "compute_loss",
    "compute_metrics",
    "save",
    "load_predictor",
)
EVAL_BATCH = 8192


class InputError(ValueError):
    """A request's input cannot be used by the model; the message says which and why.
    Serving answers it with a 400 and keeps serving."""


def check_batch(values: Any, what: str) -> None:
    """A request's instances (or a batch's rows) are a non-empty list: anything else would
    fail deep in a task's decoding, naming nothing."""
    if not isinstance(values, list):
        raise InputError(f"expected a list of {what}s, got {type(values).__name__}")
    if not values:
        raise InputError(f"expected at least one {what}, got an empty list")


class TaskParams(BaseModel):
    """Base of a task's own hyperparameters: unknown names are errors."""

    model_config = ConfigDict(extra="forbid")


@runtime_checkable
class Predictor(Protocol):
    """A loaded model as serving and batch scoring use it.

    `prepare_records` / `prepare_rows` validate one request's JSON records or CSV rows and
    turn them into model input (raising the task's input error, a `ValueError`, naming
    what is wrong); `predict_matrix` runs a batch of prepared inputs and formats one
    JSON-ready prediction per row. Optional: `input_schema()`, the JSON Schema of one
    instance, which the server publishes in /openapi.json. The server never sends a
    non-finite prediction: a predictor that returns one gets a logged 500.
    """

    task: str
    feature_columns: list[str]

    def prepare_records(self, records: list[dict]) -> np.ndarray: ...

    def prepare_rows(self, rows: list[list]) -> np.ndarray: ...

    def predict_matrix(self, x: np.ndarray) -> list: ...


@runtime_checkable
class Task(Protocol):
    """A kind of data and its model. See the module docstring for the call order."""

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    # Defaults for harness settings the user left unset (e.g. {"learning_rate": 3e-4}).
    harness_defaults: ClassVar[Mapping[str, Any]]
    # True: on CUDA, the model and 4-D inputs use channels_last (convolutional models).
    channels_last: ClassVar[bool]

    def __init__(self, params: Any, settings: Any) -> None: ...

    def read_channel(self, location: str) -> Any:
        """Read one channel (a file, a folder, `file://` or `s3://`); raise DataError."""
        ...

    def split(self, data: Any, fraction: float, seed: int) -> tuple[Any, Any]:
        """(train, validation) when there is no validation channel; seeded."""
        ...

    def fit_preprocessing(self, train: Any, validation: Any) -> None:
        """Fit (deterministically) what turns raw data into model input."""
        ...

    def datasets(self, train: Any, validation: Any) -> tuple[Dataset, Dataset]: ...

    def build_model(self) -> nn.Module: ...

    def compute_loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def compute_metrics(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        """Validation metrics; always includes `validation_loss` (early stopping, tuning)."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this run's data and model shape (a checkpoint of another is
        ignored)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Facts for the log and metrics.json (rows, classes, problem type...)."""
        ...

    def validation_predictions(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> list:
        """The model's predictions on the validation set, as serving formats them (labels
        or values): the baseline's prediction distribution."""
        ...

    def baseline(self, validation: Any, predictions: list) -> dict[str, Any]:
        """The monitoring baseline (`workloads.monitoring.baseline`): per input feature
        what the monitor compares traffic with, and the prediction distribution."""
        ...

    def save(self, directory: Path, model: nn.Module) -> dict[str, Any]:
        """Write the task's files (preprocessing, vocabulary...) into the artifact folder
        being assembled, and return what goes into meta.json. The harness writes the
        weights (model.pt), meta.json and metrics.json itself."""
        ...

    @classmethod
    def load_predictor(cls, directory: Path, meta: dict[str, Any]) -> Predictor: ...


class TaskBase:
    """Defaults for the optional parts of the protocol; subclass and fill in the rest."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = TaskParams
    harness_defaults: ClassVar[Mapping[str, Any]] = {}
    channels_last: ClassVar[bool] = False
    # Files `save` writes, checked by `load_model` before loading.
    artifact_files: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Any, settings: Any) -> None:
        self.params = params
        self.settings = settings

    def split(self, data: Any, fraction: float, seed: int) -> tuple[Any, Any]:
        n = len(data)
        order = np.random.default_rng(seed).permutation(n)
        n_val = max(1, round(fraction * n))
        return _take(data, np.sort(order[n_val:])), _take(data, np.sort(order[:n_val]))

    def fingerprint(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {}

    def validation_predictions(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> list:
        """Class indices (outputs wider than one) or values (one output)."""
        outs = []
        model.eval()
        with torch.inference_mode():
            for batch in eval_batches(dataset, device):
                x = batch[0] if isinstance(batch, tuple | list) else batch
                outs.append(model(x).float().cpu())
        model.train()
        out = torch.cat(outs)
        out = out.reshape(len(out), -1)
        if out.shape[1] > 1:
            return out.argmax(dim=1).tolist()
        return out[:, 0].double().tolist()

    def baseline(self, validation: Any, predictions: list) -> dict[str, Any]:
        """Only the prediction distribution; a task knowing its inputs adds features."""
        from workloads.monitoring.baseline import prediction_baseline

        return prediction_baseline(self.name, predictions)


def _take(data: Any, index: np.ndarray) -> Any:
    if hasattr(data, "iloc"):
        return data.iloc[index].reset_index(drop=True)
    if isinstance(data, list):
        return [data[i] for i in index]
    return data[index]


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move a batch (tensors in tuples, lists or dicts) to `device`."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


def eval_batches(
    dataset: Dataset, device: torch.device, batch_size: int = EVAL_BATCH
) -> Iterator[Any]:
    """The dataset in order, in batches on `device` (for metrics and predictions)."""
    if isinstance(dataset, TensorDataset):
        n = len(dataset.tensors[0])
        for i in range(0, n, batch_size):
            yield tuple(t[i : i + batch_size].to(device) for t in dataset.tensors)
        return
    for batch in DataLoader(dataset, batch_size=min(batch_size, 256), shuffle=False):
        yield to_device(batch, device)
