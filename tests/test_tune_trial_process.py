"""No trial process outlives its tuner: the kernel (or the watcher thread) stops a trial
whose tuner died outright, and a tuner whose `run` ends on an exception stops, then kills,
the trials it started. (The resume after a SIGKILLed tuner runs in test_tune_local.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workloads.tuning import local as local_mod
from workloads.tuning import trial_process
from workloads.tuning.local import LocalTuner
from workloads.tuning.space import parse_space

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

CHILD = """
import os, sys, time
from workloads.tuning import trial_process
if sys.argv[1] == "watcher":
    trial_process._pdeathsig = lambda sig: False
print("bound", trial_process.bind_to_parent(os.getppid()), flush=True)
time.sleep(60)
"""
# The tuner's stand-in: starts the child, says its pid, waits to be killed.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
print(child.pid, flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def wait_for(predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("mode", ["pdeathsig", "watcher"])
def test_a_trial_ends_when_its_tuner_is_killed(mode):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, mode], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().split() == ["bound", mode]
        assert alive(child)
    finally:
        parent.kill()  # SIGKILL: the tuner runs no code of its own
        parent.wait()
    wait_for(lambda: not alive(child), 10)


def test_a_trial_whose_tuner_is_already_gone_stops_at_once(monkeypatch):
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    trial_process.bind_to_parent(os.getppid() + 1)  # not our parent: it died and we moved
    assert sent == [(os.getpid(), signal.SIGTERM)]


def test_the_entrypoint_names_its_argument(capsys):
    assert trial_process.main([]) == 2
    assert "TUNER_PID" in capsys.readouterr().err


# A trial that ignores SIGTERM (a hung one): only SIGKILL to its group ends it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")
def test_a_tuner_ending_on_an_exception_kills_its_trials(tmp_path, monkeypatch):
    monkeypatch.setattr(local_mod, "TRIAL_STOP_S", 0.5)
    doc = {
        "objective": {"metric": "validation_loss", "direction": "minimize"},
        "budget": {"trials": 2, "parallel": 2},
        "sampler": "random",
        "pruning": "off",
        "fixed": {"target": "y", "epochs": 1},
        "parameters": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.1}},
    }
    tuner = LocalTuner(
        parse_space(json.loads(json.dumps(doc)), "tune.yaml"), tmp_path, study="s",
        train=str(tmp_path / "train.csv"), env=ENV, launcher=[sys.executable, "-c", STUBBORN],
    )  # fmt: skip
    pid_files = [tmp_path / "trials" / f"{n:04d}" / "pid" for n in (0, 1)]

    def crash(signum, frame):
        raise RuntimeError("the tuner crashed")

    def arm(signum, frame):  # once both trials run, crash the driver's main thread
        if all(f.is_file() for f in pid_files):
            signal.signal(signal.SIGALRM, crash)
        signal.setitimer(signal.ITIMER_REAL, 0.1)

    previous = signal.signal(signal.SIGALRM, arm)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        with pytest.raises(RuntimeError, match="the tuner crashed"):
            tuner.run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pids = [int(f.read_text()) for f in pid_files]
    wait_for(lambda: not any(alive(pid) for pid in pids), 5)
