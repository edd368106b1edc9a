"""The tabular task: CSV/Parquet rows, a target column, an MLP with a linear path.

Problems: binary and multiclass classification, regression (`problem`, inferred from the
label when unset). The fitted preprocessing (imputation, scaling, one-hot with unseen
categories handled) is saved in the artifact; serving applies exactly it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from workloads.monitoring.baseline import table_baseline
from workloads.training.data import (
    DataError,
    infer_problem,
    load_table,
    refuse_infinite_classes,
    split_target,
)
from workloads.training.tasks.base import InputError, TaskBase, TaskParams, eval_batches
from workloads.training.tasks.tabular.checks import check_labels, label_kind
from workloads.training.tasks.tabular.model import Predictor, TabularNet
from workloads.training.tasks.tabular.preprocess import Preprocessor

__all__ = ["TabularParams", "TabularTask", "Predictor", "TabularNet"]


class TabularParams(TaskParams):
    target: str = Field(min_length=1)
    problem: Literal["binary", "multiclass", "regression"] | None = None  # None: inferred
    # None: sized from the training rows (`auto_hidden_sizes`); [] is a linear model.
    hidden_sizes: list[int] | None = None
    dropout: float = Field(0.1, ge=0, lt=1)
    max_categories: int = Field(50, ge=1, le=100_000)  # one-hot width cap per category column

    @field_validator("hidden_sizes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        if isinstance(value, int):
            return [value]
        if isinstance(value, str):  # "128,64", "[128, 64]" or "128"; "auto" is None
            if value.strip() in ("auto", "none", "null"):
                return None
            text = value.strip().strip("[]")
            return [int(p) for p in text.replace(" ", ",").split(",") if p] if text else []
        return value

    @field_validator("hidden_sizes")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(v < 1 or v > 65_536 for v in value):
            raise ValueError("hidden sizes must be positive and at most 65536")
        return value

    @field_validator("problem", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return None if value in ("", "auto", "none", "null") else value


@dataclass
class Table:
    """A channel's labelled rows: features and the label, and where they came from."""

    features: pd.DataFrame
    labels: pd.Series
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Table:
        return Table(
            self.features.iloc[index].reset_index(drop=True),
            self.labels.iloc[index].reset_index(drop=True),
            self.source,
        )


def _json_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(score).rank().to_numpy()  # average ranks for ties (Mann-Whitney U)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auto_hidden_sizes(train_rows: int) -> list[int]:
    """Hidden layers sized from the data: about sqrt(rows) units (a power of two, 16 to 128),
    one layer under 2000 rows, two above. On small data a wide network fits noise that
    early stopping on a small validation split cannot see; the linear path carries the rest.
    """
    width = int(min(128, max(16, 2 ** round(math.log2(math.sqrt(max(train_rows, 1)))))))
    return [width] if train_rows < 2000 else [width, width // 2]


def target_statistics(y: np.ndarray) -> tuple[float, float]:
    """The mean and standard deviation a regression label is standardised with. Labels near
    the float64 limits (1e300, 1e-300) overflow or underflow in the squares of `std`; those
    are computed on the labels divided by their largest magnitude, and scaled back."""
    mean, std = float(y.mean()), float(y.std())
    if not (math.isfinite(mean) and math.isfinite(std)) or (std == 0 and np.ptp(y) > 0):
        peak = float(np.abs(y).max())
        unit = y / peak
        mean, std = float(unit.mean()) * peak, float(unit.std()) * peak
    return mean, std or 1.0


def stratified_holdout(
    labels: pd.Series, problem: str, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded validation/train row indices; stratified by class for classification, so a
    small validation set still has every class in proportion."""
    rng = np.random.default_rng(seed)
    if problem == "regression":
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


class TabularTask(TaskBase):
    name: ClassVar[str] = "tabular"
    Params = TabularParams
    artifact_files: ClassVar[tuple[str, ...]] = ("preprocess.json",)
    params: TabularParams

    def __init__(self, params: TabularParams, settings: Any) -> None:
        super().__init__(params, settings)
        self.problem: str | None = params.problem
        self.classes: list | None = None
        self.preprocessor: Preprocessor | None = None
        self.target_mean, self.target_scale = 0.0, 1.0
        self.rows: tuple[int, int] = (0, 0)
        self.hidden_sizes: list[int] = list(params.hidden_sizes or [])

    # -- data -------------------------------------------------------------------------

    def read_channel(self, location: str) -> Table:
        frame = load_table(location)
        features, labels = split_target(frame, self.params.target, location)
        check_labels(frame[self.params.target], self.params.target, location)
        return Table(features, labels, location)

    def _infer_problem(self, table: Table) -> str:
        try:
            return infer_problem(table.labels, self.problem)
        except DataError as exc:
            raise DataError(f"{table.source}: target column {self.params.target!r}: {exc}") from exc

    def _check_validation_labels(self, train: Table, validation: Table) -> None:
        """Validation labels of the train labels' kind (and finite numbers for regression)."""
        where = f"{validation.source}: target column {self.params.target!r}"
        kind, expected = label_kind(validation.labels), label_kind(train.labels)
        if kind != expected:
            raise DataError(f"{where} has {kind} where the train channel's are {expected}")
        if self.problem == "regression":
            values = validation.labels.to_numpy(dtype=np.float64)
            if not np.isfinite(values).all():
                raise DataError(f"{where} has non-finite values")

    def split(self, data: Table, fraction: float, seed: int) -> tuple[Table, Table]:
        if len(data) < 4:
            raise DataError(f"{data.source}: {len(data)} rows are too few to train on")
        self.problem = self._infer_problem(data)
        val_idx, train_idx = stratified_holdout(data.labels, self.problem, fraction, seed)
        if len(train_idx) < 2:
            raise DataError(
                f"{data.source}: validation_fraction {fraction} of {len(data)} rows leaves "
                f"{len(train_idx)} to train on; lower it or pass a validation channel"
            )
        return data.take(train_idx), data.take(val_idx)

    def fit_preprocessing(self, train: Table, validation: Table) -> None:
        if list(validation.features.columns) != list(train.features.columns):
            raise DataError(
                f"{validation.source}: columns {list(validation.features.columns)} differ "
                f"from the train channel's {list(train.features.columns)}"
            )
        self.problem = self._infer_problem(train)
        self._check_validation_labels(train, validation)
        try:
            self.preprocessor = Preprocessor.fit(train.features, self.params.max_categories)
        except InputError as exc:  # the training data's: the row is one of the train rows
            raise DataError(f"{train.source}: {exc}") from exc
        self.rows = (len(train), len(validation))
        if self.params.hidden_sizes is None:
            self.hidden_sizes = auto_hidden_sizes(len(train))
        if self.problem == "regression":
            y = train.labels.to_numpy(dtype=np.float64)
            self.target_mean, self.target_scale = target_statistics(y)
            return
        for table in (train, validation):
            where = f"{table.source}: target column {self.params.target!r}"
            refuse_infinite_classes(pd.unique(table.labels), where)
        both = pd.concat([train.labels, validation.labels], ignore_index=True)
        classes = sorted(pd.unique(both).tolist())
        if self.problem == "binary" and len(classes) > 2:
            raise DataError(
                f"problem binary but the train and validation labels have classes {classes}"
            )
        if train.labels.nunique() < 2:
            raise DataError(f"the training labels have a single class ({train.labels.iloc[0]!r})")
        self.classes = [_json_value(c) for c in classes]

    def _tensors(self, table: Table) -> TensorDataset:
        assert self.preprocessor is not None, "fit_preprocessing first"
        try:
            x = torch.from_numpy(self.preprocessor.transform_frame(table.features))
        except InputError as exc:  # a value of this channel the fitted columns cannot take
            raise DataError(f"{table.source}: {exc}") from exc
        if self.problem == "regression":
            y = table.labels.to_numpy(dtype=np.float64)
            with np.errstate(over="ignore"):  # out of range: named below
                scaled = ((y - self.target_mean) / self.target_scale).astype(np.float32)
            if not np.isfinite(scaled).all():
                i = int(np.argmin(np.isfinite(scaled)))
                raise DataError(
                    f"{table.source}: target column {self.params.target!r} value {y[i]:.6g} "
                    f"in row {i} is out of range: standardised with the training mean "
                    f"{self.target_mean:.6g} and scale {self.target_scale:.6g} it exceeds "
                    "float32, the dtype the model computes in"
                )
            return TensorDataset(x, torch.from_numpy(scaled))
        index = {c: i for i, c in enumerate(self.classes or [])}
        return TensorDataset(x, torch.tensor(table.labels.map(index).to_numpy(dtype=np.int64)))

    def datasets(self, train: Table, validation: Table) -> tuple[Dataset, Dataset]:
        return self._tensors(train), self._tensors(validation)

    # -- model ------------------------------------------------------------------------

    @property
    def out_dim(self) -> int:
        return 1 if self.problem == "regression" else len(self.classes or [])

    def build_model(self) -> nn.Module:
        assert self.preprocessor is not None, "fit_preprocessing first"
        return TabularNet(
            self.preprocessor.output_dim,
            self.out_dim,
            self.hidden_sizes,
            self.params.dropout,
        )

    def compute_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        out = model(x)
        if self.problem == "regression":
            return nn.functional.mse_loss(out[:, 0], y)
        return nn.functional.cross_entropy(out, y)

    def compute_metrics(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        outs, ys = [], []
        model.eval()
        with torch.inference_mode():
            for x, y in eval_batches(dataset, device):
                outs.append(model(x).float().cpu())
                ys.append(y.cpu())
        model.train()
        outputs, y_all = torch.cat(outs), torch.cat(ys)
        if self.problem == "regression":
            # In standardised units, scaled back at the end: labels near 1e300 or 1e-300
            # would overflow or underflow in the squares of the label's own units.
            scale = self.target_scale
            true = y_all.double().numpy()
            resid = true - outputs[:, 0].double().numpy()
            ss_tot = float(((true - true.mean()) ** 2).sum())
            mse = float((resid**2).mean())
            return {
                "r2": 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 0.0,
                "rmse": math.sqrt(mse) * scale,
                "mae": float(np.abs(resid).mean()) * scale,
                "validation_loss": mse,
            }
        y = y_all.numpy()
        logp = torch.log_softmax(outputs, dim=1).numpy()
        metrics = {
            "accuracy": float((logp.argmax(axis=1) == y).mean()),
            "log_loss": float(-logp[np.arange(len(y)), y].mean()),
        }
        if self.problem == "binary":
            metrics["auc"] = _auc(y, logp[:, 1])
        metrics["validation_loss"] = metrics["log_loss"]
        return metrics

    # -- run identity and reporting ------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        assert self.preprocessor is not None
        return {"in": self.preprocessor.output_dim, "n": self.rows[0], "problem": self.problem}

    def describe(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "train_rows": self.rows[0],
            "validation_rows": self.rows[1],
            "inputs": self.preprocessor.output_dim if self.preprocessor else 0,
            "hidden_sizes": self.hidden_sizes,
        }

    # -- monitoring -------------------------------------------------------------------

    def validation_predictions(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> list:
        raw = super().validation_predictions(model, dataset, device)
        if self.problem == "regression":
            return [v * self.target_scale + self.target_mean for v in raw]
        classes = self.classes or []
        return [{"label": classes[i]} for i in raw]

    def baseline(self, validation: Table, predictions: list) -> dict[str, Any]:
        """Per feature column its distribution on the validation rows, and the predictions'."""
        return table_baseline(self.name, validation.features, predictions)

    # -- artifact ---------------------------------------------------------------------

    def save(self, directory: Path, model: nn.Module) -> dict[str, Any]:
        assert self.preprocessor is not None
        (directory / "preprocess.json").write_text(json.dumps(self.preprocessor.to_dict()))
        return {
            "problem": self.problem,
            "target": self.params.target,
            "classes": self.classes,
            "feature_columns": self.preprocessor.feature_columns,
            "in_dim": self.preprocessor.output_dim,
            "out_dim": self.out_dim,
            "hidden_sizes": self.hidden_sizes,
            "dropout": self.params.dropout,
            "target_mean": self.target_mean,
            "target_scale": self.target_scale,
        }

    @classmethod
    def load_predictor(cls, directory: Path, meta: dict[str, Any]) -> Predictor:
        pre = Preprocessor.from_dict(json.loads((directory / "preprocess.json").read_text()))
        net = TabularNet(meta["in_dim"], meta["out_dim"], meta["hidden_sizes"], meta["dropout"])
        net.load_state_dict(
            torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        )
        return Predictor(net, pre, meta)
