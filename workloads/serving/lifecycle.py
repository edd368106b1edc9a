"""How server processes start and stop: workers die with their supervisor; SIGTERM drains.

Worker processes ask the kernel for SIGKILL when their supervisor dies (`prctl
PR_SET_PDEATHSIG` on Linux, a watch on the parent elsewhere): a supervisor that is
SIGKILLed (OOM killer, a platform's hard stop) takes them along and the port is free for the
restart at once. A clean stop (SIGTERM to the supervisor) drains, as below.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Make this process die (SIGKILL) when process `parent`, which started it, exits."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died before the request took effect
                os.kill(os.getpid(), signal.SIGKILL)
            return
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _watch_parent(parent: int, interval_s: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    os.kill(os.getpid(), signal.SIGKILL)
