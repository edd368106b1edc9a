"""The local tuning driver on tiny real trials: pruning observed, resume after the tuner is
killed mid-run (no duplicate trial numbers, finished trials kept), two tuners on one study,
a bad objective metric, and `mlinfra tune` registering and gating the best trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

from workloads.cli import app
from workloads.local import env as localenv
from workloads.platform import load_descriptor
from workloads.registry.store import registry_from_descriptor
from workloads.tuning.local import LocalTuner
from workloads.tuning.space import parse_space
from workloads.tuning.study import TuningError

REPO = Path(__file__).resolve().parents[1]
STACKS = REPO / "stacks"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    """A small, separable binary problem (the churn stack's gate asks accuracy >= 0.7)."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["y"] = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    frame[:300].to_csv(folder / "train.csv", index=False)
    frame[300:].to_csv(folder / "validation.csv", index=False)
    return str(folder / "train.csv"), str(folder / "validation.csv")


def space(trials: int, parallel: int = 1, epochs: int = 3, **extra) -> dict:
    doc = {
        "objective": {"metric": "validation_loss", "direction": "minimize"},
        "budget": {"trials": trials, "parallel": parallel},
        "sampler": "random",
        "seed": 0,
        "pruning": "off",
        "fixed": {"target": "y", "epochs": epochs, "batch_size": 32, "hidden_sizes": "8"},
        "parameters": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
    }
    return doc | extra


def tuner(doc: dict, folder: Path, data, **kw) -> LocalTuner:
    return LocalTuner(
        parse_space(doc, "tune.yaml"), folder, study="s", train=data[0], validation=data[1],
        env=ENV, **kw,
    )  # fmt: skip


def trials(folder: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "journal.log"))
    )
    return optuna.load_study(study_name="s", storage=storage).get_trials()


def test_a_study_of_tiny_trials_prunes_the_hopeless_ones(tmp_path, data):
    doc = space(2, epochs=4)
    doc["pruning"] = {"type": "median", "startup_trials": 1, "warmup_epochs": 0}
    doc["parameters"] = {"learning_rate": {"type": "categorical", "choices": [0.1, 1e-7]}}
    updates = []
    t = tuner(doc, tmp_path, data, on_update=updates.append)
    # The good trial first, then one that cannot learn: it is pruned at its first epoch.
    for lr in (0.1, 1e-7):
        t.study.enqueue_trial({"learning_rate": lr})
    result = t.run()
    states = [v.state for v in sorted(result.trials, key=lambda v: v.number)]
    assert states == ["COMPLETE", "PRUNED"], result.trials
    assert result.best is not None and result.best.params == {"learning_rate": 0.1}
    assert result.best_metrics["accuracy"] > 0.8
    assert (result.best_model_dir / "meta.json").is_file()
    pruned = [t for t in trials(tmp_path) if t.state == optuna.trial.TrialState.PRUNED]
    assert all(1 in t.intermediate_values for t in pruned)  # reported, then pruned
    # the live view saw each trial running and finished
    assert {u.state for u in updates} >= {"RUNNING", "COMPLETE", "PRUNED"}
    assert not any((tmp_path / "trials").glob("*/checkpoints"))  # finished: no checkpoints


TUNER_SCRIPT = """
import json, sys
from pathlib import Path
from workloads.tuning.local import LocalTuner
from workloads.tuning.space import parse_space
doc, folder, train, validation, enqueue = json.loads(sys.argv[1]), *sys.argv[2:5], sys.argv[5]
tuner = LocalTuner(parse_space(doc, "tune.yaml"), Path(folder), study="s", train=train,
                   validation=validation)
for params in json.loads(enqueue):
    tuner.study.enqueue_trial(params)
tuner.run()
"""


def start_tuner(doc: dict, folder: Path, data, enqueue: list | None = None) -> subprocess.Popen:
    argv = [json.dumps(doc), str(folder), *data, json.dumps(enqueue or [])]
    return subprocess.Popen(
        [sys.executable, "-c", TUNER_SCRIPT, *argv],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(predicate, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def test_resume_after_the_tuner_is_killed_mid_run(tmp_path, data):
    # A quick first trial, then a slow one (many epochs, small batches) caught mid-run.
    doc = space(2)
    del doc["fixed"]["epochs"]
    doc["fixed"] |= {"batch_size": 8, "patience": 1000, "checkpoint_steps": 20}
    doc["parameters"]["epochs"] = {"type": "categorical", "choices": [2, 30]}
    enqueue = [{"learning_rate": 0.05, "epochs": 2}, {"learning_rate": 0.05, "epochs": 30}]
    proc = start_tuner(doc, tmp_path, data, enqueue)

    def one_done_one_running() -> bool:
        if not (tmp_path / "journal.log").exists():
            return False
        try:
            states = [t.state.name for t in trials(tmp_path)]
        except KeyError:  # the journal is there, the study's creation not written yet
            return False
        return "COMPLETE" in states and "RUNNING" in states

    try:
        wait_for(one_done_one_running, 180)
        running = next(t for t in trials(tmp_path) if t.state.name == "RUNNING")
        wait_for(
            lambda: any((tmp_path / "trials" / f"{running.number:04d}" / "checkpoints").glob("*"))
        )
    finally:
        proc.send_signal(signal.SIGKILL)  # the tuner dies without running any code
        proc.wait()
    before = {t.number: t for t in trials(tmp_path)}
    pids = [int(f.read_text()) for f in (tmp_path / "trials").glob("*/pid")]
    orphan = int((tmp_path / "trials" / f"{running.number:04d}" / "pid").read_text())
    # its trial does not train on unowned: the kernel sent it SIGTERM; it checkpointed
    wait_for(lambda: not any(alive(pid) for pid in pids), 60)
    assert before[running.number].state.name == "RUNNING"

    result = tuner(doc, tmp_path, data).run()
    after = trials(tmp_path)
    assert [t.number for t in after] == [0, 1]  # none lost, none duplicated
    assert all(t.state.name == "COMPLETE" for t in after)
    for number, old in before.items():
        if old.state.name == "COMPLETE":  # finished trials kept as they were
            assert after[number].value == old.value
            assert after[number].datetime_complete == old.datetime_complete
    assert not alive(orphan)
    log = (tmp_path / "trials" / f"{running.number:04d}" / "train.log").read_text()
    assert "resumed from checkpoint" in log  # it checkpointed on SIGTERM; resumed
    assert result.count("COMPLETE") == 2


def test_two_tuners_share_one_study(tmp_path, data):
    doc = space(2, epochs=2)
    a, b = start_tuner(doc, tmp_path, data), start_tuner(doc, tmp_path, data)
    for proc in (a, b):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode()
    done = trials(tmp_path)
    assert [t.number for t in done] == [0, 1]  # the budget is the study's, not each one's
    assert all(t.state.name == "COMPLETE" for t in done)
    assert len({t.user_attrs["tuner"] for t in done}) == 2  # both did work


def test_a_running_sagemaker_trial_in_the_study_is_never_adopted(tmp_path, data):
    doc = space(2, epochs=2)
    local = tuner(doc, tmp_path, data)
    local.study.add_trial(
        optuna.trial.create_trial(
            params={"learning_rate": 0.05},
            distributions=local.space.distributions(),
            state=optuna.trial.TrialState.RUNNING,
            user_attrs={"backend": "sagemaker", "sagemaker_training_job": "churn-tune-001-abcd"},
        )
    )
    local.run()
    done = trials(tmp_path)
    assert [t.state.name for t in done] == ["RUNNING", "COMPLETE"]  # its own budget's trial
    assert "tuner" not in done[0].user_attrs


def test_an_objective_the_run_does_not_report_stops_the_search(tmp_path, data):
    doc = space(3, epochs=3, objective={"metric": "r2", "direction": "maximize"})
    with pytest.raises(TuningError, match="'r2' is not reported .* it reports: accuracy, auc"):
        tuner(doc, tmp_path, data).run()
    assert len(trials(tmp_path)) == 1


def test_a_study_resumed_with_another_space_is_refused(tmp_path, data):
    tuner(space(1), tmp_path, data)
    other = space(1)
    other["parameters"]["learning_rate"]["high"] = 0.5
    with pytest.raises(TuningError, match="made from another search space"):
        tuner(other, tmp_path, data)


def test_mlinfra_tune_registers_and_gates_the_best(tmp_path, data):
    state = tmp_path / "state"
    localenv.up("local", state, stacks_dir=STACKS, ports={"churn": localenv.free_port()})
    path = tmp_path / "churn-tune.yaml"
    doc = space(1, epochs=3, objective={"metric": "accuracy", "direction": "maximize"})
    path.write_text(json.dumps(doc))  # JSON is YAML
    argv = ["tune", "--space", str(path), "--train", data[0], "--validation", data[1]]
    argv += ["--state-dir", str(state), "--stacks-dir", str(STACKS)]
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "study churn-churn-tune: 1 trial (1 complete" in result.output
    assert "registered: churn v1 (Approved)" in result.output
    report = state / "local" / "tuning" / "churn-churn-tune" / "report.html"
    assert "optimisation history" in report.read_text()
    descriptor = load_descriptor(state / "local" / "platform.json")
    version = registry_from_descriptor(descriptor).get("churn", 1)
    assert (
        version.metrics["accuracy"] >= 0.7
        and "tuned: study churn-churn-tune" in version.description
    )
    assert localenv.uri_path(version.model_uri).joinpath("meta.json").is_file()
    # run again: the study is complete; nothing new is trained or registered
    again = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    assert again.exit_code == 0 and "registered: churn v1" in again.output, again.output

    # a bad space fails before any trial, naming the file and the field
    doc["budget"]["parallel"] = 0
    path.write_text(json.dumps(doc))
    bad = CliRunner().invoke(app, [*argv, "--study", "fresh"], env={"COLUMNS": "200"})
    assert bad.exit_code == 1
    assert f"invalid search space {path}" in bad.output and "budget.parallel" in bad.output
    assert not (state / "local" / "tuning" / "fresh").exists()

    # the cloud backends' options are refused on a stack whose trials are local processes
    cloud = CliRunner().invoke(
        app, [*argv, "--study", "fresh", "--instance-type", "ml.g5.xlarge", "--pool", "gpu"]
    )
    assert cloud.exit_code == 1 and "Traceback" not in cloud.output
    assert "--pool and --instance-type: for stacks that train on Kubernetes or SageMaker" in (
        cloud.output
    )
    assert not (state / "local" / "tuning" / "fresh").exists()
