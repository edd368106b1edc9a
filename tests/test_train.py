"""Real training runs: quality against a linear baseline, the SageMaker contract, data errors,
a 2-process torchrun run, kill-then-resume and SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split

from tests.linear_support import (
    DATASETS,
    REGRESSION,
    linear_baseline,
    real_dataset,
    stratified_split,
)
from workloads.training.artifact import load_model
from workloads.training.contract import ContractError, parse_hyperparameters, resolve
from workloads.training.harness import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: one intra-op thread is fastest and stable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def baseline_and_split(name: str, tmp_path: Path):
    frame = real_dataset(name)
    train, test = train_test_split(frame, test_size=0.3, random_state=0)
    train.to_csv(tmp_path / "train.csv", index=False)
    return fit_baseline(name, train, test)


def fit_baseline(name: str, train: pd.DataFrame, test: pd.DataFrame):
    """The linear baseline's held-out score, with the test split and the metric."""
    x_test, y_test = test.drop(columns="target"), test["target"]
    score = r2_score if name in REGRESSION else accuracy_score
    return x_test, y_test, score, score(y_test, linear_baseline(name, train).predict(x_test))


def paths(tmp_path: Path) -> dict[str, Path]:
    return {
        "model": tmp_path / "model",
        "out": tmp_path / "out",
        "ckpt": tmp_path / "ckpt",
        "failure": tmp_path / "failure",
    }


def train_args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    p = paths(tmp_path)
    return [
        "--train",
        str(data),
        "--model-dir",
        str(p["model"]),
        "--output-data-dir",
        str(p["out"]),
        "--checkpoint-dir",
        str(p["ckpt"]),
        "--failure-file",
        str(p["failure"]),
        *extra,
    ]


def test_score(predictor, x_test, y_test, score) -> float:
    out = predictor.predict_records(records(x_test))
    if predictor.task == "regression":
        return score(y_test, out)
    return score(y_test, [row["label"] for row in out])


test_score.__test__ = False  # a helper, not a test


SEEDS = 5


@pytest.mark.parametrize("name", DATASETS)
def test_defaults_never_lose_to_a_linear_model(tmp_path, name):
    """Default hyperparameters, 5 seeds of a 75/25 stratified split: the mean held-out score
    is at least the linear baseline's mean minus 0.01 (benchmarks/linear_baseline.py prints
    the same table)."""
    frame = real_dataset(name)
    ours, linear = [], []
    for seed in range(SEEDS):
        train, test = stratified_split(name, frame, seed)
        x_test, y_test, score, baseline = fit_baseline(name, train, test)
        train.to_csv(tmp_path / "train.csv", index=False)
        args = train_args(tmp_path, tmp_path / "train.csv", "--target", "target")
        assert main([*args, "--hp", f"seed={seed}"], env={}) == 0
        ours.append(test_score(load_model(tmp_path / "model"), x_test, y_test, score))
        linear.append(baseline)
        shutil.rmtree(tmp_path / "ckpt", ignore_errors=True)
    mean_ours, mean_linear = float(np.mean(ours)), float(np.mean(linear))
    assert mean_ours >= mean_linear - 0.01, f"{name}: {ours} vs linear {linear}"


def test_outputs_follow_the_contract(tmp_path):
    frame = real_dataset("wine")
    channel = tmp_path / "train"
    channel.mkdir()
    frame.iloc[:100].to_csv(channel / "part-0.csv", index=False)
    frame.iloc[100:].to_parquet(channel / "part-1.parquet")
    p = paths(tmp_path)
    env = {
        "SM_CHANNEL_TRAIN": str(channel),
        "SM_MODEL_DIR": str(p["model"]),
        "SM_OUTPUT_DATA_DIR": str(p["out"]),
        "SM_CHECKPOINT_DIR": str(p["ckpt"]),
        "SM_OUTPUT_DIR": str(tmp_path),
        # SageMaker passes strings, some JSON-encoded, plus its own keys
        "SM_HPS": json.dumps(
            {
                "target": '"target"',
                "epochs": "40",
                "hidden_sizes": "[32, 16]",
                "learning_rate": "3e-3",
                "checkpoint_steps": "25",
                "sagemaker_program": "train",
            }
        ),
    }
    assert main([], env=env) == 0
    report = json.loads((p["out"] / "metrics.json").read_text())
    assert report["task"] == "tabular" and report["problem"] == "multiclass"
    assert set(report["metrics"]) >= {"accuracy", "log_loss"}
    assert report["samples_per_second"] > 0
    assert 1 <= len(report["loss_curve"]) <= 40
    assert report["loss_curve"][0]["train_loss"] > report["loss_curve"][-1]["train_loss"]
    assert (p["out"] / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((p["model"] / "metrics.json").read_text()) == report["metrics"]
    meta = json.loads((p["model"] / "meta.json").read_text())
    assert meta["hidden_sizes"] == [32, 16] and meta["classes"] == [0, 1, 2]
    assert list((p["ckpt"]).glob("ckpt-*.pt"))  # checkpoints every 25 steps
    assert not (tmp_path / "failure").exists()
    predictor = load_model(p["model"])
    assert predictor.feature_columns == [c for c in frame.columns if c != "target"]


def test_validation_channel_and_string_labels(tmp_path):
    frame = real_dataset("breast_cancer")
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    frame.iloc[:450].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[450:].to_csv(tmp_path / "validation.csv", index=False)
    args = train_args(
        tmp_path, tmp_path / "train.csv", "--validation", str(tmp_path / "validation.csv")
    )
    assert main([*args, "--hp", "target=target", "--hp", "epochs=30"], env={}) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["validation_rows"] == len(frame) - 450 and report["problem"] == "binary"
    predictor = load_model(tmp_path / "model")
    assert predictor.classes == ["benign", "malignant"]
    out = predictor.predict_records(records(frame.drop(columns="target").iloc[450:460]))
    assert {row["label"] for row in out} <= {"benign", "malignant"}


def test_cli_flags_override_environment(tmp_path):
    env = {
        "SM_MODEL_DIR": "/from/env",
        "SM_CHANNEL_TRAIN": "/env/train",
        "SM_HPS": '{"target": "y"}',
    }
    contract = resolve(["--model-dir", str(tmp_path), "--hp", "epochs=7"], env)
    assert contract.model_dir == tmp_path and contract.train == "/env/train"
    assert contract.hyperparameters.epochs == 7 and contract.hyperparameters.target == "y"
    assert contract.checkpoint_dir == Path("/opt/ml/checkpoints")
    assert contract.failure_file == Path("/opt/ml/output/failure")
    config = tmp_path / "config"
    config.mkdir()
    (config / "hyperparameters.json").write_text('{"target": "label", "batch_size": "32"}')
    contract = resolve([], {"SM_INPUT_CONFIG_DIR": str(config), "MLINFRA_CHECKPOINT_DIR": "/c"})
    assert contract.hyperparameters.batch_size == 32 and contract.checkpoint_dir == Path("/c")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"target": "y", "epochs": "many"}, "hyperparameter 'epochs'"),
        ({"target": "y", "epoch": "3"}, "unknown hyperparameter 'epoch'"),
        ({"epochs": "3"}, "hyperparameter 'target' is required"),
        ({"target": "y", "task": "ranking"}, "hyperparameter 'task'"),
        ({"target": "y", "hidden_sizes": "64,-1"}, "hidden sizes must be positive"),
    ],
)
def test_bad_hyperparameters_are_named(values, message):
    with pytest.raises(ContractError, match=message):
        parse_hyperparameters(values, "SM_HPS")


def _write(path: Path, kind: str) -> Path:
    if kind == "missing_target":
        pd.DataFrame({"a": [1, 2, 3, 4], "b": [0, 1, 0, 1]}).to_csv(path, index=False)
    elif kind == "empty":
        path.write_text("")
    elif kind == "header_only":
        path.write_text("a,target\n")
    elif kind == "unreadable":
        path = path.with_suffix(".parquet")
        path.write_bytes(b"this is not parquet")
    elif kind == "single_class":
        pd.DataFrame({"a": range(10), "target": ["yes"] * 10}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing_target", "target column 'target' not found; columns are ['a', 'b']"),
        ("empty", "file is empty"),
        ("header_only", "no rows"),
        ("unreadable", "cannot read file"),
        ("single_class", "single class ('yes')"),
    ],
)
def test_data_errors_fail_fast(tmp_path, kind, message, capsys):
    data = _write(tmp_path / "train.csv", kind)
    rc = main(train_args(tmp_path, data, "--target", "target"), env={})
    assert rc != 0
    failure = (tmp_path / "failure").read_text()
    assert failure.startswith("data error:") and message in failure
    assert message in capsys.readouterr().err
    assert not (tmp_path / "model").exists() and not (tmp_path / "out").exists()


def test_missing_channel_and_bad_config_write_failure(tmp_path):
    assert main(train_args(tmp_path, tmp_path / "nope", "--target", "t"), env={}) == 1
    assert "does not exist" in (tmp_path / "failure").read_text()
    assert main(train_args(tmp_path, tmp_path / "nope", "--hp", "target"), env={}) == 1
    assert "expected KEY=VALUE" in (tmp_path / "failure").read_text()


# --- subprocess runs: torchrun, kill and resume, SIGTERM ------------------------------------


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MLINFRA_"))}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_torchrun_two_processes_on_cpu(tmp_path):
    x_test, y_test, score, baseline = baseline_and_split("breast_cancer", tmp_path)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on localhost, a free port
        "--nproc_per_node=2",
        "-m",
        "workloads.train",
        *train_args(tmp_path, tmp_path / "train.csv", "--target", "target"),
    ]
    done = subprocess.run(
        command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train[rank 1]" in done.stderr and "train[rank 0]" in done.stderr
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["world_size"] == 2
    ours = test_score(load_model(tmp_path / "model"), x_test, y_test, score)
    assert ours >= baseline - 0.02, f"2 processes: {ours:.3f} vs baseline {baseline:.3f}"


@pytest.fixture
def slow_data(tmp_path) -> Path:
    """Enough rows and small batches that a run takes a few seconds, with many steps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)])
    frame["y"] = x @ rng.normal(size=8) + 0.1 * rng.normal(size=2000)
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    return path


RESUMABLE = ["--target", "y", "--hp", "batch_size=16", "--hp", "epochs=8", "--hp", "patience=100"]


def start_training(tmp_path: Path, data: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "workloads.train", *train_args(tmp_path, data, *extra)]
    return subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(ckpt: Path, proc: subprocess.Popen, timeout: float = 60) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(ckpt.glob("ckpt-*.pt"))
        if found:
            return found
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def step_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def test_killed_run_resumes_from_its_checkpoint(tmp_path, slow_data):
    proc = start_training(tmp_path, slow_data, *RESUMABLE, "--hp", "checkpoint_steps=20")
    first = wait_for_checkpoint(tmp_path / "ckpt", proc)
    proc.send_signal(signal.SIGKILL)  # a spot interruption without grace
    proc.communicate(timeout=30)
    assert not (tmp_path / "model").exists()  # a killed run leaves no model behind
    saved = max(step_of(p) for p in (tmp_path / "ckpt").glob("ckpt-*.pt"))
    assert saved >= step_of(first[0]) >= 20

    again = start_training(tmp_path, slow_data, *RESUMABLE, "--hp", "checkpoint_steps=20")
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-3000:]
    assert f"resumed from checkpoint at step {saved}" in err
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["resumed_from_step"] == saved > 0
    # 1600 rows after the held-out split, 16 a batch; the interrupted epoch was finished
    assert report["steps"] == 8 * 100
    assert report["metrics"]["r2"] > 0.95
    assert load_model(tmp_path / "model").predict_records([{f"f{i}": 0.1 for i in range(8)}])


def test_sigterm_writes_a_checkpoint_and_exits_promptly(tmp_path, slow_data):
    proc = start_training(
        tmp_path, slow_data, *RESUMABLE, "--hp", "epochs=1000", "--hp", "checkpoint_steps=100000"
    )
    # checkpoint_steps is huge: the only checkpoint can come from the SIGTERM handler
    deadline = time.monotonic() + 60
    while "training:" not in (line := proc.stderr.readline()):
        assert line and time.monotonic() < deadline, "training did not start"
    time.sleep(0.2)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - sent
    assert proc.returncode == 143, err[-3000:]
    # SageMaker allows 120 s; this shared machine is slow to even exit Python, so 30 s
    assert elapsed < 30, f"took {elapsed:.1f}s to stop"
    checkpoints = list((tmp_path / "ckpt").glob("ckpt-*.pt"))
    assert len(checkpoints) == 1 and step_of(checkpoints[0]) > 0
    assert not (tmp_path / "model").exists()


def test_s3_channel_and_model_publish(tmp_path, monkeypatch):
    """How a Kubernetes Job runs it: data and model locations are s3:// URIs (moto here)."""
    import boto3
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(key, value)
    frame = real_dataset("iris")
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        for bucket in ("features", "artifacts"):
            s3.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
            )
        s3.put_object(Bucket="features", Key="iris/a.csv", Body=frame.iloc[:80].to_csv(index=False))
        s3.put_object(Bucket="features", Key="iris/b.csv", Body=frame.iloc[80:].to_csv(index=False))
        args = train_args(tmp_path, "s3://features/iris/", "--target", "target")
        rc = main([*args, "--model-uri", "s3://artifacts/models/iris-1", "--hp", "epochs=5"], {})
        assert rc == 0, (tmp_path / "failure").read_text()
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="artifacts")["Contents"]}
        assert keys == {
            f"models/iris-1/{f}"
            for f in ("model.pt", "preprocess.json", "metrics.json", "meta.json", "baseline.json")
        }
        report = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert report["train_rows"] + report["validation_rows"] == len(frame)


def test_holdout_split_is_stratified_and_disjoint():
    from workloads.training.tasks.tabular import stratified_holdout as holdout_split

    labels = pd.Series(["a"] * 90 + ["b"] * 10)
    val, train = holdout_split(labels, "binary", 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert set(val).isdisjoint(train) and set(val) | set(train) == set(range(100))
    assert (labels[val] == "b").sum() == 2  # the rare class keeps its share
    again, _ = holdout_split(labels, "binary", 0.2, seed=3)
    assert np.array_equal(val, again)  # seeded: every rank and every restart agree


def test_file_uri_channel(tmp_path):
    real_dataset("wine").to_csv(tmp_path / "wine.csv", index=False)
    uri = (tmp_path / "wine.csv").as_uri()
    rc = main(train_args(tmp_path, uri, "--target", "target", "--hp", "epochs=2"), env={})
    assert rc == 0 and load_model(tmp_path / "model").task == "multiclass"


def test_to_env_is_the_inverse_of_resolve(tmp_path):
    argv = train_args(tmp_path, tmp_path / "train.csv", "--validation", "s3://b/val/")
    argv += ["--model-uri", "s3://b/models/x", "--checkpoint-uri", "s3://b/ckpt/x"]
    argv += ["--target", "y", "--hp", "hidden_sizes=[8, 4]", "--hp", "epochs=3"]
    contract = resolve(argv, {})
    again = resolve([], contract.to_env())
    for field in ("train", "validation", "model_dir", "output_dir", "checkpoint_dir"):
        assert getattr(again, field) == getattr(contract, field), field
    assert again.failure_file == contract.failure_file
    assert (again.model_uri, again.checkpoint_uri) == ("s3://b/models/x", "s3://b/ckpt/x")
    assert again.hyperparameters.dump() == contract.hyperparameters.dump()
    assert again.hyperparameters.values == {"target": "y", "hidden_sizes": [8, 4], "epochs": "3"}


def test_a_rescheduled_run_resumes_from_the_mirrored_checkpoint(tmp_path, slow_data):
    """A spot interruption moves the pod: its local checkpoint dir is gone, the mirror is not."""
    mirror = (tmp_path / "mirror").as_uri()
    extra = (*RESUMABLE, "--hp", "checkpoint_steps=20", "--checkpoint-uri", mirror)
    proc = start_training(tmp_path, slow_data, *extra)
    wait_for_checkpoint(tmp_path / "mirror", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    shutil.rmtree(tmp_path / "ckpt")  # the new node starts with an empty disk
    mirrored = sorted((tmp_path / "mirror").glob("ckpt-*.pt"))
    assert 1 <= len(mirrored) <= 2  # the store keeps the newest two there too

    again = start_training(tmp_path, slow_data, *extra)
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-3000:]
    assert f"resumed from checkpoint at step {step_of(mirrored[-1])}" in err
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["resumed_from_step"] == step_of(mirrored[-1]) > 0
