"""Fixed tabular configurations on `benchmarks/tune.py`'s splits: is a gap between the tuned
model and the linear baseline the model family's or the selection's?

    .venv/bin/python benchmarks/tune_references.py [--splits 3] [--datasets breast_cancer,...]

On each seeded split of `tune.py` (the same train / validation / test rows) it trains a few
fixed configurations with the harness, with no search: the linear path alone (`[]`) at the
default and at a strong weight decay, and the default network (`auto`). Each is trained
twice: on the train rows with the validation rows choosing the epoch (what a trial does),
and again on train + validation for that epoch count scaled by the rows (a refit: the rows
the linear baseline is fitted on). It prints each one's test score (accuracy, or R2 for
diabetes) and, for classification, test log loss, with its best validation loss, next to
logistic regression / ridge on train and on train + validation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tune import REGRESSION, baseline, held_out, split  # noqa: E402

from workloads.training.harness import main as train_main  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "linear": {"hidden_sizes": "[]"},
    "linear, decay 1": {"hidden_sizes": "[]", "weight_decay": 1.0},
    "auto network": {"hidden_sizes": "auto"},
}


def train(work: Path, rows: Path, validation: Path, hps: dict[str, Any]) -> Path:
    argv = ["--train", str(rows), "--validation", str(validation), "--target", "target"]
    argv += ["--model-dir", str(work / "model"), "--output-data-dir", str(work / "output")]
    argv += ["--checkpoint-dir", str(work / "ckpt"), "--failure-file", str(work / "failure")]
    argv += [a for key, value in hps.items() for a in ("--hp", f"{key}={value}")]
    if train_main(argv, env={}) != 0:
        raise SystemExit((work / "failure").read_text())
    return work


PARTS = ("train", "validation", "test")


def write_split(name: str, seed: int, data: Path) -> None:
    """`tune.py`'s split, written once before the runs that read it."""
    train_rows, val, test = split(name, data, seed)
    test.to_csv(data / "test.csv", index=False)
    pd.concat([train_rows, val]).to_csv(data / "train-and-validation.csv", index=False)


def one(job: tuple[str, int, str, Path]) -> dict[str, Any]:
    name, seed, label, root = job
    data = root / f"{name}-{seed}"
    train_rows, val, test = (pd.read_csv(data / f"{part}.csv") for part in PARTS)
    hps = CONFIGS[label] | {"checkpoint_steps": 100_000}
    if name in REGRESSION:
        hps["problem"] = "regression"
    work = train(data / label, data / "train.csv", data / "validation.csv", hps)
    out = json.loads((work / "output" / "metrics.json").read_text())
    # The validation rows are in the refit's training rows: its early stopping is off and
    # its kept epoch is (near) the last, the count the first run found scaled by the rows.
    epochs = max(1, round(out["best_epoch"] * (len(train_rows) + len(val)) / len(train_rows)))
    refit = hps | {"epochs": epochs, "patience": epochs}
    both = data / "train-and-validation.csv"
    refit_work = train(data / f"{label} refit", both, data / "validation.csv", refit)
    return {
        "dataset": name,
        "split": seed,
        "config": label,
        "best_epoch": out["best_epoch"],
        "validation_loss": out["metrics"]["validation_loss"],
        "train": held_out(name, work / "model", test),
        "refit": held_out(name, refit_work / "model", test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--datasets", default="breast_cancer,wine,diabetes")
    args = parser.parse_args()
    names = args.datasets.split(",")
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory(prefix="bench-refs-") as tmp:
        root = Path(tmp)
        for name in names:
            for seed in range(args.splits):
                write_split(name, seed, root / f"{name}-{seed}")
        jobs = [(n, s, c, root) for n in names for c in CONFIGS for s in range(args.splits)]
        with ProcessPoolExecutor(2) as pool:
            rows = list(pool.map(one, jobs))
        for name in names:
            for seed in range(args.splits):
                data = root / f"{name}-{seed}"
                train_rows, val, test = (pd.read_csv(data / f"{part}.csv") for part in PARTS)
                both = baseline(name, pd.concat([train_rows, val]), test)
                alone = baseline(name, train_rows, test)
                rows.append({"dataset": name, "split": seed, "config": "sklearn linear",
                             "train": alone, "refit": both})  # fmt: skip
    for name in names:
        print(f"{name}: test score (log loss) per split; mean")
        for label in [*CONFIGS, "sklearn linear"]:
            mine = [r for r in rows if r["dataset"] == name and r["config"] == label]
            line = f"  {label:16s}"
            for key in ("train", "refit"):
                scores = " / ".join(f"{r[key][0]:.4f}" for r in mine)
                mean = statistics.mean(r[key][0] for r in mine)
                line += f"  {key}: {scores} = {mean:.4f}"
                if mine[0][key][1] is not None:
                    line += f" ({statistics.mean(r[key][1] for r in mine):.4f})"
            if "validation_loss" in mine[0]:
                losses = ", ".join(f"{r['validation_loss']:.3f}" for r in mine)
                line += f"  validation loss {losses}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
