"""`POST /invocations` off the ASGI path: the server's HTTP protocol hands a request whose
body it has read whole straight to the app (`InferenceApp.invoke_direct`), and the answer is
written straight to the connection.

Why: with a small model the request path is the cost, and ASGI's share of it is per request: a
task started (and woken once more when its batch is answered), the `receive`/`send` message
dicts, the response head assembled header by header. Here a request costs the HTTP parser's
callbacks, one call into the app, and one write of a head built from constant bytes; the
batch's answers all go out in the callback that answers the batch (`server.DirectAnswer`).

Everything else takes the ASGI path as before: other paths and methods, a request that waits
for `100 Continue`, and a body that outgrows the protocol's read buffer (64 KiB: the protocol
stops reading there, and the app's `receive` reads on), which is handed over to an ASGI task
with what was read so far. The answers are the same bytes either way (uvicorn's status lines,
the same headers in the same order; tests/test_serve_direct.py). Keep-alive, pipelining (a
request that arrives while one is answered waits in uvicorn's pipeline, and starts when the
answer is out), the drain (`Connection: close` and closing after the answer) and a client that
leaves before its answer (nothing is written) behave as on the ASGI path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from workloads.serving.lifecycle import LastCallProtocol

PATH = "/invocations"
_PATH = PATH.encode()
_HEADERS = b"content-type: application/json\r\ncontent-length: "
_CLOSE = b"\r\nconnection: close\r\n\r\n"


class _NoWaiter:
    """The message event of a direct request: no ASGI task waits on it."""

    __slots__ = ()

    def set(self) -> None:
        pass


class DirectCycle:
    """What the protocol keeps of a direct request, in the place of uvicorn's
    `RequestResponseCycle` (which also carries an ASGI task's state, and an `asyncio.Event`):
    the scope (the app reads the headers), the body read so far, and the connection's flags
    that uvicorn's protocol reads and sets."""

    __slots__ = (
        "scope",
        "body",
        "more_body",
        "keep_alive",
        "disconnected",
        "response_started",
        "response_complete",
    )
    waiting_for_100_continue = False
    message_event = _NoWaiter()

    def __init__(self, scope: dict, keep_alive: bool) -> None:
        self.scope = scope
        self.body = bytearray()
        self.more_body = True
        self.keep_alive = keep_alive
        self.disconnected = self.response_started = self.response_complete = False


class DirectProtocol(LastCallProtocol):
    """`LastCallProtocol` with `POST /invocations` taken off the ASGI path; `target` (set on
    a subclass, `for_app`) is the app that answers it."""

    target: Any = None

    @classmethod
    def for_app(cls, app: Any) -> type[DirectProtocol]:
        return type("DirectProtocolFor" + type(app).__name__, (cls,), {"target": app})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._raw = transport  # answers go out whole: no head to hold back
        self._reading: Any = None  # a direct request (a cycle of either kind), body unread
        self._reading_app: Any = None
        # A request line `POST /invocations` gets a `DirectCycle` (as long as nothing
        # rewrites the scope's path or turns requests away, which this server never asks).
        self._lean = not self.root_path and self.limit_concurrency is None
        # The keep-alive timeout: uvicorn arms a timer after every response and cancels it
        # when the next request comes (~2 us a request, as much as the app's own request
        # path). Here one check is armed per idle stretch, and it closes the connection
        # once it has been idle `timeout_keep_alive` seconds, as uvicorn's timer does.
        self._idle_since: float | None = None  # loop time it went idle; None: busy
        self._idle_check: asyncio.TimerHandle | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._idle_check is not None:
            self._idle_check.cancel()
            self._idle_check = None

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # a request is coming (or the drain's last call is armed)
        super()._unset_keepalive_if_required()

    def on_response_complete(self) -> None:
        """uvicorn's (the next pipelined request starts, else the connection is idle), with
        the keep-alive check armed once per idle stretch instead of a timer per response."""
        self.transport.flush()  # type: ignore[attr-defined]  # LastCallProtocol's held head
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if not self.flow.write_paused:  # a client that does not take its answers: see answer
            self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._idle_check is None:
            self._idle_check = self.loop.call_later(self.timeout_keep_alive, self._check_idle)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.cycle is None or self.cycle.response_complete:
            self.flow.resume_reading()

    def _check_idle(self) -> None:
        self._idle_check = None
        if self._idle_since is None or self.transport.is_closing():
            return  # busy: the response that ends it arms the next check
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._idle_check = self.loop.call_later(left, self._check_idle)
        else:
            self.timeout_keep_alive_handler()

    def on_headers_complete(self) -> None:
        parser = self.parser
        cycle = self.cycle
        if (
            self.url != _PATH  # (a query string too: the ASGI path)
            or self.expect_100_continue
            or parser.get_method() != b"POST"
            or not self._lean
            or (cycle is not None and not cycle.response_complete)  # pipelined: uvicorn queues it
            or parser.should_upgrade()
        ):
            super().on_headers_complete()
            return
        # uvicorn's scope entries for the request, then the cycle, without an ASGI task.
        version = parser.get_http_version()
        scope = self.scope
        scope["method"], scope["path"], scope["raw_path"] = "POST", PATH, _PATH
        scope["query_string"] = b""
        if version != "1.1":
            scope["http_version"] = version
        keep_alive = version != "1.0" and parser.should_keep_alive()
        self.cycle = self._reading = DirectCycle(scope, keep_alive)  # type: ignore[assignment]
        self._reading_app = self.app

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        scope = cycle.scope
        if scope["path"] != PATH or scope["method"] != "POST" or cycle.waiting_for_100_continue:
            super()._start_asgi_task(cycle, app)
        elif not cycle.more_body:  # a pipelined request, read whole while the last was answered
            self._invoke(cycle)
        else:
            self._reading, self._reading_app = cycle, app

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        cycle = self._reading
        if cycle is not None and cycle is self.cycle and len(cycle.body) > HIGH_WATER_LIMIT:
            # Reading has stopped (uvicorn's buffer limit): the app's `receive` reads on.
            self._reading = None
            if type(cycle) is DirectCycle:
                cycle = self._asgi_cycle(cycle)
            super()._start_asgi_task(cycle, self._reading_app)

    def _asgi_cycle(self, light: DirectCycle) -> RequestResponseCycle:
        """The `RequestResponseCycle` uvicorn would have made for a direct request, with its
        body so far: the request goes on as an ASGI task."""
        cycle = RequestResponseCycle(
            scope=light.scope,  # type: ignore[arg-type]
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=light.keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.body = light.body
        cycle.message_event.set()  # the body read so far is there for `receive`
        self.cycle = cycle
        return cycle

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self._reading
        if cycle is not None and cycle is self.cycle:
            self._reading = None
            self._invoke(cycle)

    def _invoke(self, cycle: Any) -> None:
        body, cycle.body = bytes(cycle.body), bytearray()
        self.target.invoke_direct(self, cycle, body)

    def answer(self, cycle: Any, status: int, body: bytes) -> None:
        """Write the response to `cycle` (the bytes uvicorn writes for the app's answer) and
        go on as uvicorn does once a response is complete."""
        if cycle.disconnected or self._raw.is_closing():
            return  # the client left: nothing to write, nothing to start
        keep_alive = cycle.keep_alive and not self.target.draining
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:  # Server, Date when configured
            parts += (name, b": ", value, b"\r\n")
        parts += (_HEADERS, b"%d" % len(body), b"\r\n\r\n" if keep_alive else _CLOSE, body)
        self._raw.write(b"".join(parts))
        if self.flow.write_paused:
            # The client does not read its answers (the transport's buffer is past its limit):
            # read no more requests from it until it does (`resume_writing`), where the ASGI
            # path would wait before sending.
            self.flow.pause_reading()
        cycle.response_started = cycle.response_complete = True
        if not keep_alive:
            cycle.keep_alive = False
            self._raw.close()
        self.on_response_complete()
