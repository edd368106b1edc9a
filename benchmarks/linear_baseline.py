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

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn import datasets  # noqa: E402
from sklearn.compose import make_column_transformer  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.metrics import accuracy_score, r2_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

from workloads.training.artifact import load_model  # noqa: E402
from workloads.training.harness import main as train_main  # noqa: E402

DATASETS = ("breast_cancer", "wine", "digits", "diabetes")


def real_dataset(name: str) -> pd.DataFrame:
    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    rng = np.random.default_rng(1)
    features = [c for c in frame.columns if c != "target"]
    varied = max(features, key=lambda c: frame[c].nunique())
    frame["bucket"] = pd.qcut(frame[varied], 3, labels=["lo", "mid", "hi"]).astype(str)
    for column in features[:3]:
        frame.loc[rng.random(len(frame)) < 0.08, column] = np.nan
    frame.loc[rng.random(len(frame)) < 0.08, "bucket"] = None
    return frame


def linear(name: str, train: pd.DataFrame):
    x, y = train.drop(columns="target"), train["target"]
    numeric = [c for c in x.columns if c != "bucket"]
    columns = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        (
            make_pipeline(
                SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
            ),
            ["bucket"],
        ),
    )
    model = Ridge() if name == "diabetes" else LogisticRegression(max_iter=5000)
    return make_pipeline(columns, model).fit(x, y)


def split(name: str, frame: pd.DataFrame, seed: int):
    stratify = None if name == "diabetes" else frame["target"]
    return train_test_split(frame, test_size=0.25, random_state=seed, stratify=stratify)


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
    if name == "diabetes":
        return r2_score(test["target"], out)
    return accuracy_score(test["target"], [row["label"] for row in out])


def score(name: str, model, test: pd.DataFrame) -> float:
    metric = r2_score if name == "diabetes" else accuracy_score
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
            train, test = split(name, frame, seed)
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                a.append(ours(name, train, test, seed, Path(tmp), args.hp))
                seconds.append(time.perf_counter() - started)
            b.append(score(name, linear(name, train), test))
        mean_a, mean_b = statistics.mean(a), statistics.mean(b)
        spread_a, spread_b = statistics.pstdev(a), statistics.pstdev(b)
        print(
            f"{name:<14} {mean_a:9.4f} {spread_a:6.4f} {mean_b:8.4f} "
            f"{spread_b:6.4f} {mean_a - mean_b:+7.4f}  {statistics.median(seconds):.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
