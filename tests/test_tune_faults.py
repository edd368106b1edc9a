"""Faults a reviewer injects into `mlinfra tune` and the local driver: a trial killed with
SIGKILL, garbage and torn metric lines, a torn or missing metrics.json, a NaN objective,
a full disk while the report or the best model is written; and the CLI's bad input (a
space that is no file or no UTF-8, missing data, no such stack, a study name that is a
path, options for another backend). Each ends in one clear message, never a traceback,
and a journal a rerun resumes from."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from tests.test_tune_local import (  # noqa: F401 (data: a fixture)
    ENV,
    STACKS,
    alive,
    data,
    space,
    trials,
    wait_for,
)
from workloads import storage
from workloads.cli import app
from workloads.local import env as localenv
from workloads.platform import load_descriptor
from workloads.registry.store import registry_from_descriptor
from workloads.tuning.local import LocalTuner
from workloads.tuning.space import parse_space
from workloads.tuning.study import TuningError

# A stand-in for `workloads.tuning.trial_process`: what it does is picked by the trial's
# learning rate, so one study runs each fault once, in the order enqueued.
FAKE_TRIAL = r"""
import json, os, signal, sys
from pathlib import Path
hps = json.loads(os.environ["SM_HPS"])
model, output = Path(os.environ["SM_MODEL_DIR"]), Path(os.environ["SM_OUTPUT_DATA_DIR"])
case = {0.01: "killed", 0.02: "torn", 0.03: "nan", 0.04: "garbage", 0.05: "missing",
        0.06: "slow"}[float(hps["learning_rate"])]
out = sys.stdout
checkpoint = Path(os.environ["MLINFRA_CHECKPOINT_DIR"]) / "state"
def finish(text):
    model.mkdir(parents=True, exist_ok=True)
    (model / "meta.json").write_text("{}")
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(text)
if case == "killed":  # mid-epoch: one epoch reported, then SIGKILL (the OOM killer)
    out.write("#metric validation_loss=0.9 epoch=1\n"); out.flush()
    os.kill(os.getpid(), signal.SIGKILL)
if case == "garbage":
    out.write("#metric validation_loss=abc epoch=1\n#metric validation_loss=0.7 epoch=\n")
    out.write("#metric \x00\x01\x02 garbage\n" + "x" * 300_000 + "\n")
    out.write("#metric validation_loss=0.5 epoch=1\n#metric validation_loss=0.4 epoch=2\n")
    out.write("#metric validation_loss=0.1 ep")  # torn: the process ends mid-line
    finish(json.dumps({"metrics": {"validation_loss": 0.4, "accuracy": 0.8}}))
if case == "torn":  # exit 0, but its metrics file was cut off (a crash, a full disk)
    finish('{"metrics": {"validation_lo')
if case == "nan":
    out.write("#metric validation_loss=nan epoch=1\n")
    finish(json.dumps({"metrics": {"validation_loss": float("nan")}}))
if case == "slow":  # the harness in small: checkpoints on SIGTERM (exit 143), resumes
    if checkpoint.exists():
        out.write("resumed from checkpoint\n#metric validation_loss=0.3 epoch=2\n")
        finish(json.dumps({"metrics": {"validation_loss": 0.3}}))
        sys.exit(0)
    def stop(signum, frame):
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text("epoch 1")
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    out.write("#metric validation_loss=0.6 epoch=1\n"); out.flush()
    (model.parent / "epoch-1").write_text("")
    while True:
        signal.pause()
sys.exit(0)  # "missing": exit 0 with no metrics.json at all
"""

# The tuner in its own process, as `mlinfra tune` runs it: Ctrl-C reaches it alone.
TUNER = """
import json, sys
from pathlib import Path
from workloads.tuning.local import LocalTuner
from workloads.tuning.space import parse_space
doc, folder, script = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
tuner = LocalTuner(parse_space(doc, "tune.yaml"), folder, study="s", train="unused.csv",
                   launcher=[sys.executable, script])
for rate in json.loads(sys.argv[4]):
    tuner.study.enqueue_trial({"learning_rate": rate})
tuner.run()
"""


def fake_space(rates: list[float]) -> dict:
    doc = space(len(rates), epochs=2)
    doc["parameters"] = {"learning_rate": {"type": "categorical", "choices": rates}}
    return doc


def fake_trial(tmp_path: Path) -> Path:
    script = tmp_path / "fake_trial.py"
    script.write_text(FAKE_TRIAL)
    return script


def fake_tuner(tmp_path: Path, rates: list[float], enqueue: bool = True) -> LocalTuner:
    t = LocalTuner(
        parse_space(fake_space(rates), "tune.yaml"), tmp_path / "study", study="s",
        train="unused.csv", env=ENV, launcher=[sys.executable, str(fake_trial(tmp_path))],
    )  # fmt: skip
    for rate in rates if enqueue else []:
        t.study.enqueue_trial({"learning_rate": rate})
    return t


def test_broken_trials_fail_with_a_reason_and_the_study_goes_on(tmp_path):
    # killed, torn, garbage (which completes), nan, missing: never three failures in a row
    t = fake_tuner(tmp_path, [0.01, 0.02, 0.04, 0.03, 0.05])
    result = t.run()
    done = trials(tmp_path / "study")
    states = [x.state.name for x in done]
    assert states == ["FAIL", "FAIL", "COMPLETE", "FAIL", "FAIL"], [x.user_attrs for x in done]
    reasons = [x.user_attrs.get("failure", "") for x in done]
    assert reasons[0].startswith("killed by SIGKILL: most often out of memory")
    assert "(exit 137); see" in reasons[0] and reasons[0].endswith("0000/train.log")
    assert "metrics.json is not whole (JSONDecodeError" in reasons[1]
    assert reasons[3] == "objective validation_loss is nan"
    assert reasons[4].startswith("exited 0 without writing") and "metrics.json" in reasons[4]
    # the garbage was skipped, the torn last line ignored: epochs 1 and 2 as printed
    assert done[2].value == 0.4 and done[2].intermediate_values == {1: 0.5, 2: 0.4}
    assert done[0].intermediate_values == {1: 0.9}  # reported before it was killed
    assert result.best is not None and result.best.number == 2
    assert [v.state for v in sorted(result.trials, key=lambda v: v.number)] == states
    assert not any((tmp_path / "study" / "trials").glob("*/checkpoints"))


def test_three_failures_in_a_row_stop_the_search_with_the_last_reason(tmp_path):
    # killed, torn, missing: three in a row; the fourth (it would complete) never starts and
    # stays queued for a rerun
    t = fake_tuner(tmp_path, [0.01, 0.02, 0.05, 0.04])
    with pytest.raises(TuningError, match=r"^3 trials failed in a row; the last: exited 0 without"):
        t.run()
    states = [x.state.name for x in trials(tmp_path / "study")]
    assert states == ["FAIL", "FAIL", "FAIL", "WAITING"]


def test_a_torn_metrics_file_left_by_a_crash_is_failed_on_resume(tmp_path):
    """A trial that finished (exit 0) while its tuner died is recorded by the next tuner
    from its files; a torn metrics.json there failed every rerun with the same error."""
    t = fake_tuner(tmp_path, [0.02])
    trial = t.study.ask()  # the crashed tuner's trial: RUNNING, owner gone
    t.space.suggest(trial)
    trial.set_user_attr("tuner", "gone")
    folder = tmp_path / "study" / "trials" / f"{trial.number:04d}"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "meta.json").write_text("{}")
    (folder / "output").mkdir()
    (folder / "output" / "metrics.json").write_text('{"metrics": {"validation_lo')
    LocalTuner(t.space, t.folder, study="s", train="unused.csv", env=ENV).run()
    (only,) = trials(tmp_path / "study")
    assert only.state.name == "FAIL" and "is not whole" in only.user_attrs["failure"]


def test_ctrl_c_then_resume_keeps_finished_trials_and_numbers(tmp_path):
    """SIGINT to the tuner: it stops its running trial (SIGTERM: the trial checkpoints),
    says how to resume and exits 1; the rerun resumes that trial under its number."""
    rates = [0.04, 0.06]  # a quick trial, then one that runs until it is stopped
    folder = tmp_path / "study"
    argv = [json.dumps(fake_space(rates)), str(folder), str(fake_trial(tmp_path))]
    proc = subprocess.Popen(
        [sys.executable, "-c", TUNER, *argv, json.dumps(rates)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (folder / "trials" / "0001" / "epoch-1").exists(), 60)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out.decode()
    assert b"interrupted; the running trials checkpointed. Run the same command again" in out
    before = trials(folder)
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    pid = int((folder / "trials" / "0001" / "pid").read_text())
    wait_for(lambda: not alive(pid), 10)  # no trial outlives its tuner
    assert (folder / "trials" / "0001" / "checkpoints" / "state").is_file()

    result = fake_tuner(tmp_path, rates, enqueue=False).run()
    after = trials(folder)
    assert [t.number for t in after] == [0, 1]  # none lost, none duplicated
    assert [t.state.name for t in after] == ["COMPLETE", "COMPLETE"]
    assert after[0].datetime_complete == before[0].datetime_complete  # kept as it was
    assert after[1].intermediate_values == {1: 0.6, 2: 0.3}  # epoch 1 reported once
    assert "resumed from checkpoint" in (folder / "trials" / "0001" / "train.log").read_text()
    assert result.count("COMPLETE") == 2 and result.best.number == 1


def test_a_record_cut_off_by_a_full_disk_does_not_end_the_study(tmp_path):
    """Optuna appends the next record to a torn last line; the study then never loaded
    again (AttributeError in ask). The next tuner drops the torn record and goes on."""
    first = fake_tuner(tmp_path, [0.04, 0.05], enqueue=False)
    first.trials = 1
    first.study.enqueue_trial({"learning_rate": 0.04})
    first.run()
    journal = tmp_path / "study" / "journal.log"
    whole = journal.read_bytes()
    with open(journal, "ab") as f:  # ENOSPC midway through the next record
        f.write(b'{"op_code":4,"worker_id":"x","trial_id":1,"par')
    t = fake_tuner(tmp_path, [0.04, 0.05], enqueue=False)  # budget 2: one more trial
    t.study.enqueue_trial({"learning_rate": 0.04})
    t.run()
    done = trials(tmp_path / "study")
    assert [x.number for x in done] == [0, 1]
    assert [x.state.name for x in done] == ["COMPLETE", "COMPLETE"]
    assert journal.read_bytes().startswith(whole) and journal.read_bytes().endswith(b"\n")


# --- the CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("stack") / "state"
    localenv.up("local", state, stacks_dir=STACKS, ports={"churn": localenv.free_port()})
    return state


def tune(state: Path, *argv: str):
    base = ["tune", "--state-dir", str(state), "--stacks-dir", str(STACKS)]
    return CliRunner().invoke(app, [*base, *argv], env={"COLUMNS": "200"})


def one_error(result) -> str:
    """Exit 1 with one `error:` message and no traceback; the message."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output, result.output
    assert result.output.count("error:") == 1, result.output
    return result.output


def test_cli_bad_input_is_one_line_never_a_traceback(tmp_path, stack, data):  # noqa: F811
    good = tmp_path / "tune.yaml"
    good.write_text(json.dumps(space(1, epochs=1)))
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes("objective: {metric: accuracy}  # caf\xe9\n".encode("latin-1"))
    platform = tmp_path / "platform.json"
    common = ["--train", data[0], "--validation", data[1]]
    cases = [
        (["--space", str(tmp_path / "nope.yaml"), *common], "(file): not found"),
        (["--space", str(tmp_path), *common], "(file): not a file"),
        (["--space", str(not_utf8), *common], "not UTF-8 text (byte 0xe9"),
        (["--space", str(good), "--train", str(tmp_path / "no.csv")], "no.csv does not exist"),
        (
            ["--space", str(good), "--train", data[0], "--validation", str(tmp_path / "v")],
            "--validation",
        ),
        (["--space", str(good), *common, "--stack", "nosuch"], "no platform descriptor"),
        (["--space", str(good), *common, "--platform", str(platform)], "cannot be read"),
        (["--space", str(good), *common, "--group", "nosuch"], "'nosuch' is not declared"),
        (["--space", str(good), *common, "--study", "../../escape"], "--study '../../escape'"),
        (["--space", str(good), *common, "--study", ""], "--study ''"),
        (["--space", str(good), *common, "--serve-image", "v1"], "--serve-image: for stacks"),
    ]
    for argv, words in cases:
        output = one_error(tune(stack, *argv))
        assert words in output, (argv, output)
    platform.write_text("{not json")
    output = one_error(tune(stack, "--space", str(good), *common, "--platform", str(platform)))
    assert "not a platform descriptor" in output
    platform.write_text('{"stack": 5}')  # JSON, not a descriptor: pydantic's text was 20 lines
    output = one_error(tune(stack, "--space", str(good), *common, "--platform", str(platform)))
    assert "not a platform descriptor: " in output and "pydantic.dev" not in output, output
    assert len(output.strip().splitlines()) == 1, output
    # nothing was started: no study folder, nothing outside the state dir
    assert not (stack / "local" / "tuning").exists()
    assert not (stack / "escape").exists() and not (stack.parent / "escape").exists()


def study(folder: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "journal.log"))
    )
    return optuna.load_study(study_name=folder.name, storage=storage)


def _no_space(exc_path: str):
    """`storage._fsync_tree` that fails with ENOSPC for the paths containing `exc_path`."""
    real = storage._fsync_tree

    def fsync_tree(path: Path) -> None:
        if exc_path in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path)

    return fsync_tree


def test_a_full_disk_while_reporting_or_registering_leaves_a_resumable_study(
    tmp_path,
    stack,
    data,  # noqa: F811
    monkeypatch,
):
    path = tmp_path / "disk.yaml"
    objective = {"metric": "accuracy", "direction": "maximize"}
    path.write_text(json.dumps(space(1, epochs=1, objective=objective)))
    argv = ["--space", str(path), "--train", data[0], "--validation", data[1]]
    folder = stack / "local" / "tuning" / "churn-disk"
    descriptor = load_descriptor(stack / "local" / "platform.json")
    models = localenv.uri_path(descriptor.buckets.artifacts) / "models" / "churn"

    # 1. the report: written through a temporary name; the disk fills before its rename
    with monkeypatch.context() as m:
        m.setattr(storage, "_fsync_tree", _no_space("report.html"))
        output = one_error(tune(stack, *argv))
    assert f"no space left on device while writing {folder / 'report.html'}" in output
    assert sorted(p.name for p in folder.iterdir() if "report" in p.name) == []  # no half
    (first,) = study(folder).trials
    assert first.state.name == "COMPLETE"

    # 2. the best model's copy into the artifacts bucket: the disk fills midway
    real_copy = shutil.copyfile

    def copyfile(src, dst, *args, **kwargs):
        if Path(src).name == "model.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_copy(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(shutil, "copyfile", copyfile)
        output = one_error(tune(stack, *argv))
    assert "no space left on device while writing" in output and str(models) in output
    assert not models.exists() or not any(models.iterdir())  # no partial artifact anywhere
    assert registry_from_descriptor(descriptor).list_versions("churn") == []

    # 3. space again: the same study resumes, nothing retrained, the best registered
    result = tune(stack, *argv)
    assert result.exit_code == 0, result.output
    assert "registered: churn v1" in result.output
    (again,) = study(folder).trials
    assert again.datetime_complete == first.datetime_complete
    (artifact,) = list(models.iterdir())
    assert (artifact / "meta.json").is_file() and (artifact / "model.pt").is_file()
    assert (folder / "report.html").is_file()
    assert study(folder).best_trial.number == 0
