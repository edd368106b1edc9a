"""Fault probes of the entry points a user types: `mlinfra ...`, `python -m workloads.train`,
`workloads.serve` and `workloads.serving.batch`. A user's mistake (a damaged model folder, a
file that is no file, an unknown name) is one line naming what is wrong and a non-zero exit,
never a traceback; a full or read-only disk or Ctrl-C midway leaves nothing half-written
where a reader would take it for complete."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from moto import mock_aws
from typer.testing import CliRunner

from tests.rollout_support import aws_descriptor
from tests.serve_support import make_frame
from tests.test_storage import _private_tmpfs_works
from workloads.cli import app, read_records
from workloads.serving import batch, server
from workloads.serving.server import InferenceApp, ServeSettings
from workloads.storage import NoSpaceError
from workloads.training import artifact

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rows") / "rows.csv"
    make_frame(12, seed=3).drop(columns=["label"]).to_csv(path, index=False)
    return path


# --- a damaged model folder -----------------------------------------------------------------


def _meta(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        meta = json.loads((model / "meta.json").read_text())
        change(meta)
        (model / "meta.json").write_text(json.dumps(meta))

    return damage


def _truncate(model: Path) -> None:
    data = (model / "model.pt").read_bytes()
    (model / "model.pt").write_bytes(data[: len(data) // 2])


DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "model.pt truncated": (_truncate, "cannot load this artifact"),
    "model.pt empty": (lambda m: (m / "model.pt").write_bytes(b""), "cannot load this artifact"),
    "model.pt not torch": (lambda m: (m / "model.pt").write_text("hi"), "cannot load this"),
    "model.pt of another net": (
        lambda m: torch.save({"w": torch.zeros(1)}, m / "model.pt"),
        "Missing key(s) in state_dict",
    ),
    "meta.json not JSON": (lambda m: (m / "meta.json").write_text("{"), "not valid JSON"),
    "meta.json a list": (lambda m: (m / "meta.json").write_text("[]"), "must each be an object"),
    "meta.json newer format": (_meta(lambda d: d.update(format=99)), "format 99 is not one"),
    "meta.json format text": (_meta(lambda d: d.update(format="2")), "format '2' is not one"),
    "meta.json classes a number": (_meta(lambda d: d.update(classes=3)), "cannot load this"),
    "preprocess.json not JSON": (
        lambda m: (m / "preprocess.json").write_text("x"),
        "cannot load this artifact",
    ),
    "model.pt a folder": (
        lambda m: ((m / "model.pt").unlink(), (m / "model.pt").mkdir()),
        "missing ['model.pt']",
    ),
    "folder empty": (lambda m: [p.unlink() for p in m.iterdir()], "is not a model artifact"),
    "folder missing": (shutil.rmtree, "is not a model artifact"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_batch_refuses_a_damaged_model_folder_in_one_line(case, model_dir, rows, tmp_path, capsys):
    damage, expected = DAMAGE[case]
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    damage(model)
    out = tmp_path / "out.csv"
    assert batch.main([str(rows), str(out), "--model-dir", str(model)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"batch: {model}") and expected in line, line
    assert _names(tmp_path) == (["model"] if model.exists() else [])  # no output, no temp


def test_the_server_logs_a_damaged_model_in_one_line(model_dir, tmp_path, caplog):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    _truncate(model)
    app_ = InferenceApp(ServeSettings(model_dir=model, port=8080))
    with caplog.at_level(logging.ERROR, logger="mlinfra.serve"):
        app_._load(loop=None)  # type: ignore[arg-type]  # fails before the loop is used
    assert app_.predictor is None and app_.load_error
    assert f"loading the model from {model} failed" in app_.load_error
    assert "cannot load this artifact" in app_.load_error
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is None and record.getMessage() == app_.load_error


@pytest.mark.parametrize(
    ("loader", "expected"),
    [("nope:load", "no module named 'nope'"), ("nope.sub:load", "no module named 'nope.sub'")],
)
def test_serve_refuses_a_loader_module_that_does_not_exist(model_dir, loader, expected):
    argv = ["--model-dir", str(model_dir), "--loader", loader, "--port", "1"]
    with pytest.raises(SystemExit) as caught:  # before binding: was up with /ping failing
        server.main(argv)
    assert str(caught.value) == (
        f"serve: model loader {loader!r} (--loader or {server.ENV_LOADER}): {expected}"
    )


# --- files a user names that are no good ----------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), "not a file (a folder?)"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00"), "not UTF-8 text (offset 0)"),
    ],
)
def test_predict_names_a_rows_file_it_cannot_read(tmp_path, make, expected):
    path = tmp_path / "rows.json"
    make(path)
    with pytest.raises(ValueError) as caught:
        read_records(path)
    assert str(caught.value).startswith(f"{path}: {expected}")


def test_a_state_folder_that_is_a_file_is_one_line(tmp_path):
    state = tmp_path / "state"
    state.write_text("not a folder")
    result = runner.invoke(app, ["up", "--state-dir", str(state)])
    assert result.exit_code == 1
    assert _one_line(result.output) == f"error: {state / 'local'}: Not a directory"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["deploy", "nope"], "error: endpoint 'nope' is not declared in the platform"),
        (["batch", "s3://i/", "s3://o/", "-g", "nope"], "error: model group 'nope' is not"),
    ],
)
def test_deploy_and_batch_refusals_are_printed_once(aws_env, tmp_path, monkeypatch, argv, expected):
    monkeypatch.delenv("MLINFRA_PLATFORM", raising=False)
    path = tmp_path / "platform.json"
    aws_descriptor().write(path)
    with mock_aws():
        result = runner.invoke(app, [*argv, "--stack", "team-dev", "--platform", str(path)])
    assert result.exit_code == 1
    assert _one_line(result.output).startswith(expected)  # was followed by "error: 1"


# --- a disk that is full or read-only midway -------------------------------------------------


def _read_only(src, dst, *args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src))


def test_a_read_only_disk_under_mlinfra_up_is_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _read_only)
    result = runner.invoke(app, ["up", "--state-dir", str(tmp_path / "s")])
    descriptor = tmp_path / "s" / "local" / "platform.json"
    assert result.exit_code == 1
    assert _one_line(result.output) == f"error: {descriptor}: Read-only file system"
    assert not descriptor.exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("errno_", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_batch_output_that_cannot_be_written_keeps_the_old_one(
    model_dir, rows, tmp_path, monkeypatch, capsys, errno_
):
    out = tmp_path / "out.csv"
    out.write_text("old")

    def refuse(src, dst, *args, **kwargs):
        raise OSError(errno_, os.strerror(errno_), str(src))

    monkeypatch.setattr(os, "replace", refuse)
    assert batch.main([str(rows), str(out), "--model-dir", str(model_dir)]) == 2
    line = _one_line(capsys.readouterr().err)
    if errno_ == errno.ENOSPC:
        assert line.startswith(f"batch: no space left on device while writing {out}")
    else:
        assert line == f"batch: {out}: {os.strerror(errno_)}"  # the file, not its temp name
    assert _names(tmp_path) == ["out.csv"] and out.read_text() == "old"


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_batch_refuses_an_output_uri_it_cannot_write(
    model_dir, rows, tmp_path, monkeypatch, capsys, scheme
):
    monkeypatch.chdir(tmp_path)
    uri = f"{scheme}://bucket/scored.csv"
    assert batch.main([str(rows), uri, "--model-dir", str(model_dir)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"batch: {uri}: OUTPUT is a local file (a path or file://)")
    assert _names(tmp_path) == []  # was written to ./s3:/bucket/scored.csv


def test_batch_writes_a_file_uri_output(model_dir, rows, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "scored.csv"
    assert batch.main([str(rows), out.as_uri(), "--model-dir", str(model_dir)]) == 0
    assert _names(tmp_path) == ["out"] and out.read_text().startswith("age,")


def test_ctrl_c_during_batch_scoring_writes_nothing(model_dir, rows, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.jsonl"
    real = batch.score_frames

    def interrupted(*args, **kwargs):
        yield from real(*args, **kwargs)
        raise KeyboardInterrupt  # after the rows were written to the temporary file

    monkeypatch.setattr(batch, "score_frames", interrupted)
    try:
        code = batch.main([str(rows), str(out), "--model-dir", str(model_dir)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C left batch.main as a traceback")
    assert code == 130
    assert _one_line(capsys.readouterr().err) == f"batch: interrupted; nothing written to {out}"
    assert _names(tmp_path) == []


class _Task:
    def save(self, folder: Path, model: torch.nn.Module) -> dict:
        return {}


def test_a_full_disk_while_saving_the_model_is_a_no_space_error(tmp_path, monkeypatch):
    model = tmp_path / "model"
    net = torch.nn.Linear(2, 1)
    artifact.save_artifact(model, _Task(), net, {"task": "tabular"}, {"loss": 1.0})
    before = {p.name: p.read_bytes() for p in model.iterdir()}

    def full(obj, handle):  # torch writes through the Python file, which reports the disk
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifact.torch, "save", full)
    with pytest.raises(NoSpaceError, match=f"while writing {model}"):
        artifact.save_artifact(model, _Task(), net, {"task": "tabular"}, {"loss": 0.5})
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert _names(tmp_path) == ["model"]


# --- the training entrypoint: a real full disk, Ctrl-C ---------------------------------------


def _train_cmd(data: Path, model: Path, out: Path, *hp: str) -> list[str]:
    cmd = [sys.executable, "-m", "workloads.train", "--train", str(data), "--target", "label"]
    cmd += ["--model-dir", str(model), "--output-data-dir", str(out / "output")]
    cmd += ["--checkpoint-dir", str(out / "ckpt"), "--failure-file", str(out / "failure")]
    for item in hp:
        cmd += ["--hp", item]
    return cmd


FILL = "import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n" + (
    "for n in (65536, 4096, 1):\n"
    "    try:\n"
    "        while True: os.write(fd, b'0' * n)\n"
    "    except OSError: pass\n"
)


@pytest.mark.skipif(not _private_tmpfs_works(), reason="no private tmpfs mount allowed here")
def test_training_onto_a_full_disk_is_one_line_and_leaves_no_artifact(tmp_path):
    data = tmp_path / "train.csv"
    make_frame(120).to_csv(data, index=False)
    disk = tmp_path / "disk"
    disk.mkdir()
    fill = [sys.executable, "-c", FILL, str(disk / "filler")]
    train = _train_cmd(data, disk / "model", tmp_path, "epochs=1")
    script = 'mount -t tmpfs -o size=1m tmpfs "$1" && "$2" "$3" "$4" "$5" && shift 5 && exec "$@"'
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"]
    cmd += [str(disk), *fill, *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"storage error: no space left on device while writing {disk / 'model'} (left as it "
        "was): free some space and run the command again"
    )
    assert (tmp_path / "failure").read_text().strip() == last


def test_ctrl_c_during_training_is_one_line_and_writes_no_artifact(tmp_path):
    data = tmp_path / "train.csv"
    make_frame(120).to_csv(data, index=False)
    model = tmp_path / "model"
    cmd = _train_cmd(data, model, tmp_path, "epochs=100000", "patience=100000")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the training loop runs
        line = proc.stderr.readline()
        lines.append(line)
        if "steps per epoch" in line or not line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, "".join(lines) + rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1] == (
        "interrupted (Ctrl-C): a rerun resumes from the newest checkpoint"
    )
    assert not model.exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
