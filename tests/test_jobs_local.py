"""`mlinfra train` and `mlinfra jobs` on the local stack: real training in a local process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from components.spec import load_stack
from workloads.cli import app
from workloads.jobs.base import JobRequest, exit_reason
from workloads.jobs.local import LocalJobs
from workloads.local import env as localenv
from workloads.registry.store import registry_from_descriptor
from workloads.training.metric_line import parse_metric_lines

STACKS = Path(__file__).resolve().parent.parent / "stacks"
runner = CliRunner()


@pytest.fixture
def stack(tmp_path):
    """The local stack's descriptor written where `mlinfra` finds it (no endpoint started),
    and a small churn-like data set in its raw bucket."""
    state = tmp_path / "state"
    paths = localenv.StackPaths.of("local", state)
    descriptor = localenv.build_descriptor(
        load_stack("local", STACKS), "local", paths, {"churn": 1}
    )
    descriptor.write(paths.descriptor)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["churned"] = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    data = localenv.uri_path(descriptor.buckets.raw) / "toy"
    data.mkdir(parents=True)
    frame.iloc[:300].to_csv(data / "train.csv", index=False)
    (data / "validation").mkdir()
    frame.iloc[300:].to_csv(data / "validation" / "validation.csv", index=False)
    return state, descriptor, data


def TRAIN_ARGS(data: Path) -> list[str]:  # noqa: N802 - reads as a constant
    hps = ["target=churned", "epochs=20", "learning_rate=0.05", "hidden_sizes=8"]
    return [
        *("--channel", f"train={(data / 'train.csv').as_uri()}"),
        *("--channel", f"validation={(data / 'validation').as_uri()}"),
        *[part for hp in hps for part in ("--hp", hp)],
    ]


def args(state: Path, *more: str) -> list[str]:
    return [*more, "--stack", "local", "--state-dir", str(state)]


def test_train_runs_registers_and_gates_then_jobs_commands_read_it(stack):
    state, descriptor, data = stack
    result = runner.invoke(
        app,
        args(state, "train", *TRAIN_ARGS(data), "--model-group", "churn", "--name", "toy-1"),
    )
    assert result.exit_code == 0, result.output
    assert "job toy-1: Completed" in result.output
    assert "registered churn v1:" in result.output
    version = registry_from_descriptor(descriptor).get("churn", 1)
    assert version.model_uri == (state / "local" / "jobs" / "toy-1" / "model").as_uri()
    assert version.metrics["accuracy"] > 0.7
    job_report = json.loads(
        (state / "local" / "jobs" / "toy-1" / "output" / "metrics.json").read_text()
    )
    assert version.metrics == pytest.approx(job_report["metrics"])
    # The gate of the local stack's churn group decided, as in the pipeline.
    assert version.status in ("Approved", "PendingManualApproval")

    listed = runner.invoke(app, args(state, "jobs", "list"))
    assert listed.exit_code == 0 and "toy-1" in listed.output and "Completed" in listed.output
    described = runner.invoke(app, args(state, "jobs", "describe", "toy-1", "--json"))
    doc = json.loads(described.output)
    assert doc["state"] == "Completed" and doc["hyperparameters"]["epochs"] == "20"
    assert doc["channels"]["train"].endswith("/toy/train.csv")
    assert doc["labels"]["mlinfra.io/model-group"] == "churn"
    logs = runner.invoke(app, args(state, "jobs", "logs", "toy-1"))
    assert logs.exit_code == 0
    final = {m.name: m.value for m in parse_metric_lines(logs.output) if m.epoch is None}
    assert final["accuracy"] == pytest.approx(version.metrics["accuracy"])  # the metric line

    again = runner.invoke(
        app,
        args(state, "train", *TRAIN_ARGS(data), "--name", "toy-1"),
    )
    assert again.exit_code == 1 and "job 'toy-1' already exists (completed)" in again.output


def test_stop_sends_sigterm_the_job_checkpoints_and_a_resubmit_resumes(stack):
    state, descriptor, data = stack
    jobs = LocalJobs(descriptor)
    request = JobRequest(
        name="long-1",
        channels={"train": (data / "train.csv").as_uri()},
        hyperparameters={
            "target": "churned",
            "epochs": "100000",
            "patience": "100000",
            "checkpoint_steps": "1",
            "batch_size": "16",
        },  # fmt: skip
    )
    handle = jobs.submit(request)
    checkpoints = jobs.job_dir("long-1") / "checkpoints"
    deadline = time.monotonic() + 60
    while not any(checkpoints.glob("*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert jobs.status(handle.id).state == "Running"
    stopped = runner.invoke(app, args(state, "jobs", "stop", "long-1"))
    assert stopped.exit_code == 0, stopped.output
    final = jobs.wait(handle.id, timeout=60)
    assert final.state == "Stopped" and final.exit_code == 143
    assert "resumable" in final.reason
    # Submitting the stopped job's name again resumes it from its checkpoint.
    jobs.submit(request)
    log = jobs.job_dir("long-1") / "train.log"
    deadline = time.monotonic() + 60
    while "resumed from checkpoint" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    jobs.cancel("long-1")
    assert jobs.wait("long-1", timeout=60).state == "Stopped"
    assert "resumed from checkpoint" in log.read_text()


def test_bad_input_gets_one_message_and_creates_nothing(stack):
    state, descriptor, data = stack
    train = ["--channel", f"train={data.as_uri()}"]
    cases = [
        (["--channel", "train=file:///etc/passwd"], "channel train=file:///etc/passwd is outside"),
        ([*train, "--model-group", "fraud"], "unknown model group 'fraud'; stack 'local' declares"),
        ([*train, "--pool", "tpu"], "unknown pool 'tpu'"),
        ([*train, "--spot"], "the local backend does not support spot"),
        ([*train, "--on", "sagemaker"], "is a local stack: jobs run with --on local"),
        ([*train, "--on", "batch"], "unknown job backend 'batch'; valid: kubernetes, local, sage"),
        (["--channel", "train"], "--channel 'train': expected KEY=VALUE"),
        ([*train, "--hp", "target=y", "--hp", "epoch=3"], "unknown hyperparameter 'epoch'"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, args(state, "train", *extra))
        assert result.exit_code == 1, (extra, result.output)
        assert message in " ".join(result.output.split()), (extra, result.output)
    assert not (state / "local" / "jobs").exists()
    missing = runner.invoke(app, args(state, "jobs", "describe", "nope"))
    assert missing.exit_code == 1 and "no local job 'nope'" in missing.output


def test_no_descriptor_for_the_stack(tmp_path):
    result = runner.invoke(
        app, ["jobs", "list", "--stack", "vision-dev", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "no platform descriptor for stack 'vision-dev'" in result.output
    assert "pulumi stack output platform --json -s vision-dev" in result.output


def test_exit_codes_become_sentences():
    assert "resumable" in exit_reason(143)
    assert "out of memory" in exit_reason(137)
    assert exit_reason(130) == "interrupted by SIGINT (Ctrl-C): no model written (exit 130)"
    assert (
        exit_reason(1, "data error: no rows\n") == "training failed (exit 1): data error: no rows"
    )
    assert exit_reason(0) is None
