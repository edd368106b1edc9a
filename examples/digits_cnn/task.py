"""A team's own model on the mlinfra harness: a small CNN on 8x8 handwritten digits.

This file is all a team writes. The harness (`python -m workloads.train`) brings the
training contract, `torchrun`/DDP, AMP on CUDA, checkpoints and resume, SIGTERM, early
stopping, the metric line and the atomic artifact; `python -m workloads.serve` loads the
artifact through `DigitsTask.load_predictor` and brings batching, workers and the bad-input
rules. Train it with `--hp task=examples.digits_cnn.task:DigitsTask` (see README.md here).

Data: CSV/Parquet with 64 pixel columns `p0`..`p63` (0-16, as scikit-learn's digits) and a
`label` column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from workloads.training.data import DataError, load_table
from workloads.training.tasks.base import InputError, TaskBase, TaskParams, eval_batches

PIXELS = [f"p{i}" for i in range(64)]


class DigitsParams(TaskParams):
    channels: int = Field(16, ge=1, le=256)  # width of the first convolution
    label: str = "label"


class DigitsNet(nn.Module):
    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.head = nn.Linear(2 * channels * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class DigitsPredictor:
    task = "multiclass"
    feature_columns = PIXELS

    def __init__(self, net: DigitsNet, scale: float, classes: list) -> None:
        self.net, self.scale, self.classes = net.eval(), scale, classes

    def _matrix(self, values: list[list[Any]]) -> np.ndarray:
        try:
            x = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("pixel values must be numbers") from None
        if x.ndim != 2 or x.shape[1] != len(PIXELS):
            raise InputError(f"each image needs {len(PIXELS)} pixel values p0..p63")
        if not np.isfinite(x).all() or (x < 0).any() or (x > self.scale).any():
            raise InputError(f"pixel values must be between 0 and {self.scale:g}")
        return (x / self.scale).astype(np.float32)

    def prepare_records(self, records: list[dict]) -> np.ndarray:
        missing = sorted({p for r in records for p in PIXELS if p not in r}, key=PIXELS.index)
        if missing:
            raise InputError(f"missing pixel columns: {missing[:5]}")
        return self._matrix([[r[p] for p in PIXELS] for r in records])

    def prepare_rows(self, rows: list[list]) -> np.ndarray:
        return self._matrix(rows)

    def predict_matrix(self, x: np.ndarray) -> list:
        with torch.inference_mode():
            probs = torch.softmax(self.net(torch.from_numpy(x).view(-1, 1, 8, 8)), dim=1)
        return [
            {
                "label": self.classes[int(row.argmax())],
                "probabilities": {
                    str(c): float(p) for c, p in zip(self.classes, row.tolist(), strict=True)
                },
            }
            for row in probs
        ]


class DigitsTask(TaskBase):
    name = "digits-cnn"
    Params = DigitsParams
    harness_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 30,
        "batch_size": 64,
        "learning_rate": 3e-3,
        "patience": 5,
    }
    channels_last = True
    artifact_files = ("digits.json",)

    def read_channel(self, location: str) -> pd.DataFrame:
        frame = load_table(location)
        missing = [c for c in [*PIXELS, self.params.label] if c not in frame.columns]
        if missing:
            raise DataError(f"{location}: missing columns {missing[:5]}")
        return frame

    def fit_preprocessing(self, train: pd.DataFrame, validation: pd.DataFrame) -> None:
        self.scale = float(train[PIXELS].to_numpy().max()) or 1.0
        self.classes = sorted(pd.unique(train[self.params.label]).tolist())

    def _tensors(self, frame: pd.DataFrame) -> TensorDataset:
        x = torch.tensor(frame[PIXELS].to_numpy(np.float32) / self.scale).view(-1, 1, 8, 8)
        index = {c: i for i, c in enumerate(self.classes)}
        y = torch.tensor(frame[self.params.label].map(index).fillna(-100).to_numpy(np.int64))
        return TensorDataset(x, y)

    def datasets(self, train, validation):
        return self._tensors(train), self._tensors(validation)

    def build_model(self) -> nn.Module:
        return DigitsNet(self.params.channels, len(self.classes))

    def compute_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def compute_metrics(self, model, dataset, device) -> dict[str, float]:
        losses, correct, n = 0.0, 0, 0
        model.eval()
        with torch.inference_mode():
            for x, y in eval_batches(dataset, device):
                out = model(x).float()
                losses += float(nn.functional.cross_entropy(out, y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
        model.train()
        return {"accuracy": correct / n, "validation_loss": losses / n}

    def fingerprint(self) -> dict[str, Any]:
        return {"classes": self.classes}

    def save(self, directory: Path, model: nn.Module) -> dict[str, Any]:
        doc = {"scale": self.scale, "classes": self.classes, "channels": self.params.channels}
        (directory / "digits.json").write_text(json.dumps(doc))
        return {"problem": "multiclass", "classes": self.classes}

    @classmethod
    def load_predictor(cls, directory: Path, meta: dict[str, Any]) -> DigitsPredictor:
        doc = json.loads((directory / "digits.json").read_text())
        net = DigitsNet(doc["channels"], len(doc["classes"]))
        net.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
        return DigitsPredictor(net, doc["scale"], doc["classes"])
