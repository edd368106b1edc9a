"""The model artifact: the network, how it is saved, and the `Predictor` serving loads.

A model dir holds plain files: `model.pt` (a state_dict, loaded with `weights_only=True`),
`preprocess.json` (the fitted preprocessing), `meta.json` (task, classes, columns, network
shape) and `metrics.json` (validation metrics, read by the registry). It is written into a
temporary folder next to the target and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workloads.training.tasks.tabular.preprocess import InputError, Preprocessor

__all__ = ["InputError", "Predictor", "TabularNet", "load_model", "save_model"]

ARTIFACT_FILES = ("model.pt", "preprocess.json", "metrics.json", "meta.json")


class TabularNet(nn.Module):
    """An MLP plus a linear ("wide") path: the network is never worse than a linear model
    at the start, and early stopping keeps whatever the hidden layers add."""

    def __init__(self, in_dim: int, out_dim: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.deep = nn.Sequential(*layers)
        self.wide = nn.Linear(in_dim, out_dim)
        # The deep path starts at zero: the first epochs fit the linear model, and the hidden
        # layers only move the output as far as validation loss rewards (early stopping).
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deep(x) + self.wide(x)


class Predictor:
    """A loaded model: validate and transform raw records, run the forward pass, format."""

    def __init__(self, net: TabularNet, preprocessor: Preprocessor, meta: dict[str, Any]):
        self.net = net.eval()
        self.preprocessor = preprocessor
        self.meta = meta
        self.task: str = meta["task"]
        self.classes: list | None = meta.get("classes")
        self.feature_columns: list[str] = preprocessor.feature_columns
        self.target: str = meta["target"]
        self.metrics: dict[str, float] = meta.get("metrics", {})
        self._class_keys = [str(c) for c in self.classes] if self.classes else None
        self._y_mean = float(meta.get("target_mean", 0.0))
        self._y_scale = float(meta.get("target_scale", 1.0))

    def prepare_records(self, records: list[dict]) -> np.ndarray:
        return self.preprocessor.prepare_records(records)

    def prepare_rows(self, rows: list[list]) -> np.ndarray:
        return self.preprocessor.prepare_rows(rows)

    def predict_matrix(self, x: np.ndarray) -> list:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.preprocessor.output_dim:
            raise InputError(
                f"expected a matrix with {self.preprocessor.output_dim} columns, got {x.shape}"
            )
        with torch.inference_mode():
            out = self.net(torch.from_numpy(x))
            if self.task == "regression":
                values = (out[:, 0].double() * self._y_scale + self._y_mean).tolist()
                return values
            probs = torch.softmax(out, dim=1)
            best = probs.argmax(dim=1).tolist()
            rows = probs.tolist()
        classes, keys = self.classes, self._class_keys
        return [
            {"label": classes[b], "probabilities": dict(zip(keys, row, strict=True))}
            for b, row in zip(best, rows, strict=True)
        ]

    def predict_records(self, records: list[dict]) -> list:
        return self.predict_matrix(self.prepare_records(records))


def load_model(model_dir: str | Path) -> Predictor:
    model_dir = Path(model_dir)
    missing = [f for f in ARTIFACT_FILES if not (model_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a model artifact: missing {missing}")
    meta = json.loads((model_dir / "meta.json").read_text())
    meta["metrics"] = json.loads((model_dir / "metrics.json").read_text())
    preprocessor = Preprocessor.from_dict(json.loads((model_dir / "preprocess.json").read_text()))
    net = TabularNet(meta["in_dim"], meta["out_dim"], meta["hidden_sizes"], meta["dropout"])
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return Predictor(net, preprocessor, meta)


def save_model(
    model_dir: str | Path,
    net: nn.Module,
    preprocessor: Preprocessor,
    meta: dict[str, Any],
    metrics: dict[str, float],
) -> Path:
    """Write the artifact atomically: a temp dir next to `model_dir`, then a rename."""
    model_dir = Path(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_dir.parent / f".{model_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        torch.save(state, tmp / "model.pt")
        (tmp / "preprocess.json").write_text(json.dumps(preprocessor.to_dict()))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _swap_in(tmp, model_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def _swap_in(tmp: Path, model_dir: Path) -> None:
    if model_dir.exists() and not any(model_dir.iterdir()):
        try:
            model_dir.rmdir()
        except OSError:  # a mount point (SageMaker's /opt/ml/model): fill it file by file
            _replace_files(tmp, model_dir)
            return
    if model_dir.exists():
        old = model_dir.parent / f".{model_dir.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(model_dir, old)
        except OSError:
            _replace_files(tmp, model_dir)
            return
        os.rename(tmp, model_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, model_dir)


def _replace_files(tmp: Path, model_dir: Path) -> None:
    # Each file is renamed atomically; meta.json goes last, and load_model needs it,
    # so a reader sees either the old artifact or the complete new one's files.
    (model_dir / "meta.json").unlink(missing_ok=True)
    for name in ARTIFACT_FILES:
        part = model_dir / f".{name}.part"  # copy, as the mount may be another filesystem
        shutil.copyfile(tmp / name, part)
        os.replace(part, model_dir / name)


def publish_model(model_dir: str | Path, uri: str) -> str:
    """Copy a finished artifact to `file:///path` or `s3://bucket/prefix` (meta.json last)."""
    from urllib.parse import urlparse

    model_dir = Path(model_dir)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        dest = Path(parsed.path)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(model_dir, tmp)
        _swap_in(tmp, dest)
        shutil.rmtree(tmp, ignore_errors=True)
    elif parsed.scheme == "s3":
        import boto3  # only needed when publishing to S3

        client = boto3.client("s3")
        prefix = parsed.path.strip("/")
        for name in ARTIFACT_FILES:  # meta.json is last: its presence marks a whole artifact
            key = f"{prefix}/{name}" if prefix else name
            client.upload_file(str(model_dir / name), parsed.netloc, key)
    else:
        raise ValueError(f"unsupported model URI {uri!r}: use file:// or s3://")
    return uri
