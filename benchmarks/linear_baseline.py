"""Tabular defaults against scikit-learn's linear baseline on small public datasets.

For each of breast cancer, wine, digits and diabetes (scikit-learn's bundled copies, with
a derived category column and 8% missing values in three columns, as the test suite uses),
over SEEDS 75/25 stratified splits: the tabular task with default hyperparameters against
logistic regression (classification) or ridge (regression) with median imputation,
scaling and one-hot encoding. Prints mean and spread of the held-out score per dataset.

    .venv/bin/python benchmarks/linear_baseline.py [--seeds 5] [--datasets breast_cancer,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.metrics import accuracy_score, r2_score  # noqa: E402

from tests.linear_support import (  # noqa: E402
    DATASETS,
    REGRESSION,
    linear_baseline,
    real_dataset,
    stratified_split,
)
from workloads.training.artifact import load_model  # noqa: E402
from workloads.training.harness import main as train_main  # noqa: E402


def ours(
    name: str, train: pd.DataFrame, test: pd.DataFrame, seed: int, work: Path, hps: list[str]
) -> float:
    train.to_csv(work / "train.csv", index=False)
    argv = ["--train", str(work / "train.csv"), "--model-dir", str(work / "model")]
    argv += ["--output-data-dir", str(work / "out"), "--checkpoint-dir", str(work / f"ckpt{seed}")]
    argv += ["--failure-file", str(work / "failure"), "--target", "target"]
    argv += ["--hp", f"seed={seed}"] + [a for hp in hps for a in ("--hp", hp)]
    if train_main(argv, env={}) != 0:
        raise SystemExit((work / "failure").read_text())
    predictor = load_model(work / "model")
    x = test.drop(columns="target")
    out = predictor.predict_records(x.astype(object).where(x.notna(), None).to_dict("records"))
    if name in REGRESSION:
        return r2_score(test["target"], out)
    return accuracy_score(test["target"], [row["label"] for row in out])


def score(name: str, model, test: pd.DataFrame) -> float:
    metric = r2_score if name in REGRESSION else accuracy_score
    return metric(test["target"], model.predict(test.drop(columns="target")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--hp", action="append", default=[], help="extra hyperparameter K=V")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"{'dataset':<14} {'ours mean':>9} {'sd':>6} {'linear':>8} {'sd':>6} {'diff':>7}  s/run")
    for name in args.datasets.split(","):
        frame = real_dataset(name)
        a, b, seconds = [], [], []
        for seed in range(args.seeds):
            train, test = stratified_split(name, frame, seed)
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                a.append(ours(name, train, test, seed, Path(tmp), args.hp))
                seconds.append(time.perf_counter() - started)
            b.append(score(name, linear_baseline(name, train), test))
        mean_a, mean_b = statistics.mean(a), statistics.mean(b)
        spread_a, spread_b = statistics.pstdev(a), statistics.pstdev(b)
        print(
            f"{name:<14} {mean_a:9.4f} {spread_a:6.4f} {mean_b:8.4f} "
            f"{spread_b:6.4f} {mean_a - mean_b:+7.4f}  {statistics.median(seconds):.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
