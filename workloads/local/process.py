"""Process helpers of the local environment: a lock that names its holder, and a child
process that dies with its parent.

`exclusive` is an `flock` on a file: the kernel releases it when its holder exits, however
it exits (a SIGKILLed holder leaves no stale lock). The holder writes its pid and command
into the file, so a process that finds the lock taken can say who holds it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class LockHeldError(RuntimeError):
    """The lock is taken and the caller chose not to wait; the message names the holder."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


def holder_line() -> str:
    # `mlinfra pipeline ...` as typed; `python -m workloads.cli ...` rather than `cli.py ...`
    argv = sys.orig_argv if sys.argv[0].endswith(".py") else sys.argv
    command = " ".join(shlex.quote(a) for a in [Path(argv[0]).name, *argv[1:]])
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"pid {os.getpid()} ({command}) since {since}"


@contextlib.contextmanager
def exclusive(path: Path, *, wait: bool, what: str, hint: str = "") -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block.

    Taken: with `wait`, block until it is free; else raise `LockHeldError` naming `what`,
    its holder, and `hint`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                raise LockHeldError(f"{what} is held by {holder}{hint}", holder) from None
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):  # the note is best effort (a full disk)
            os.pwrite(fd, (holder_line() + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get `sig` when its parent dies (even by SIGKILL).

    Linux `prctl(PR_SET_PDEATHSIG)`; None elsewhere. libc is resolved here, in the parent,
    so the child only makes the call; a parent that died before the call is caught by
    comparing the child's parent pid with ours.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent is already gone
            os.kill(os.getpid(), sig)

    return preexec
