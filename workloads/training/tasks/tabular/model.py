"""The tabular network and the predictor serving loads from a tabular artifact."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from workloads.training.tasks.tabular.preprocess import InputError, Preprocessor


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

    def inference_plan(self) -> list[tuple[torch.Tensor, torch.Tensor, bool]] | None:
        """The eval-mode network as (weight^T, bias, relu after) steps for `run_plan`, or None
        if it holds a layer the plan does not know. Serving's small batches spend most of a
        forward pass in nn.Module call overhead; the plan runs the same arithmetic in one
        torch call per layer."""
        steps: list[list] = []
        for layer in self.deep:
            if isinstance(layer, nn.Linear):
                steps.append([layer.weight.detach().t(), layer.bias.detach(), False])
            elif isinstance(layer, nn.ReLU) and steps:
                steps[-1][2] = True
            elif not isinstance(layer, nn.Dropout):  # identity in eval mode
                return None
        wide = [self.wide.weight.detach().t(), self.wide.bias.detach(), False]
        return [tuple(step) for step in [*steps, wide]]  # type: ignore[misc]


def run_plan(plan: list[tuple[torch.Tensor, torch.Tensor, bool]], x: torch.Tensor):
    """`TabularNet.forward` in eval mode from its `inference_plan`: deep path + wide path."""
    h = x
    for weight, bias, relu in plan[:-1]:
        h = torch.addmm(bias, h, weight)
        if relu:
            h.relu_()
    weight, bias, _ = plan[-1]
    return h.add_(torch.addmm(bias, x, weight))


# A batch of at most this many multiply-adds (rows x the network's weights) runs its forward
# pass in numpy: a torch op costs several microseconds of dispatch, a numpy matmul of a few
# rows about one, and serving's small batches of a small network are all dispatch. Above it
# torch wins (its kernels are faster once the arithmetic dominates). Measured on the reference
# network (10k multiply-adds a row): numpy ahead up to ~16 rows, even at 32-64.
NUMPY_MAX_MACS = 200_000


def numpy_plan(plan: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> list[np.ndarray]:
    """The plan as numpy copies for `run_numpy_plan`, fused: the wide path rides along with
    the first deep layer (one matmul of x with [W1 | Wwide]) and the last deep layer's bias
    is added to the wide path's, so a forward pass is 3 numpy calls per hidden layer + 2.
    Needs a hidden layer (a plan of at least 3 steps)."""
    (w1, b1, _), *hidden, (w_last, b_last, _), (w_wide, b_wide, _) = plan
    first = np.concatenate([w1.numpy(), w_wide.numpy()], axis=1)
    bias = np.concatenate([b1.numpy(), b_wide.numpy() + b_last.numpy()])
    arrays = [first, bias]
    for weight, b, _ in hidden:
        arrays += [np.array(weight.numpy()), np.array(b.numpy())]
    return [*arrays, np.array(w_last.numpy())]


def run_numpy_plan(plan: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """`run_plan` in numpy from `numpy_plan` (float32, the same arithmetic up to summation
    order and the bias added first); every hidden layer is followed by a ReLU."""
    first, bias, *hidden, last = plan
    width = len(first[0]) - len(last[0])  # the first hidden layer's
    a = np.dot(x, first)  # np.dot: a little less call overhead than @ for 2-D arrays
    a += bias
    h = a[:, :width]
    np.maximum(h, 0.0, out=h)
    for i in range(0, len(hidden), 2):
        h = np.dot(h, hidden[i])
        h += hidden[i + 1]
        np.maximum(h, 0.0, out=h)
    out = np.dot(h, last)
    out += a[:, width:]
    return out


class Predictor:
    """A loaded model: validate and transform raw records, run the forward pass, format."""

    def __init__(self, net: TabularNet, preprocessor: Preprocessor, meta: dict[str, Any]):
        broken = [name for name, p in net.named_parameters() if not p.isfinite().all()]
        if broken:  # a diverged training run: every answer would be made up
            raise ValueError(f"model.pt has non-finite weights in {', '.join(broken)}")
        self.net = net.eval()
        self.preprocessor = preprocessor
        self.meta = meta
        # Format 1 artifacts named the problem "task".
        self.task: str = meta.get("problem") or meta["task"]
        self.classes: list | None = meta.get("classes")
        self.feature_columns: list[str] = preprocessor.feature_columns
        self.target: str = meta["target"]
        self.metrics: dict[str, float] = meta.get("metrics", {})
        self._class_keys = [str(c) for c in self.classes] if self.classes else None
        self._y_mean = float(meta.get("target_mean", 0.0))
        self._y_scale = float(meta.get("target_scale", 1.0))
        self._plan = net.inference_plan() if isinstance(net, TabularNet) else None
        # The same network as numpy arrays copied at load, for the small batches whose torch
        # forward pass would be mostly op dispatch (a network with hidden layers, each with
        # its ReLU, as `TabularNet` builds them).
        self._numpy_plan: list[np.ndarray] = []
        self.numpy_max_rows = 0  # batches up to this many rows take the numpy path
        plan = self._plan
        if plan is not None and len(plan) >= 3 and all(relu for _, _, relu in plan[:-2]):
            self._numpy_plan = numpy_plan(plan)
            macs = sum(w.numel() for w, _, _ in plan)
            self.numpy_max_rows = NUMPY_MAX_MACS // macs

    def prepare_records(self, records: list[dict]) -> np.ndarray:
        return self.preprocessor.prepare_records(records)

    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of one instance (record) this model accepts."""
        return self.preprocessor.json_schema()

    def prepare_rows(self, rows: list[list]) -> np.ndarray:
        return self.preprocessor.prepare_rows(rows)

    def predict_matrix(self, x: np.ndarray) -> list:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.preprocessor.output_dim:
            raise InputError(
                f"expected a matrix with {self.preprocessor.output_dim} columns, got {x.shape}"
            )
        if len(x) <= self.numpy_max_rows:
            return self._predict_numpy(x)
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            out = self.net(xt) if self._plan is None else run_plan(self._plan, xt)
            if not np.isfinite(out.numpy()).all():  # numpy: a tenth of torch's call overhead
                raise self._overflow(x, out.numpy())
            if self.task == "regression":
                values = (out[:, 0].double() * self._y_scale + self._y_mean).tolist()
                return values
            probs = torch.softmax(out, dim=1)
            best = probs.argmax(dim=1).tolist()
            rows = probs.tolist()
        return self._classified(best, rows)

    def _predict_numpy(self, x: np.ndarray) -> list:
        """`predict_matrix` of a small batch: the forward pass in numpy, the softmax of its
        few logits in plain Python (float64 from the float32 logits: within float32 rounding
        of torch's softmax, and the same argmax)."""
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: named below
            out = run_numpy_plan(self._numpy_plan, x)
        logits = out.tolist()
        # A sum of floats is finite only if every one is (inf - inf and NaN stay NaN).
        if not all(math.isfinite(sum(row)) for row in logits):
            raise self._overflow(x, out)
        if self.task == "regression":
            scale, mean = self._y_scale, self._y_mean
            return [row[0] * scale + mean for row in logits]
        best, rows = [], []
        for row in logits:
            top = max(row)
            weights = [math.exp(v - top) for v in row]
            total = sum(weights)
            rows.append([w / total for w in weights])
            best.append(row.index(top))
        return self._classified(best, rows)

    def _classified(self, best: list[int], rows: list[list[float]]) -> list:
        classes, keys = self.classes, self._class_keys
        return [
            {"label": classes[b], "probabilities": dict(zip(keys, row, strict=True))}
            for b, row in zip(best, rows, strict=True)
        ]

    def _overflow(self, x: np.ndarray, out: np.ndarray) -> InputError:
        """A non-finite output from finite inputs and finite weights (checked at load): the
        forward pass overflowed float32 because the input is far outside the training data.
        Names the instance and its most extreme standardised column."""
        i = int(np.nonzero(~np.isfinite(out).all(axis=1))[0][0])
        slot = int(np.abs(x[i]).argmax())
        col = self.preprocessor.column_at(slot)
        return InputError(
            f"instance {i}: the model's output overflows float32 for this input; column "
            f"{col.name!r} is {float(x[i, slot]):.3g} training standard deviations from the "
            "training mean, too far outside the data the model was trained on"
        )

    def predict_records(self, records: list[dict]) -> list:
        return self.predict_matrix(self.prepare_records(records))
