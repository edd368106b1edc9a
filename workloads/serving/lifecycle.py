"""How server processes start and stop: workers die with their supervisor; SIGTERM drains.

Worker processes ask the kernel for SIGKILL when their supervisor dies (`prctl
PR_SET_PDEATHSIG` on Linux, a watch on the parent elsewhere): a supervisor that is
SIGKILLed (OOM killer, a platform's hard stop) takes them along and the port is free for the
restart at once. A clean stop (SIGTERM to the supervisor, passed on to each worker) drains:

1. For the drain window (`drain_s`) the server keeps accepting and answering; every answer
   says `Connection: close`, so keep-alive clients finish their request and reconnect (to
   another replica, once the platform has stopped routing here), and `/ping` says 503.
2. Then it stops taking new connections without resetting the ones the kernel has already
   accepted for it: new SYNs are dropped by a socket filter (the client retries its SYN and
   then finds the port closed: "connection refused", nothing was sent), and the server keeps
   accepting until the accept queue is empty. Only then is the listening socket closed.
3. Requests in flight finish (at most `DRAIN_TIMEOUT_S`); an idle keep-alive connection gets
   a last call (`LAST_CALL_S`): a request already on its way is answered, then it closes.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import os
import signal
import socket
import struct
import sys
import termios
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("mlinfra.serve")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>
LAST_CALL_S = 1.0
# Classic BPF over the TCP header (a socket filter sees the segment from there): drop a
# segment whose flags are SYN without ACK, a new connection; let everything else through.
_DROP_NEW_CONNECTIONS = (
    (0x30, 0, 0, 13),  # ldb [13]        the flags byte
    (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN, drop, pass
    (0x06, 0, 0, 0),  # drop: ret #0
    (0x06, 0, 0, 0xFFFFFFFF),  # pass: ret #-1
)


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


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above; `app.draining` is set when the window opens."""

    def __init__(self, config: uvicorn.Config, app: Any, drain_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_s = drain_s
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._drain_until is None and not self.should_exit:
            self._captured_signals.append(sig)  # uvicorn raises it again once it stopped
            self._drain_until = time.monotonic() + self.drain_s
            self.app.draining = True
            log.info("draining for %.1f s: answering with Connection: close", self.drain_s)
            return
        super().handle_exit(sig, frame)  # a second signal ends the window (SIGINT: forces)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await stop_accepting(sockets or [])
        await super().shutdown(sockets)


class CoalescingTransport:
    """The transport of one connection, which sends a response's head and the first part of
    its body in one write: uvicorn writes them separately, two `send` syscalls (and two TCP
    segments) per answer where one does. The head is held until the body comes, or until the
    response completes without one (HEAD, 204), or the connection closes; every other write
    (a `100 Continue`, uvicorn's own error answers, later parts of a streamed body) goes out
    as it comes. Everything else is the real transport's."""

    __slots__ = ("_transport", "_protocol", "_held", "_cycle", "is_closing")

    def __init__(self, transport: asyncio.Transport, protocol: HttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._held: bytes | None = None
        self._cycle: Any = None  # the request/response cycle whose head was held
        self.is_closing = transport.is_closing  # asked after every response: no __getattr__

    def write(self, data: bytes) -> None:
        if self._held is not None:  # the body (or its first part) after the held head
            data, self._held = self._held + data, None
        else:
            cycle = self._protocol.cycle
            if cycle is not None and cycle.response_started and cycle is not self._cycle:
                self._cycle = cycle  # the head of this cycle's response: wait for the body
                self._held = data
                return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():  # a lost connection takes nothing more
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Arrivals:
    """Requests whose ASGI task is created but has not started yet (kept by the protocol and
    the app on the event loop thread). Requests read from the sockets in one turn of the loop
    start in the next one, one after the other: when a starting request sees none left, it
    is the last of its turn, and the batcher can run the turn's group at once instead of in
    one more turn of the loop."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = 0


ARRIVALS = Arrivals()


class LastCallProtocol(HttpToolsProtocol):
    """httptools, with a response's head and body sent in one write (`CoalescingTransport`),
    the count of requests about to start (`ARRIVALS`), and a last call at shutdown: an idle
    keep-alive connection may already carry the client's next request, so it is closed after
    `LAST_CALL_S` of silence, not at once; a request that comes is answered (with
    `Connection: close`, the app is draining)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]  # a response without a body
        super().on_response_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        ARRIVALS.waiting += 1  # the app counts it down when the task starts
        super()._start_asgi_task(cycle, app)

    def timeout_keep_alive_handler(self) -> None:
        """The keep-alive timeout and the drain's last call close an idle connection, but
        not one whose next request has already reached the socket: a worker starved of CPU
        past the deadline runs its due timers before it reads, and closing then would drop
        a request the client sent in time. That request is read and answered next (the
        check comes again `LAST_CALL_S` later if it stays unfinished)."""
        if not self.transport.is_closing() and unread_bytes(self.transport) > 0:
            self.timeout_keep_alive_task = self.loop.call_later(
                LAST_CALL_S, self.timeout_keep_alive_handler
            )
            return
        super().timeout_keep_alive_handler()

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                LAST_CALL_S, self.timeout_keep_alive_handler
            )
        else:
            self.cycle.keep_alive = False


def unread_bytes(transport: Any) -> int:
    """Bytes the kernel holds for a connection that the server has not read yet (FIONREAD);
    0 where that cannot be asked."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        count = bytearray(4)
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    except (OSError, ValueError):  # closed meanwhile, or not a socket the kernel can count
        return 0
    return int.from_bytes(count, sys.byteorder)


async def stop_accepting(sockets: list[socket.socket], limit_s: float = 2.0) -> None:
    """Refuse new connections, then return once the connections the kernel has already
    accepted have been taken by the server (the caller then closes the sockets)."""
    if not sys.platform.startswith("linux") or not sockets:
        return  # elsewhere the sockets close as they are
    for sock in sockets:
        _drop_new_connections(sock)
    deadline = time.monotonic() + limit_s
    empty_twice = 0
    while empty_twice < 2 and time.monotonic() < deadline:
        # A handshake under way when the filter went on completes within a round trip.
        empty_twice = empty_twice + 1 if not any(map(_accept_queue, sockets)) else 0
        await asyncio.sleep(0.02)


def _drop_new_connections(sock: socket.socket) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in _DROP_NEW_CONNECTIONS)
    program = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(_DROP_NEW_CONNECTIONS), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


def _accept_queue(sock: socket.socket) -> int:
    """Connections waiting in a listening socket's accept queue (`tcpi_unacked` of a
    listener, Linux)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 24)[0]
