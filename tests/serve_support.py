"""Test helpers for the server and batch tests: a small data set, training a real model
with `python -m workloads.train`, a real server process on loopback (`Server`), and test-only
model loaders (`--loader tests.serve_support:NAME`).

They wrap the real artifact and make loading or the forward pass slow, so the tests can
watch /ping during a slow load or a slow batch, and SIGTERM draining, without timing races.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from workloads.training.artifact import load_model

ROOT = Path(__file__).resolve().parents[1]
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

    def input_schema(self) -> dict[str, Any]:
        return self.inner.input_schema()

    def prepare_rows(self, rows: list[list]):
        return self.inner.prepare_rows(rows)

    def predict_matrix(self, x):
        time.sleep(self.delay_s)
        return self.inner.predict_matrix(x)

    def __getattr__(self, name: str) -> Any:  # the task's own hooks (content_types, collate...)
        return getattr(self.inner, name)


def slow_model(model_dir: str | Path) -> SlowPredictor:
    time.sleep(float(os.environ.get(LOAD_DELAY_ENV, "0")))
    return SlowPredictor(load_model(model_dir), float(os.environ.get(PREDICT_DELAY_ENV, "0")))


def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Mixed column kinds (numbers with gaps, a category, a flag) and a learnable label."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 10, rows).round(1)
    visits = rng.integers(0, 20, rows)
    plan = rng.choice(["basic", "pro", "team"], rows)
    active = rng.random(rows) < 0.5
    score = 0.08 * (age - 40) + 0.2 * (visits - 10) + (plan == "pro") * 1.0 + active * 0.5
    label = np.where(score + rng.normal(0, 0.5, rows) > 0.5, "yes", "no")
    frame = pd.DataFrame(
        {"age": age, "visits": visits, "plan": plan, "active": active, "label": label}
    )
    frame.loc[rng.random(rows) < 0.1, "age"] = np.nan
    return frame


def train_model(tmp: Path, frame: pd.DataFrame, target: str, hidden: str = "32,16") -> Path:
    data = tmp / "train.csv"
    frame.to_csv(data, index=False)
    model_dir = tmp / "model"
    cmd = [sys.executable, "-m", "workloads.train", "--train", str(data)]
    cmd += ["--model-dir", str(model_dir), "--output-data-dir", str(tmp / "output")]
    cmd += ["--checkpoint-dir", str(tmp / "ckpt"), "--failure-file", str(tmp / "failure")]
    cmd += ["--target", target, "--hp", "epochs=3", "--hp", f"hidden_sizes={hidden}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self,
        model_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "workloads.serve", "--model-dir", str(model_dir)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--threads", "1"]
        cmd += args if "--workers" in args else ("--workers", "1", *args)
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            # A short drain window (the default is 2 s): tests stop many servers.
            env={**os.environ, "MLINFRA_SERVE_DRAIN_S": "0.2", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def first_answer(self, timeout: float = 60) -> httpx.Response:
        """The first /ping answer once the port is open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                return httpx.get(self.url + "/ping", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"server did not open its port:\n{self.output()}")

    def wait_ready(self, timeout: float = 60) -> Server:
        deadline = time.monotonic() + timeout
        while self.first_answer(timeout).status_code != 200:
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.05)
        return self

    def wait_workers(self, workers: int, timeout: float = 60) -> Server:
        """Until each of `workers` worker processes has answered with its model loaded: new
        connections land on one worker or another, and a loading one has no pid in /stats."""
        self.wait_ready(timeout)
        pids: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(pids) < workers:
            assert time.monotonic() < deadline, f"only workers {pids} loaded their model"
            with httpx.Client(base_url=self.url, timeout=30) as fresh:
                pid = fresh.get("/stats").json().get("pid")
            if pid is not None:
                pids.add(pid)
        return self

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
