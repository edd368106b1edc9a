"""Tuning quality and speed: TPE with median pruning against random search without pruning,
and `parallel` 2 against 1.

    .venv/bin/python benchmarks/tune.py [--trials 30] [--datasets breast_cancer,wine,diabetes]
                                        [--splits 3] [--epochs 200] [--patience 15]
                                        [--parallel-trials 8] [--skip-parallel | --parallel-only]

For each scikit-learn dataset and each of `--splits` seeded splits (60/20/20 into train,
validation and a held-out test set, stratified for classification) it runs the local driver
(`workloads.tuning.local.LocalTuner`, each trial a real `workloads.train` process) twice over
the same search space: TPE + median pruning, and random search with pruning off, each trial
at the harness's defaults (200 epochs at most, early stopping after 15 without a better
validation loss) unless `--epochs` / `--patience` say otherwise. The trial
with the best validation loss wins, and its artifact, the one `mlinfra tune` registers, is
scored on the test split (accuracy, or R2 for diabetes), next to a scikit-learn linear
baseline (logistic regression / ridge on standardised features) fitted on train +
validation (and, for reference, on train alone). The test split is only scored. One split's
test set is 36 to 114 rows, so one or two rows decide a comparison; the means over splits
are the figures to read. It prints each split's scores, the total training epochs all trials
ran, wall and CPU seconds and the load average, then the means per dataset. Then, on the
first dataset, trials per minute with `parallel` 1 and 2 (random search, no pruning, the same
trials; load-sensitive: run it alone, `--parallel-only`). Figures go to stdout and, as JSON,
to `benchmarks/out/tune-<datasets>.json` (`tune-parallel.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import datasets
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, log_loss, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workloads.training.artifact import load_model  # noqa: E402
from workloads.training.contract import HarnessSettings  # noqa: E402
from workloads.tuning.local import LocalTuner  # noqa: E402
from workloads.tuning.space import parse_space  # noqa: E402

REGRESSION = {"diabetes"}


def split(
    name: str, folder: Path, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    stratify = None if name in REGRESSION else frame["target"]
    rest, test = train_test_split(frame, test_size=0.2, random_state=seed, stratify=stratify)
    stratify = None if name in REGRESSION else rest["target"]
    train, val = train_test_split(rest, test_size=0.25, random_state=seed, stratify=stratify)
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    val.to_csv(folder / "validation.csv", index=False)
    return train, val, test


def score(name: str, truth: Any, predicted: Any) -> float:
    return float(
        r2_score(truth, predicted) if name in REGRESSION else accuracy_score(truth, predicted)
    )


def baseline(name: str, train: pd.DataFrame, test: pd.DataFrame) -> tuple[float, float | None]:
    """Fitted on train + validation, the rows the search sees: it needs no validation
    split, having nothing to choose. The test score, and for classification the test log
    loss (what the search minimises on the validation rows)."""
    linear = Ridge() if name in REGRESSION else LogisticRegression(max_iter=5000)
    model = make_pipeline(StandardScaler(), linear)
    model.fit(train.drop(columns="target"), train["target"])
    features = test.drop(columns="target")
    held = score(name, test["target"], model.predict(features))
    if name in REGRESSION:
        return held, None
    loss = log_loss(test["target"], model.predict_proba(features), labels=model.classes_)
    return held, float(loss)


def held_out(name: str, model_dir: Path, test: pd.DataFrame) -> tuple[float, float | None]:
    """The registered artifact's test score and, for classification, test log loss."""
    predictor = load_model(model_dir)
    records = test.drop(columns="target").to_dict("records")
    out = predictor.predict_records(records)
    if name in REGRESSION:
        return score(name, test["target"], out), None
    # Each row's probabilities are in the order of the predictor's classes. Their sums are
    # within float64 rounding of 1, which scikit-learn warns about; normalised here instead.
    probabilities = np.array([list(row["probabilities"].values()) for row in out])
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    loss = log_loss(test["target"], probabilities, labels=list(predictor.classes))
    return score(name, test["target"], [row["label"] for row in out]), float(loss)


def space(
    name: str,
    trials: int,
    epochs: int,
    sampler: str,
    pruning: str,
    parallel: int = 1,
    patience: int | None = None,
):
    regression = name in REGRESSION
    return parse_space(
        {
            # The validation loss (log loss, or scaled MSE) picks the best trial: on ~100
            # validation rows accuracy ties and jumps by whole rows; the loss does not.
            "objective": {"metric": "validation_loss", "direction": "minimize"},
            "budget": {"trials": trials, "parallel": parallel},
            "sampler": sampler,
            # The product's defaults: median pruning once 5 trials have completed, from a
            # tenth of the epochs on, on each trial's best validation loss so far.
            "pruning": pruning,
            "seed": 0,
            "fixed": {
                "target": "target",
                "problem": "regression" if regression else "",
                "epochs": epochs,
                "patience": patience or epochs,  # --patience 0: early stopping off
                "checkpoint_steps": 100_000,
            },
            "parameters": {
                "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
                # AdamW's decay is decoupled and scaled by the learning rate: at lr 1e-3 a decay
                # of 1e-2 shrinks the weights by under 1% over a whole run, no regularisation
                # at all. Up to 1 reaches what logistic regression's L2 (C=1) does.
                "weight_decay": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
                "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
                # "[]": the linear path alone; "auto": sized from the rows (the default)
                "hidden_sizes": {"type": "categorical", "choices": ["[]", "auto", "32", "64,32"]},
                "dropout": {"type": "float", "low": 0.0, "high": 0.4},
            },
        },
        "benchmarks/tune.py",
    )


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(space_, folder: Path, data: Path) -> dict[str, Any]:
    tuner = LocalTuner(
        space_,
        folder,
        study="bench",
        train=str(data / "train.csv"),
        validation=str(data / "validation.csv"),
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    load_before = os.getloadavg()[0]
    cpu_before = _cpu_s()
    started = time.perf_counter()
    result = tuner.run()
    wall = time.perf_counter() - started
    return {
        "result": result,
        "wall_s": wall,
        "cpu_s": _cpu_s() - cpu_before,  # the tuner and its trial processes
        "load": (load_before, os.getloadavg()[0]),
        "epochs": result.epochs,
        "complete": result.count("COMPLETE"),
        "pruned": result.count("PRUNED"),
        "best_validation_loss": result.best.value if result.best else None,
    }


def search_split(name: str, seed: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Both searches on one seeded split of `name`: their selected trials' test scores."""
    data = root / f"{name}-{seed}" / "data"
    train, val, test = split(name, data, seed)
    linear, linear_loss = baseline(name, pd.concat([train, val]), test)
    row: dict[str, Any] = {
        "linear_baseline": linear,
        "linear_baseline_log_loss": linear_loss,
        "linear_baseline_train_only": baseline(name, train, test)[0],
        "test_rows": len(test),
    }
    for label, sampler, pruning in (("tpe+median", "tpe", "median"), ("random", "random", "off")):
        space_ = space(name, args.trials, args.epochs, sampler, pruning, 1, args.patience)
        out = run(space_, root / f"{name}-{seed}" / label, data)
        result = out.pop("result")
        out["held_out"], out["held_out_log_loss"] = held_out(name, result.best_model_dir, test)
        out["best_params"] = result.best.params
        row[label] = out
        print(f"{name:14s} split {seed} {label:10s} held-out {out['held_out']:.4f}  "
              f"linear {row['linear_baseline']:.4f} (train only "
              f"{row['linear_baseline_train_only']:.4f}){_log_losses(out, row)}  "
              f"epochs {out['epochs']:5d}  "
              f"pruned {out['pruned']:2d}  wall {out['wall_s']:6.1f} s  cpu {out['cpu_s']:6.1f} s  "
              f"load {out['load'][0]:.1f}->{out['load'][1]:.1f}", flush=True)  # fmt: skip
    return row


def _log_losses(out: dict[str, Any], row: dict[str, Any]) -> str:
    if out["held_out_log_loss"] is None:
        return ""
    return (f"  test log loss {out['held_out_log_loss']:.4f} "
            f"(linear {row['linear_baseline_log_loss']:.4f})")  # fmt: skip


def summary(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the splits, wins against the linear baseline, the epochs pruning saved."""

    def mean(key: str, field: str = "held_out") -> float:
        return statistics.mean(r[key] if field == "" else r[key][field] for r in rows)

    tpe = [r["tpe+median"]["held_out"] for r in rows]
    linear = [r["linear_baseline"] for r in rows]
    epochs = {k: sum(r[k]["epochs"] for r in rows) for k in ("tpe+median", "random")}
    out = {
        "tpe+median": mean("tpe+median"),
        "random": mean("random"),
        "linear_baseline": mean("linear_baseline", ""),
        "linear_baseline_train_only": mean("linear_baseline_train_only", ""),
        "tpe_vs_linear": [round(a - b, 4) for a, b in zip(tpe, linear, strict=True)],
        "epochs_saved": 1 - epochs["tpe+median"] / max(1, epochs["random"]),
    }
    if name not in REGRESSION:
        out["log_loss"] = {
            "tpe+median": mean("tpe+median", "held_out_log_loss"),
            "random": mean("random", "held_out_log_loss"),
            "linear_baseline": mean("linear_baseline_log_loss", ""),
        }
    print(f"{name:14s} mean of {len(rows)} splits: TPE {out['tpe+median']:.4f}  random "
          f"{out['random']:.4f}  linear {out['linear_baseline']:.4f} (train only "
          f"{out['linear_baseline_train_only']:.4f}); TPE - linear per split "
          f"{out['tpe_vs_linear']}; pruning saved {out['epochs_saved']:.0%} of the epochs",
          flush=True)  # fmt: skip
    if "log_loss" in out:
        losses = out["log_loss"]
        print(f"{name:14s} mean test log loss: TPE {losses['tpe+median']:.4f}  random "
              f"{losses['random']:.4f}  linear {losses['linear_baseline']:.4f}",
              flush=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    # The harness's defaults, what a user's trials run: early stopping ends most of them.
    defaults = HarnessSettings()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--splits", type=int, default=3, help="seeded splits per dataset")
    parser.add_argument("--datasets", default="breast_cancer,wine,diabetes")
    parser.add_argument("--parallel-trials", type=int, default=8)
    parser.add_argument(
        "--patience",
        type=int,
        default=defaults.patience,
        help="early stopping in both searches (0: off)",
    )
    parser.add_argument("--skip-parallel", action="store_true")
    parser.add_argument("--parallel-only", action="store_true", help="no searches")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "trials": args.trials,
        "epochs": args.epochs,
        "patience": args.patience,
        "splits": args.splits,
        "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        root = Path(tmp)
        names = args.datasets.split(",")
        for name in [] if args.parallel_only else names:
            rows = [search_split(name, seed, root, args) for seed in range(args.splits)]
            figures["datasets"][name] = {"splits": rows, "summary": summary(name, rows)}
        if not args.skip_parallel:
            name = names[0]
            split(name, root / name / "data")
            per_minute = {}
            for parallel in (1, 2):
                space_ = space(name, args.parallel_trials, args.epochs, "random", "off", parallel)
                out = run(space_, root / name / f"parallel-{parallel}", root / name / "data")
                per_minute[parallel] = args.parallel_trials / out["wall_s"] * 60
                figures.setdefault("parallel", {})[parallel] = out | {"result": None}
                print(
                    f"{name:14s} parallel {parallel}: {args.parallel_trials} trials in "
                    f"{out['wall_s']:.1f} s = {per_minute[parallel]:.2f} trials/min  "
                    f"cpu {out['cpu_s']:.1f} s  load {out['load'][0]:.1f}->{out['load'][1]:.1f}",
                    flush=True,
                )
            figures["trials_per_minute"] = per_minute
    out = REPO / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    label = "parallel" if args.parallel_only else args.datasets.replace(",", "-")
    label += "" if args.patience else "-no-early-stopping"
    (out / f"tune-{label}.json").write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
