"""What a trial reports to the pruner: its best objective so far (`workloads.tuning.progress`),
observed through the local driver on scripted trials (no training: each trial prints a
fixed learning curve under the training contract's metric line)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import optuna

from workloads.tuning.local import LocalTuner
from workloads.tuning.progress import BestSoFar
from workloads.tuning.space import parse_space

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_best_so_far_follows_the_direction_and_skips_nan():
    down = BestSoFar("minimize")
    assert math.isnan(down(math.nan))
    assert [down(v) for v in (0.9, 0.4, 0.7, math.nan, 0.3)] == [0.9, 0.4, 0.4, 0.4, 0.3]
    up = BestSoFar("maximize")
    assert [up(v) for v in (0.5, 0.8, 0.6, 0.9)] == [0.5, 0.8, 0.8, 0.9]


# Validation loss per epoch, by learning rate (the trial's only parameter). The two first
# trials dip, then overfit; the third never reaches their minima but stays below their
# later, climbing values.
CURVES = {
    0.1: [1.0, 0.2, 0.5, 0.9],
    0.2: [1.0, 0.25, 0.6, 1.0],
    0.3: [0.9, 0.5, 0.3, 0.28],
}
TRIAL = """
import json, os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
curves = json.loads(sys.argv[1])
curve = curves[str(json.loads(os.environ["SM_HPS"])["learning_rate"])]
for epoch, loss in enumerate(curve, 1):
    print(f"#metric validation_loss={loss} epoch={epoch}", flush=True)
    time.sleep(0.2)
for var, name, doc in (
    ("SM_OUTPUT_DATA_DIR", "metrics.json", {"metrics": {"validation_loss": min(curve)}}),
    ("SM_MODEL_DIR", "meta.json", {}),
):
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
    (Path(os.environ[var]) / name).write_text(json.dumps(doc))
"""


def test_the_pruner_compares_best_values_so_far(tmp_path):
    doc = {
        "objective": {"metric": "validation_loss", "direction": "minimize"},
        "budget": {"trials": 3},
        "sampler": "random",
        "pruning": {"type": "median", "startup_trials": 2, "warmup_epochs": 3},
        "fixed": {"target": "y", "epochs": 4},
        "parameters": {"learning_rate": {"type": "categorical", "choices": list(CURVES)}},
    }
    curves = json.dumps({str(k): v for k, v in CURVES.items()})
    tuner = LocalTuner(
        parse_space(doc, "tune.yaml"), tmp_path, study="s", train=str(tmp_path / "train.csv"),
        env=ENV, launcher=[sys.executable, "-c", TRIAL, curves],
    )  # fmt: skip
    for lr in CURVES:
        tuner.study.enqueue_trial({"learning_rate": lr})
    result = tuner.run()
    trials = sorted(tuner.study.get_trials(), key=lambda t: t.number)
    # The finished trials' reports are their running best (the epoch the harness keeps),
    # not the values they climbed back to.
    assert [trials[0].intermediate_values[e] for e in (1, 2, 3, 4)] == [1.0, 0.2, 0.2, 0.2]
    assert trials[0].value == 0.2 and trials[1].value == 0.25
    # At epoch 3 the third trial's best (0.3) is worse than the median of the others' best
    # so far (0.225): pruned. Against their latest values it would have run on: at epoch 3
    # they had climbed to 0.5 and 0.6 (median 0.55), at epoch 4 to 0.9 and 1.0.
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    ]
    assert max(trials[2].intermediate_values) == 3
    assert result.best is not None and result.best.params == {"learning_rate": 0.1}
