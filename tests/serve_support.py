"""Test-only model loaders for the server tests (`--loader tests.serve_support:NAME`).

They wrap the real artifact and make loading or the forward pass slow, so the tests can
watch /ping during a slow load or a slow batch, and SIGTERM draining, without timing races.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from workloads.model import load_model

LOAD_DELAY_ENV = "MLINFRA_TEST_LOAD_DELAY_S"
PREDICT_DELAY_ENV = "MLINFRA_TEST_PREDICT_DELAY_S"


class SlowPredictor:
    """Delegates to a real Predictor; sleeps before each forward pass (like a big model,
    `time.sleep` releases the GIL as torch's kernels do)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.feature_columns = inner.feature_columns
        self.task = inner.task
        self.classes = inner.classes

    def prepare_records(self, records: list[dict]):
        return self.inner.prepare_records(records)

    def prepare_rows(self, rows: list[list]):
        return self.inner.prepare_rows(rows)

    def predict_matrix(self, x):
        time.sleep(self.delay_s)
        return self.inner.predict_matrix(x)


def slow_model(model_dir: str | Path) -> SlowPredictor:
    time.sleep(float(os.environ.get(LOAD_DELAY_ENV, "0")))
    return SlowPredictor(load_model(model_dir), float(os.environ.get(PREDICT_DELAY_ENV, "0")))
