"""`python -m workloads.tuning.trial_process TUNER_PID`: a tuning trial's `workloads.train`,
bound to the life of the tuner that started it.

The local tuner starts each trial in its own session (its own process group), so a Ctrl-C
in the terminal reaches the tuner alone, which then stops its trials with SIGTERM. That
cannot help when the tuner dies without running any code (SIGKILL, the OOM killer, a
crash): the trial would train on, unowned. So before the harness starts, the trial asks the
kernel for SIGTERM when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`); elsewhere a
thread watches the parent pid. SIGTERM is what the harness already obeys: it checkpoints and
exits 143, and the next tuner resumes the trial under the same number.

`PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends; the tuner's worker
thread waits for its trial's exit before it ends, so that is the tuner's death too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_S = 0.5  # how often the fallback watcher looks at the parent pid


def _pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, sig: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os.kill(os.getpid(), sig)


def bind_to_parent(parent: int, sig: int = signal.SIGTERM) -> str:
    """Have `sig` sent to this process when `parent` (the tuner) dies; how it is done."""
    how = "pdeathsig" if _pdeathsig(sig) else "watcher"
    if how == "watcher":
        threading.Thread(target=_watch, args=(parent, sig), daemon=True).start()
    if os.getppid() != parent:  # the tuner died before the request took effect
        os.kill(os.getpid(), sig)
    return how


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m workloads.tuning.trial_process TUNER_PID", file=sys.stderr)
        return 2
    bind_to_parent(int(argv[0]))
    from workloads.training.harness import main as train

    return train([])  # the contract comes from the environment


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
