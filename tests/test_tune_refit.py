"""The winner refitted on train + validation for its best epoch count (a real
`workloads.train` run), and a trial that cannot be refitted named with the reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workloads.tuning.refit import best_epoch, refit
from workloads.tuning.space import parse_space
from workloads.tuning.study import TuningError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def trial_dir(tmp_path: Path, report: dict) -> Path:
    model = tmp_path / "trials" / "0003" / "model"
    (model.parent / "output").mkdir(parents=True)
    (model.parent / "output" / "metrics.json").write_text(json.dumps(report))
    return model


def test_the_winner_is_trained_again_on_train_and_validation(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["y"] = (x[:, 0] - x[:, 2] > 0).astype(int)
    frame[:150].to_csv(tmp_path / "train.csv", index=False)
    frame[150:].to_csv(tmp_path / "validation.csv", index=False)
    space = parse_space(
        {
            "objective": {"metric": "validation_loss", "direction": "minimize"},
            "budget": {"trials": 4},
            "fixed": {"target": "y", "epochs": 40, "patience": 5, "hidden_sizes": "8"},
            "parameters": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.1}},
        },
        "tune.yaml",
    )
    model = refit(
        space, {"learning_rate": 0.05}, trial_dir(tmp_path, {"best_epoch": 2}),
        train=str(tmp_path / "train.csv"), validation=str(tmp_path / "validation.csv"),
        folder=tmp_path / "refit", env=ENV,
    )  # fmt: skip
    assert (model / "meta.json").is_file()
    report = json.loads((tmp_path / "refit" / "output" / "metrics.json").read_text())
    assert report["train_rows"] == 200  # train + validation
    assert report["epochs"] == 2  # the trial's best epoch, not the space's 40
    meta = json.loads((model / "meta.json").read_text())
    assert meta["hyperparameters"]["learning_rate"] == 0.05
    assert report["metrics"]["accuracy"] > 0.8


@pytest.mark.parametrize(
    ("report", "reason"),
    [({"epochs": 3}, "no best_epoch"), ({"best_epoch": -1}, "never improved")],
)
def test_a_trial_without_a_best_epoch_is_not_refitted(tmp_path, report, reason):
    with pytest.raises(TuningError, match=reason):
        best_epoch(trial_dir(tmp_path, report))
