"""Writing files safely: one atomic write, one SQLite database wrapper, clear storage errors.

- `atomic_path` / `atomic_write`: write through a temporary name in the same folder, fsync,
  rename. A reader sees the old file or the complete new one; on any error the temporary
  file is removed; a full disk (ENOSPC, EDQUOT) becomes one `NoSpaceError` naming the file.
- `SqliteDatabase`: a database file created atomically with its schema (so an existing
  file is never empty), opened only if it is a database, its errors turned into
  `CorruptStoreError` / `NoSpaceError` / `StorageError` naming the file and what to do.
- `write_transaction`: one write transaction (BEGIN IMMEDIATE) on a fresh connection.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_TEXT = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


class StorageError(RuntimeError):
    """A file or store that cannot be read or written; the message names it and what to do."""


class NoSpaceError(StorageError):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(
            f"no space left on device while writing {path} (left as it was): free some space "
            "and run the command again"
        )


class CorruptStoreError(StorageError):
    """A store that exists but cannot be read: never treated as an empty one."""


def is_no_space(exc: BaseException) -> bool:
    """A full disk or quota, however the library reports it (pyarrow drops the errno)."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    return isinstance(exc, OSError) and any(text in str(exc) for text in _NO_SPACE_TEXT)


@contextmanager
def no_space_named(path: str | Path) -> Iterator[None]:
    """Turn a full disk inside the block into `NoSpaceError(path)`."""
    try:
        yield
    except OSError as exc:
        if is_no_space(exc):
            raise NoSpaceError(path) from exc
        raise


def file_error(exc: OSError, unnamed: str = "a file") -> StorageError | None:
    """An OSError as one line for the user: a full disk (`NoSpaceError`), or a file that
    cannot be used (`PATH: Permission denied`, `Read-only file system`, `Is a directory`);
    None for an error that names no file (a socket, a programming error)."""
    if is_no_space(exc):
        return NoSpaceError(exc.filename or unnamed)
    if exc.filename is None:
        return None
    return StorageError(f"{exc.filename}: {exc.strerror or exc}")


def temp_name(path: Path) -> Path:
    """A hidden sibling name no other writer uses: `.NAME.PID.RANDOM.tmp`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync(child)
    _fsync(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _link_new(tmp: Path, path: Path) -> None:
    """Put `tmp` at `path` unless something is there (`FileExistsError`)."""
    try:
        os.link(tmp, path)  # atomic, and fails if anything is there
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: check, then rename
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.rename(tmp, path)


@contextmanager
def atomic_path(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """A temporary path beside `path`: the caller writes a file (or builds a folder) there.

    When the block ends without error, the result is fsynced and renamed onto `path`, and
    the rename is made durable. With `replace=False` an existing `path` is kept and
    `FileExistsError` raised (for files another process may create at the same time). On
    any error the temporary path is removed, and a full disk raises `NoSpaceError(path)`.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        with no_space_named(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            _fsync_tree(tmp)
            if replace:
                os.replace(tmp, path)
            elif tmp.is_dir():
                os.rename(tmp, path)  # fails if a non-empty folder is there
            else:
                _link_new(tmp, path)
            _fsync(path.parent)
    except OSError as exc:  # name the file being written, not its temporary name
        if exc.filename is not None and str(exc.filename).startswith(str(tmp)):
            exc.filename = str(path)
        raise
    finally:
        _remove(tmp)


def atomic_write(path: str | Path, data: str | bytes | Callable[[Path], object]) -> None:
    """Write `data` (text, bytes, or a function that writes a given path) to `path` atomically."""
    with atomic_path(path) as tmp:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as handle:
                handle.write(data.encode() if isinstance(data, str) else data)


# --- SQLite ---------------------------------------------------------------------------------


@contextmanager
def write_transaction(connect: Callable[[], sqlite3.Connection]) -> Iterator[sqlite3.Connection]:
    """One write transaction on a fresh connection (opened with `isolation_level=None`).

    BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue instead of
    both reading the same state; any error rolls back, and the connection is always closed.
    """
    con = connect()
    try:
        con.execute("BEGIN IMMEDIATE")
        yield con
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()


# Primary result codes (https://www.sqlite.org/rescode.html); Python 3.11 exposes the
# extended code as `sqlite_errorcode`, whose low byte is the primary one.
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26
_LOW_SPACE_BYTES = 1 << 20  # "disk I/O error" with less than this free is a full disk


def _free_bytes(folder: Path) -> int | None:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


class SqliteDatabase:
    """One SQLite database file of a store (`what` names the store in messages).

    A missing file is created with its schema under a temporary name and linked into
    place, so a file that exists is never legitimately empty: a 0-byte or malformed file
    is a `CorruptStoreError` naming the file and `remedy`, never a fresh empty store.
    """

    def __init__(
        self,
        path: str | Path,
        schema: str,
        *,
        what: str,
        remedy: str,
        pragmas: tuple[str, ...] = ("journal_mode=WAL",),
        timeout: float = 60.0,
    ):
        self.path = Path(path)
        self.what, self.remedy = what, remedy
        self.pragmas, self.timeout = pragmas, timeout
        with self.errors():
            if not self.path.exists():
                self._create(schema)
            con = self.connect()
            try:
                con.executescript(schema)  # adds what a newer version declares
            finally:
                con.close()

    def _create(self, schema: str) -> None:
        try:
            with atomic_path(self.path, replace=False) as tmp:
                con = sqlite3.connect(tmp, isolation_level=None)
                try:
                    con.executescript(schema)
                finally:
                    con.close()
                    tmp.with_name(f"{tmp.name}-journal").unlink(missing_ok=True)
        except FileExistsError:
            pass  # another process created it meanwhile: use theirs

    def connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode (`isolation_level=None`), pragmas applied."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise CorruptStoreError(
                f"{self.path} ({self.what}) has disappeared; {self.remedy}"
            ) from None
        if size == 0:
            raise CorruptStoreError(
                f"{self.path} ({self.what}) is empty (0 bytes, a database never is): it was "
                f"truncated; {self.remedy}"
            )
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            for pragma in self.pragmas:
                con.execute(f"PRAGMA {pragma}")
        except BaseException:
            con.close()
            raise
        return con

    def error(self, exc: sqlite3.Error) -> StorageError | None:
        """What a SQLite error on this file means, or None for a programming error."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF
        if primary is None and isinstance(exc, sqlite3.OperationalError):
            primary = _SQLITE_IOERR if "disk I/O error" in str(exc) else None
        if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return CorruptStoreError(
                f"{self.path} ({self.what}) cannot be read: {exc}; {self.remedy}"
            )
        free = _free_bytes(self.path.parent)
        if primary == _SQLITE_FULL or (
            primary == _SQLITE_IOERR and free is not None and free < _LOW_SPACE_BYTES
        ):
            return NoSpaceError(self.path)
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StorageError(
                f"{self.path} ({self.what}) stayed locked by another process for "
                f"{self.timeout:.0f} s ({exc}); try again when it has finished"
            )
        if primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN, _SQLITE_READONLY, _SQLITE_PERM):
            return StorageError(
                f"{self.path} ({self.what}): {exc}; check that the file and its folder are "
                "readable and writable and the disk is healthy"
            )
        return None

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn SQLite and disk errors inside the block into storage errors naming the file."""
        try:
            with no_space_named(self.path):
                yield
        except sqlite3.Error as exc:
            translated = self.error(exc)
            if translated is None:
                raise
            raise translated from exc

    @contextmanager
    def read(
        self, connect: Callable[[], sqlite3.Connection] | None = None
    ) -> Iterator[sqlite3.Connection]:
        """A connection for reading, closed at the end."""
        with self.errors():
            con = (connect or self.connect)()
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def write(
        self, connect: Callable[[], sqlite3.Connection] | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction (see `write_transaction`)."""
        with self.errors(), write_transaction(connect or self.connect) as con:
            yield con
