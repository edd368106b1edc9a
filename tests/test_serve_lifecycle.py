"""How the server's processes stop: a SIGKILLed supervisor takes its workers along, and
SIGTERM drains without losing a request a client already sent. Real servers on loopback."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

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


class Client(threading.Thread):
    """Sends requests back to back on a keep-alive connection until the server refuses new
    connections; counts answers, and requests that were sent and got none (lost)."""

    def __init__(self, url: str, records: list[dict], stop_at: float) -> None:
        super().__init__(daemon=True)
        self.url, self.records, self.stop_at = url, records, stop_at
        self.statuses: list[int] = []
        self.closes = 0  # answers with `Connection: close`
        self.lost: list[str] = []
        self.sigterm_at = float("inf")
        self.after_sigterm = 0
        self.last_answer_at = 0.0

    def run(self) -> None:
        timeout = httpx.Timeout(30, connect=3)
        with httpx.Client(base_url=self.url, timeout=timeout) as client:
            while time.monotonic() < self.stop_at:
                try:
                    answer = client.post("/invocations", json={"instances": self.records})
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    return  # refused or not accepted: nothing was sent, the server is gone
                except httpx.TransportError as exc:
                    self.lost.append(repr(exc))  # sent, and no answer
                    continue
                self.statuses.append(answer.status_code)
                self.closes += answer.headers.get("connection") == "close"
                self.last_answer_at = time.monotonic()
                self.after_sigterm += self.last_answer_at > self.sigterm_at


def test_sigterm_under_load_loses_no_request(model_dir: Path, records) -> None:
    """The production layout (a supervisor and worker processes); 8 clients on keep-alive
    connections, SIGTERM mid-traffic, a 1 s drain window. The one step that must land inside
    the window, a /ping on a new connection, is sent from the signal on rather than after a
    fixed sleep: at a load average of 20 on 2 cores a thread can wait a large part of a second
    for a core."""
    srv = Server(model_dir, "--workers", "2", "--drain-seconds", "1").wait_workers(2)
    clients = [Client(srv.url, records[:2], time.monotonic() + 60) for _ in range(8)]
    try:
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while min(len(c.statuses) for c in clients) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)  # every client is on a warm keep-alive connection
        # /ping tells load balancers to stop routing here, on a new connection (as a health
        # check makes) within the window. The prober is made before the signal: making an
        # httpx client loads the CA bundle, and under load that took most of the window.
        prober = httpx.Client(base_url=srv.url, timeout=5, headers={"connection": "close"})
        sigterm_at = time.monotonic()
        for client in clients:
            client.sigterm_at = sigterm_at
        srv.proc.send_signal(signal.SIGTERM)
        with prober:  # from the signal on, until the worker that answers has it
            while (ping := prober.get("/ping")).status_code == 200:
                assert time.monotonic() - sigterm_at < 30, "the workers never drained"
        assert ping.status_code == 503 and "draining" in ping.json()["error"]
        assert ping.headers["connection"] == "close"
        for client in clients:
            client.join(timeout=60)
        assert srv.proc.wait(timeout=40) == 0
    finally:
        srv.stop()
    assert not any(c.is_alive() for c in clients), "a client kept going: the server never left"
    lost = [exc for c in clients for exc in c.lost]
    assert lost == [], f"{len(lost)} requests sent and never answered: {lost[:3]}"
    statuses = [s for c in clients for s in c.statuses]
    assert set(statuses) == {200}
    # The drain kept answering new requests through its window (not only those in flight at
    # the signal), and told each client to move on.
    assert max(c.last_answer_at for c in clients) - sigterm_at > 0.8
    assert sum(c.after_sigterm for c in clients) > len(clients)
    assert all(c.closes >= 1 for c in clients)


class _Transport:
    """What the protocol needs of an asyncio transport; records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _exchange(requests: list[bytes]) -> list[bytes]:
    """Feed raw requests to the server's HTTP protocol on one connection; the writes."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from workloads.serving.lifecycle import LastCallProtocol

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def run() -> list[bytes]:
        config = uvicorn.Config(app, lifespan="off", date_header=False, server_header=False)
        config.load()
        protocol = LastCallProtocol(config=config, server_state=ServerState(), app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        for request in requests:
            protocol.data_received(request)
            for _ in range(20):  # the app's task runs in later turns of the loop
                await asyncio.sleep(0)
        protocol.connection_lost(None)
        return transport.writes

    # A loop of its own, never the thread's current one: asyncio.run would leave none behind,
    # and other tests in this process (Pulumi's mocks) ask for the current loop.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def test_a_response_head_and_body_go_out_in_one_write() -> None:
    post = b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello"
    writes = _exchange([post, post])
    assert len(writes) == 2  # one per response, not head and body apart
    for write in writes:
        assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\nhello")
    # HEAD: no body is written; the head still goes out when the response completes.
    head = _exchange([b"HEAD /x HTTP/1.1\r\nhost: a\r\n\r\n"])
    assert len(head) == 1 and head[0].startswith(b"HTTP/1.1 200 OK\r\n")
    # `Expect: 100-continue`: the interim answer goes out at once, before the body is sent.
    expect = b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"
    writes = _exchange([expect, b"hi"])
    assert writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(writes) == 2 and writes[1].endswith(b"\r\n\r\nhi")
    # Connection: close: the held head goes out with the body before the transport closes.
    close = b"POST /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 1\r\n\r\nz"
    writes = _exchange([close])
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\nz")


def test_the_last_call_spares_a_connection_whose_request_is_unread() -> None:
    """The keep-alive timeout / the drain's last call closes an idle connection, but not one
    whose next request already sits unread in the kernel (a worker starved of CPU past the
    deadline runs its due timers before it reads): it checks again later instead."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from workloads.serving.lifecycle import LAST_CALL_S, LastCallProtocol, unread_bytes

    server_end, client_end = socket.socketpair()

    class SocketTransport(_Transport):
        def get_extra_info(self, name: str, default=None):
            return server_end if name == "socket" else super().get_extra_info(name, default)

    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(lambda *a: None, lifespan="off")
        config.load()
        protocol = LastCallProtocol(config=config, server_state=ServerState(), app_state={})
        protocol.loop = loop
        transport = SocketTransport()
        protocol.connection_made(transport)

        client_end.sendall(b"POST /invocations HTTP/1.1\r\n")  # sent in time, not read yet
        assert unread_bytes(protocol.transport) == 28
        protocol.timeout_keep_alive_handler()
        assert not transport.closed
        again = protocol.timeout_keep_alive_task
        assert again is not None and not again.cancelled()
        assert again.when() - loop.time() == pytest.approx(LAST_CALL_S, abs=0.1)

        server_end.recv(1024)  # read (and, say, answered): the connection is idle again
        protocol.timeout_keep_alive_handler()
        assert transport.closed
        protocol.connection_lost(None)
    finally:
        loop.close()
        server_end.close()
        client_end.close()
