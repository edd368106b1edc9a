"""The image task: a folder of class subfolders of PNG/JPEG files, a small residual CNN.

A channel is the ImageFolder layout (SageMaker's image classification accepts it too):
`<channel>/<class>/<image>.png|.jpg|.jpeg`; the classes are the folder names. Images are
decoded with Pillow (`decode.decode_image`, the same function serving uses), converted to
grayscale or RGB (`color`, by default from the training images), the shorter side resized to
`image_size` and centre-cropped, then standardised per channel with statistics fitted on the
training images. Training augments each batch with random horizontal flips and random crops
of a reflect-padded image, on the batch's device.

Decoding is done once: a channel that fits in `cache_mb` is decoded up front (threads; Pillow
releases the GIL) and trained from memory; a larger one is decoded per step by DataLoader
workers (`data_workers`).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from workloads.monitoring.inputs import features_baseline, image_features, input_spec
from workloads.training.data import DataError, local_channel
from workloads.training.tasks.base import TaskParams
from workloads.training.tasks.classify import (
    ClassificationTask,
    Labelled,
    fit_classes,
    label_tensor,
)
from workloads.training.tasks.image.decode import (
    SUFFIXES,
    ImageDecodeError,
    ImagePredictor,
    decode_image,
    normalise,
)
from workloads.training.tasks.image.model import ResNetSmall

__all__ = ["ImageParams", "ImagePredictor", "ImageTask", "ResNetSmall", "decode_image"]
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
STATS_SAMPLE = 512  # training images the normalisation statistics are fitted on


class ImageParams(TaskParams):
    image_size: int = Field(64, ge=8, le=512)
    color: Literal["auto", "rgb", "gray"] = "auto"  # auto: gray if every training image is
    width: int = Field(32, ge=4, le=512)  # channels of the first stage (doubling per stage)
    stages: int = Field(3, ge=1, le=6)
    dropout: float = Field(0.1, ge=0, lt=1)
    flip: bool = True  # random horizontal flips (off for text-like images: digits)
    crop: int = Field(4, ge=0, le=64)  # random-crop padding in pixels (0: off)
    cache_mb: int = Field(1024, ge=0)  # decode up front when the channel fits in this


class ImageFiles(Dataset):
    """Decodes on every access: for channels too large to hold decoded (DataLoader workers)."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, mode: str, size: int) -> None:
        self.paths, self.labels, self.mode, self.size = paths, labels, mode, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(decode_image(self.paths[i], self.mode, self.size)), self.labels[i]


def augment(x: torch.Tensor, flip: bool, pad: int) -> torch.Tensor:
    """Random horizontal flips and random crops of a reflect-padded batch (n, c, h, w)."""
    n, _, h, w = x.shape
    if flip:
        flipped = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    if pad:
        padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
        rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    return x


def _decode_all(paths: list[Path], mode: str, size: int) -> np.ndarray:
    def one(path: Path) -> np.ndarray:
        try:
            return decode_image(path, mode, size)
        except ImageDecodeError as exc:
            raise DataError(f"{path}: {exc}") from None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(one, paths)))


class ImageTask(ClassificationTask):
    name: ClassVar[str] = "image"
    Params = ImageParams
    harness_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 30,
        "learning_rate": 2e-3,
        "patience": 5,
        "batch_size": 64,
    }
    channels_last: ClassVar[bool] = True
    artifact_files: ClassVar[tuple[str, ...]] = ("image.json",)
    params: ImageParams

    def __init__(self, params: ImageParams, settings: Any) -> None:
        super().__init__(params, settings)
        self.classes: list = []
        self.mode = "RGB"
        self.mean: list[float] = []
        self.std: list[float] = []
        self.data_workers = 0
        self.rows = (0, 0)
        self._decoded: dict[str, np.ndarray] = {}

    # -- data -------------------------------------------------------------------------

    def read_channel(self, location: str) -> Labelled:
        root = local_channel(location)
        if not root.is_dir():
            raise DataError(
                f"{location}: an image channel is a folder of class folders "
                f"(<channel>/<class>/<image>.png|.jpg|.jpeg)"
            )
        paths, labels = [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name[:1] != "."):
            files = sorted(
                p
                for p in folder.rglob("*")
                if p.is_file() and p.suffix.lower() in SUFFIXES and p.name[:1] != "."
            )
            paths += files
            labels += [folder.name] * len(files)
        if not paths:
            raise DataError(
                f"{location}: no class folders with {', '.join(SUFFIXES)} files "
                f"(expected <channel>/<class>/<image>)"
            )
        return Labelled(paths, labels, str(location))

    def _pick_mode(self, paths: list[Path]) -> str:
        if self.params.color != "auto":
            return "RGB" if self.params.color == "rgb" else "L"
        for path in paths:
            try:
                with Image.open(path) as img:
                    if img.mode not in GRAY_MODES:
                        return "RGB"
            except OSError as exc:
                raise DataError(f"{path}: cannot read the image: {exc}") from None
        return "L"

    def fit_preprocessing(self, train: Labelled, validation: Labelled) -> None:
        self.classes = fit_classes(train, validation)
        self.mode = self._pick_mode(train.items)
        size = self.params.image_size
        channels = 1 if self.mode == "L" else 3
        total = (len(train) + len(validation)) * channels * size * size
        if total <= self.params.cache_mb * 2**20:  # decode once, train from memory
            self._decoded = {
                "train": _decode_all(train.items, self.mode, size),
                "validation": _decode_all(validation.items, self.mode, size),
            }
            sample = self._decoded["train"][:STATS_SAMPLE]
        else:
            order = np.random.default_rng(0).permutation(len(train))[:STATS_SAMPLE]
            sample = _decode_all([train.items[i] for i in sorted(order)], self.mode, size)
            self.data_workers = min(4, max(1, (os.cpu_count() or 1) - 1))
        pixels = sample.astype(np.float64) / 255.0
        self.mean = pixels.mean(axis=(0, 2, 3)).round(6).tolist()
        self.std = [max(s, 1e-3) for s in pixels.std(axis=(0, 2, 3)).round(6).tolist()]
        self.rows = (len(train), len(validation))

    def datasets(self, train: Labelled, validation: Labelled) -> tuple[Dataset, Dataset]:
        out = []
        for key, part in (("train", train), ("validation", validation)):
            labels = label_tensor(part.labels, self.classes)
            if key in self._decoded:
                out.append(TensorDataset(torch.from_numpy(self._decoded.pop(key)), labels))
            else:
                out.append(ImageFiles(part.items, labels, self.mode, self.params.image_size))
        return out[0], out[1]

    # -- model ------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        p = self.params
        channels = 1 if self.mode == "L" else 3
        return ResNetSmall(channels, len(self.classes), p.width, p.stages, p.dropout)

    def model_input(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 images on the device -> the normalised (and, in training, augmented) batch."""
        x = normalise(images, self.mean, self.std)
        if images.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return augment(x, self.params.flip, self.params.crop) if train else x

    def compute_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        images, y = batch
        return nn.functional.cross_entropy(model(self.model_input(images, train=True)), y)

    def evaluated(self, model: nn.Module) -> nn.Module:
        return _Normalised(model, self)

    # -- run identity and reporting ------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        return {"classes": self.classes, "mode": self.mode, "n": self.rows[0]}

    def describe(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "classes": len(self.classes),
            "mode": self.mode,
            "image_size": self.params.image_size,
            "train_rows": self.rows[0],
            "validation_rows": self.rows[1],
            "decoded_in_memory": self.data_workers == 0,
        }

    # -- monitoring -------------------------------------------------------------------

    def baseline(self, validation: Labelled, predictions: list) -> dict[str, Any]:
        """Per validation image its size, brightness, contrast, mode and format (as the
        monitor measures captured images), and the predictions' distribution."""
        rows = [image_features(path) for path in validation.items]
        return features_baseline(self.name, rows, predictions, input_spec("image"))

    # -- artifact ---------------------------------------------------------------------

    def save(self, directory: Path, model: nn.Module) -> dict[str, Any]:
        p = self.params
        doc = {
            "classes": self.classes,
            "mode": self.mode,
            "image_size": p.image_size,
            "mean": self.mean,
            "std": self.std,
            "width": p.width,
            "stages": p.stages,
            "dropout": p.dropout,
        }
        (directory / "image.json").write_text(json.dumps(doc, indent=2))
        return {"problem": self.problem, "classes": self.classes, "feature_columns": ["image"]}

    @classmethod
    def load_predictor(cls, directory: Path, meta: dict[str, Any]) -> ImagePredictor:
        doc = json.loads((directory / "image.json").read_text())
        channels = 1 if doc["mode"] == "L" else 3
        net = ResNetSmall(channels, len(doc["classes"]), doc["width"], doc["stages"], 0.0)
        net.load_state_dict(
            torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        )
        return ImagePredictor(net, doc)


class _Normalised(nn.Module):
    """The model behind the task's normalisation: what metrics evaluate on uint8 batches."""

    def __init__(self, model: nn.Module, task: ImageTask) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.task.model_input(images, train=False))
