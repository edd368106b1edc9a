"""What the classification tasks share (image, text): labels, metrics and the answer shape.

Both tasks read labelled examples whose classes come from the data, hold out a stratified
validation share, report accuracy / log loss, and answer one `{"label", "probabilities"}`
object per input, as the tabular classifier does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from workloads.training.data import DataError, refuse_infinite_classes
from workloads.training.tasks.base import InputError, TaskBase, eval_batches


@dataclass
class Labelled:
    """A channel's examples (image paths, texts...) and their labels, and their source."""

    items: list[Any]
    labels: list[Any]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Labelled:
        return Labelled(
            [self.items[i] for i in index], [self.labels[i] for i in index], self.source
        )


def stratified_split(data: Labelled, fraction: float, seed: int) -> tuple[Labelled, Labelled]:
    """(train, validation): a seeded validation share of every class."""
    from workloads.training.tasks.tabular import stratified_holdout

    if len(data) < 4:
        raise DataError(f"{data.source}: {len(data)} examples are too few to train on")
    val_idx, train_idx = stratified_holdout(pd.Series(data.labels), "multiclass", fraction, seed)
    return data.take(train_idx), data.take(val_idx)


def fit_classes(train: Labelled, validation: Labelled) -> list[Any]:
    """The sorted classes of both channels; a classifier needs two or more in training."""
    if len(set(train.labels)) < 2:
        raise DataError(
            f"{train.source}: the training examples have a single class "
            f"({train.labels[0] if train.labels else None!r}); a classifier needs two or more"
        )
    for channel in (train, validation):
        refuse_infinite_classes(set(channel.labels), channel.source)
    values = sorted(set(train.labels) | set(validation.labels), key=lambda v: (str(type(v)), v))
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def label_tensor(labels: list[Any], classes: list[Any]) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in labels], dtype=torch.long)


def classification_metrics(
    model: nn.Module, dataset: Dataset, device: torch.device
) -> dict[str, float]:
    """Accuracy and log loss (= `validation_loss`) of a dataset of (input, class index)."""
    loss, correct, n = 0.0, 0, 0
    model.eval()
    with torch.inference_mode():
        for x, y in eval_batches(dataset, device):
            out = model(x).float()
            loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    model.train()
    return {"accuracy": correct / n, "log_loss": loss / n, "validation_loss": loss / n}


def check_row(row: Any, i: int, what: str) -> None:
    """A batch row of a one-column task (the image, or the text) holds exactly one value."""
    if not isinstance(row, list | tuple):
        kind = type(row).__name__
        raise InputError(f"row {i}: expected a list of one value ({what}), got {kind}")
    if len(row) != 1:
        raise InputError(f"row {i}: expected one value ({what}), got {len(row)}")


def format_predictions(logits: torch.Tensor, classes: list[Any]) -> list[dict[str, Any]]:
    """One `{"label", "probabilities"}` per row of logits."""
    probs = torch.softmax(logits.float(), dim=1).tolist()
    keys = [str(c) for c in classes]
    return [
        {
            "label": classes[max(range(len(row)), key=row.__getitem__)],
            "probabilities": dict(zip(keys, row, strict=True)),
        }
        for row in probs
    ]


class ClassificationTask(TaskBase):
    """What the image and text tasks share: a stratified split, the classes, the metrics."""

    classes: list

    @property
    def problem(self) -> str:
        return "binary" if len(self.classes) == 2 else "multiclass"

    def split(self, data: Labelled, fraction: float, seed: int) -> tuple[Labelled, Labelled]:
        return stratified_split(data, fraction, seed)

    def compute_metrics(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        return classification_metrics(self.evaluated(model), dataset, device)

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The model as metrics and predictions run it on the datasets' inputs."""
        return model

    def validation_predictions(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> list:
        """`{"label": ...}` per validation example, as serving answers (the baseline's
        prediction distribution)."""
        indices = super().validation_predictions(self.evaluated(model), dataset, device)
        return [{"label": self.classes[i]} for i in indices]
