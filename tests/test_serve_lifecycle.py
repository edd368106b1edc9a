"""How the server's processes stop: a SIGKILLed supervisor takes its workers along, and
SIGTERM drains without losing a request a client already sent. Real servers on loopback."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from tests.serve_support import Server


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_workers_die_with_a_sigkilled_supervisor_and_a_restart_gets_the_port(
    model_dir: Path, records
) -> None:
    srv = Server(model_dir, "--workers", "2").wait_ready()
    try:
        workers = [pid for pid in children(srv.proc.pid) if alive(pid)]
        assert len(workers) >= 2  # the workers (and multiprocessing's resource tracker)
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if alive(pid)], "workers outlived their supervisor"
        assert port_is_free(srv.port)
    finally:
        srv.stop()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    again = Server(model_dir, port=srv.port).wait_ready()  # binds, or exits "cannot listen"
    try:
        answer = again.client.post("/invocations", json={"instances": records[:1]})
        assert answer.status_code == 200
    finally:
        again.stop()
