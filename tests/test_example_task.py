"""A team's own model (examples/digits_cnn): trained by the harness under torchrun, resumed
after a kill, registered, and served by `python -m workloads.serve`, with no machinery of its
own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from examples.digits_cnn.make_data import make_data
from tests.test_serve import Server
from workloads.platform import ApprovalGate, ModelGroupRef
from workloads.registry.store import LocalModelRegistry
from workloads.training.artifact import load_model
from workloads.training.contract import ContractError, parse_hyperparameters
from workloads.training.metric_line import parse_metric_lines

ROOT = Path(__file__).resolve().parents[1]
TASK = "examples.digits_cnn.task:DigitsTask"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("digits"))


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MLINFRA_"))}
    return clean | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "workloads.train",
        "--train",
        str(data["train"]),
        "--validation",
        str(data["validation"]),
        "--model-dir",
        str(out / "model"),
        "--output-data-dir",
        str(out / "out"),
        "--checkpoint-dir",
        str(out / "ckpt"),
        "--failure-file",
        str(out / "failure"),
        "--hp",
        f"task={TASK}",
        *extra,
    ]


def test_the_task_is_loaded_with_its_own_params_and_defaults():
    hp = parse_hyperparameters({"task": TASK, "channels": "8"}, "SM_HPS")
    assert hp.task.__name__ == "DigitsTask" and hp.params.channels == 8
    assert hp.settings.task == TASK and hp.settings.epochs == 30  # the task's default
    assert parse_hyperparameters({"task": TASK, "epochs": "3"}, "x").settings.epochs == 3
    with pytest.raises(ContractError, match=r"unknown hyperparameter 'target' \(known: .*channels"):
        parse_hyperparameters({"task": TASK, "target": "y"}, "SM_HPS")
    with pytest.raises(ContractError, match="cannot load task 'examples.nope:Task'"):
        parse_hyperparameters({"task": "examples.nope:Task"}, "SM_HPS")
    with pytest.raises(ContractError, match="lacks"):
        parse_hyperparameters({"task": "examples.digits_cnn.task:DigitsNet"}, "SM_HPS")


def test_trains_under_torchrun_registers_and_serves(tmp_path, data):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += train_cmd(data, tmp_path, "--hp", "epochs=8", "--hp", "channels=8")
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["world_size"] == 2 and report["task"] == TASK
    # rank 0 prints the metric line after every epoch and once at the end
    lines = list(parse_metric_lines(done.stdout))
    assert {m.epoch for m in lines if m.name == "validation_loss"} >= set(range(1, 4))
    assert [m.value for m in lines if m.name == "accuracy" and m.epoch is None] == [
        report["metrics"]["accuracy"]
    ]

    group = {
        "digits": ModelGroupRef(
            name="team-digits", gate=ApprovalGate(metric="accuracy", threshold=0.9, mode="max")
        )
    }
    registry = LocalModelRegistry(tmp_path / "registry", group)
    version = registry.register("digits", (tmp_path / "model").as_uri(), report["metrics"])
    assert version.version == 1 and version.metrics["accuracy"] == report["metrics"]["accuracy"]

    test = pd.read_csv(data["test"])
    server = Server(tmp_path / "model").wait_ready()
    try:
        rows = "\n".join(",".join(str(v) for v in r) for r in test.iloc[:, :64].values.tolist())
        answer = server.client.post(
            "/invocations", content=rows, headers={"Content-Type": "text/csv"}
        )
        assert answer.status_code == 200, answer.text
        labels = [p["label"] for p in answer.json()["predictions"]]
        accuracy = (pd.Series(labels) == test["label"].reset_index(drop=True)).mean()
        assert accuracy > 0.9, accuracy
        bad = server.client.post("/invocations", json={"instances": [{"p0": 1}]})
        assert bad.status_code == 400 and "missing pixel columns" in bad.json()["error"]
        record = {f"p{i}": float(v) for i, v in enumerate(test.iloc[0, :64])}
        assert server.client.post("/invocations", json={"instances": [record]}).status_code == 200
    finally:
        server.stop()


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path, data):
    extra = ("--hp", "epochs=3", "--hp", "checkpoint_steps=5", "--hp", "channels=8")
    first = subprocess.Popen(
        [sys.executable, *train_cmd(data, tmp_path, *extra)],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "ckpt").glob("ckpt-*.pt")):
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert not (tmp_path / "model").exists()

    again = subprocess.run(
        [sys.executable, *train_cmd(data, tmp_path, *extra)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from checkpoint at step" in again.stderr
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["resumed_from_step"] > 0
    predictor = load_model(tmp_path / "model")
    assert predictor.classes == list(range(10))
