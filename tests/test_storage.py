"""The one atomic write and the SQLite wrapper: temp files never left behind, a full disk is
one clear error naming the file, a store that exists but cannot be read is never an empty
one. The full-disk probe runs the real commands on a 4 MiB tmpfs (in a private mount
namespace) where the kernel allows it; the patched-write tests run everywhere."""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from workloads.storage import (
    CorruptStoreError,
    NoSpaceError,
    SqliteDatabase,
    StorageError,
    atomic_path,
    atomic_write,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v TEXT);"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_text_bytes_and_writer(tmp_path):
    atomic_write(tmp_path / "a" / "x.txt", "text")
    atomic_write(tmp_path / "a" / "y.bin", b"\x00\x01")
    atomic_write(tmp_path / "a" / "z.csv", lambda p: p.write_text("k,v\n1,2\n"))
    assert (tmp_path / "a" / "x.txt").read_text() == "text"
    assert (tmp_path / "a" / "y.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "z.csv").read_text() == "k,v\n1,2\n"
    atomic_write(tmp_path / "a" / "x.txt", "new")  # replaces
    assert (tmp_path / "a" / "x.txt").read_text() == "new"
    assert _names(tmp_path / "a") == ["x.txt", "y.bin", "z.csv"]


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        # pyarrow's form: no errno, the reason only in the text
        OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"),
    ],
)
def test_a_full_disk_is_one_error_naming_the_file_and_leaves_no_temp_file(tmp_path, error):
    target = tmp_path / "platform.json"
    target.write_text("old")

    def half_then_full(path: Path) -> None:
        path.write_text("half a docu")
        raise error

    with pytest.raises(NoSpaceError) as caught:
        atomic_write(target, half_then_full)
    assert str(caught.value).startswith(f"no space left on device while writing {target}")
    assert caught.value.path == target
    assert _names(tmp_path) == ["platform.json"] and target.read_text() == "old"


def test_other_errors_pass_through_and_leave_no_temp_file(tmp_path):
    def fails(path: Path) -> None:
        path.write_text("x")
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        atomic_write(tmp_path / "out.csv", fails)

    def refused(path: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "out.csv", refused)
    assert _names(tmp_path) == []


def test_atomic_path_builds_a_folder_and_can_refuse_to_replace(tmp_path):
    target = tmp_path / "models" / "run-1"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "meta.json").write_text("{}")
    assert _names(target) == ["meta.json"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "models" / "run-2") as tmp:
        tmp.mkdir()
        (tmp / "model.pt").write_text("half")
        raise RuntimeError("copy failed")
    assert _names(tmp_path / "models") == ["run-1"]  # the half folder is gone
    (tmp_path / "db").write_text("theirs")
    with pytest.raises(FileExistsError), atomic_path(tmp_path / "db", replace=False) as tmp:
        tmp.write_text("mine")
    assert (tmp_path / "db").read_text() == "theirs" and "mine" not in str(_names(tmp_path))


# --- SQLite -----------------------------------------------------------------------------------


def _db(path: Path) -> SqliteDatabase:
    return SqliteDatabase(path, SCHEMA, what="the test store", remedy="restore it")


def test_a_new_database_is_never_an_empty_file(tmp_path):
    db = _db(tmp_path / "s.db")
    assert (tmp_path / "s.db").stat().st_size > 0  # created with its schema, then linked in
    with db.write() as con:
        con.execute("INSERT INTO t VALUES ('a', '1')")
    with db.read() as con:
        assert con.execute("SELECT v FROM t").fetchall() == [("1",)]
    assert not [n for n in _names(tmp_path) if n.endswith(".tmp") or "journal" in n]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes"),
        (lambda p: p.write_bytes(b"not a database at all" * 300), "cannot be read"),
        (lambda p: p.write_bytes(p.read_bytes()[:100] + b"\xff" * 8000), "cannot be read"),
    ],
)
def test_a_damaged_database_is_an_error_naming_it_never_an_empty_store(tmp_path, damage, reason):
    path = tmp_path / "s.db"
    with _db(path).write() as con:
        con.execute("INSERT INTO t VALUES ('a', '1')")
    damage(path)
    damaged = path.read_bytes()
    with pytest.raises(CorruptStoreError) as caught:
        db = _db(path)
        with db.read() as con:
            con.execute("SELECT * FROM t").fetchall()
    message = str(caught.value)
    assert str(path) in message and "the test store" in message and reason in message
    assert message.endswith("restore it")
    assert path.read_bytes() == damaged  # never recreated or "repaired" behind the user's back


def test_programming_errors_are_not_disguised(tmp_path):
    db = _db(tmp_path / "s.db")
    with pytest.raises(sqlite3.OperationalError, match="no such table"), db.read() as con:
        con.execute("SELECT * FROM nope")
    with pytest.raises(sqlite3.IntegrityError), db.write() as con:
        con.execute("INSERT INTO t VALUES ('a', '1')")
        con.execute("INSERT INTO t VALUES ('a', '2')")
    with db.read() as con:  # rolled back as a whole
        assert con.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)


# --- a real full disk -------------------------------------------------------------------------

FULL_DISK = r"""
import errno, json, os, sys
from pathlib import Path

from typer.testing import CliRunner

from workloads.cli import app
from workloads.local import env as localenv
from workloads.registry.store import registry_from_descriptor
from workloads.features.store import feature_store_from_descriptor
from workloads.local.churn import generate_churn
from workloads.storage import NoSpaceError, atomic_write

disk, stacks = Path(sys.argv[1]), sys.argv[2]
state = disk / "state"
runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [*args, "--state-dir", str(state)], env={"COLUMNS": "400"})
    return {"code": result.exit_code, "out": result.output, "exc": repr(result.exception)}


def files():
    skip = ("-wal", "-shm", ".lock")
    return {
        str(p.relative_to(state)): p.read_bytes().hex()
        for p in sorted(state.rglob("*"))
        if p.is_file() and not p.name.endswith(skip)
    }


out = {}
port = localenv.free_port()
out["up"] = cli("up", "--stacks-dir", stacks, "--port", f"churn={port}")
paths = localenv.StackPaths.of("local", state)
descriptor = localenv.read_descriptor(paths)
registry = registry_from_descriptor(descriptor)
registry.register("churn", "file:///m/1", {"accuracy": 0.9})
data = generate_churn(200, seed=0)
store = feature_store_from_descriptor(descriptor)
before = files()

fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
for size in (1 << 16, 1 << 12, 1):
    try:
        while True:
            os.write(fd, b"\0" * size)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
os.close(fd)


def attempt(name, call):
    try:
        call()
        out[name] = "no error"
    except NoSpaceError as exc:
        out[name] = str(exc)
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"


changed = descriptor.model_copy(update={"team": "other"})
attempt("descriptor", lambda: changed.write(paths.descriptor))
attempt("register", lambda: registry.register("churn", "file:///m/2", {"accuracy": 0.9}))
attempt("csv", lambda: atomic_write(paths.root / "x.csv", lambda p: data.labels.to_csv(p)))
attempt("ingest", lambda: store.ingest("customer-profile", data.profile))
attempt("open store", lambda: feature_store_from_descriptor(descriptor))
out["approve"] = cli("approve", "churn", "1", "--stacks-dir", stacks)
out["status"] = cli("status")
out["up_full"] = cli("up", "--stacks-dir", stacks)
out["pipeline"] = cli("pipeline", "--rows", "200", "--stacks-dir", stacks)
out["unchanged"] = files() == before
out["temp_files"] = [str(p) for p in state.rglob("*") if ".tmp" in p.name]
(disk / "filler").unlink()
out["versions"] = [v.version for v in registry.list_versions("churn")]
registry.approve("churn", 1)
out["status_after"] = registry.get("churn", 1).status
out["down"] = cli("down", "--purge")
print(json.dumps(out))
"""


def _private_tmpfs_works() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount"]
    probe += ["sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || exit 1"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _private_tmpfs_works(), reason="no private tmpfs mount allowed here")
def test_a_real_full_disk_gives_one_line_and_changes_nothing(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    mount = 'mount -t tmpfs -o size=4m tmpfs "$1" && shift && exec "$@"'
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh"]
    cmd += [str(disk), sys.executable, str(script), str(disk), str(ROOT / "stacks")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["up"]["code"] == 0, out["up"]
    root = disk / "state" / "local"
    expect = {
        "descriptor": root / "platform.json",
        "register": root / "registry" / "registry.db",
        "csv": root / "x.csv",
        "ingest": root / "buckets" / "features" / "offline" / "customer-profile",
        "open store": root / "online-store.db",
    }
    for step, path in expect.items():
        assert out[step].startswith(f"no space left on device while writing {path}"), out[step]
    for command, name in [
        ("approve", "registry.db"),
        ("status", "registry.db"),
        ("up_full", ".db"),
        ("pipeline", "run.json"),
    ]:
        result = out[command]
        assert result["code"] == 1, result
        lines = result["out"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no space left on device while")
        assert name in lines[0] and "Traceback" not in result["out"]
    assert out["unchanged"] is True and out["temp_files"] == []
    assert out["versions"] == [1]
    assert out["status_after"] == "Approved"  # the store works again once there is room
    assert out["down"]["code"] == 0


def test_storage_errors_are_one_kind():
    assert issubclass(NoSpaceError, StorageError) and issubclass(CorruptStoreError, StorageError)
