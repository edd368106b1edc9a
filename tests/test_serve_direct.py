"""`POST /invocations` off the ASGI path (workloads/serving/direct.py): the server's HTTP
protocol fed raw requests on fake connections, with a real app and batcher (no sockets). The
direct path must answer the same bytes as the ASGI path, on the event loop (inline) as on the
batcher thread."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from tests.test_serve_batcher import FakePredictor, loop_batcher
from tests.test_serve_lifecycle import _Transport
from workloads.serving.direct import DirectProtocol
from workloads.serving.lifecycle import LastCallProtocol
from workloads.serving.server import InferenceApp, ServeSettings
from workloads.training.tasks.base import InputError


def post(body: bytes, *headers: bytes, path: bytes = b"/invocations") -> bytes:
    head = [b"POST " + path + b" HTTP/1.1", b"host: a", b"content-length: %d" % len(body)]
    if not any(h.lower().startswith(b"content-type:") for h in headers):
        head.append(b"content-type: application/json")
    return b"\r\n".join([*head, *headers, b"", body])


def instances(*xs: Any) -> bytes:
    return orjson.dumps({"instances": [{"x": x} for x in xs]})


class Recorder(FakePredictor):
    """Counts forward passes and the requests' rows each one saw."""

    def __init__(self) -> None:
        self.passes: list[int] = []

    def prepare_records(self, records: list[dict]):
        if any(type(r.get("x")) is not int for r in records):
            raise InputError("x must be an integer")
        return super().prepare_records(records)

    def predict_matrix(self, x):
        self.passes.append(len(x))
        return super().predict_matrix(x)


def exchange(
    conversations: list[list[bytes]],
    *,
    direct: bool,
    inline: bool = True,
    draining: bool = False,
    lose: tuple[int, ...] = (),
    predictor: Any = None,
) -> tuple[list[list[bytes]], list[_Transport]]:
    """Feed raw requests to the server's protocol, one connection per conversation: the
    n-th chunk of every connection is read in the same turn of the loop, then the answers
    are awaited. Connections in `lose` are lost right after their first chunk is read.
    Returns each connection's writes (and the transports)."""
    predictor = predictor or FakePredictor()

    async def run() -> tuple[list[list[bytes]], list[_Transport]]:
        app = InferenceApp(ServeSettings(model_dir=Path("."), port=8080))
        app.predictor = predictor
        batcher = loop_batcher(predictor, inline_budget_s=1.0 if inline else 0.0)
        app.batcher = batcher
        app.draining = draining
        config = uvicorn.Config(app, lifespan="off", date_header=False, server_header=False)
        config.load()
        cls = DirectProtocol.for_app(app) if direct else LastCallProtocol
        state = ServerState()
        protocols, transports = [], []
        for _ in conversations:
            protocol = cls(config=config, server_state=state, app_state={})
            transport = _Transport()
            protocol.connection_made(transport)
            protocols.append(protocol)
            transports.append(transport)
        try:
            for step in range(max(map(len, conversations))):
                for i, (protocol, chunks) in enumerate(zip(protocols, conversations, strict=True)):
                    if step < len(chunks):
                        protocol.data_received(chunks[step])
                        if i in lose and step == 0:
                            protocol.connection_lost(None)
                deadline = time.monotonic() + 10
                while batcher.open_requests or state.tasks or batcher._pending:
                    assert time.monotonic() < deadline, "requests not answered"
                    await asyncio.sleep(0.002)
                for _ in range(5):
                    await asyncio.sleep(0)
        finally:
            batcher.stop()
        return [t.writes for t in transports], transports

    loop = asyncio.new_event_loop()  # never the thread's current loop (Pulumi's mocks)
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


CASES = [
    post(instances(1)),
    post(instances(1, 2, 3)),
    post(b"1\n2\n", b"content-type: text/csv"),
    post(instances(666)),  # breaks the forward pass: 400 naming the instance
    post(instances(-1)),  # a non-finite prediction: 500
    post(b'{"instances": ['),
    post(b'{"instances": []}'),
    post(b"<x/>", b"content-type: application/xml"),
    post(instances(1), b"accept: text/html"),
    post(b"", b"content-type: application/json"),
    post(instances(1), b"connection: close"),
    post(instances(1), b"x-amzn-sagemaker-inference-id: abc"),
    # over the protocol's 64 KiB read buffer: handed over to the ASGI path whole
    post(orjson.dumps({"instances": [{"x": 1, "pad": "y" * 100}] * 1000})),
    b"GET /invocations HTTP/1.1\r\nhost: a\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nhost: a\r\n\r\n",
    post(instances(1), path=b"/invocations?a=1"),  # a query string: the ASGI path
    post(instances(1)).replace(b"HTTP/1.1", b"HTTP/1.0", 1),  # no keep-alive
]


@pytest.mark.parametrize("draining", [False, True], ids=["serving", "draining"])
def test_the_direct_path_answers_the_asgi_paths_bytes(draining: bool) -> None:
    conversations = [[case] for case in CASES]
    want, _ = exchange(conversations, direct=False, draining=draining)
    inline, _ = exchange(conversations, direct=True, draining=draining)
    thread, _ = exchange(conversations, direct=True, inline=False, draining=draining)
    assert inline == want
    assert thread == want
    statuses = [int(w.split(b" ")[1]) for [w] in want]  # one write per answer
    ping = 503 if draining else 200
    assert statuses == [
        *(200, 200, 200, 400, 500, 400, 400, 415, 406, 400, 200, 200, 200, 405, ping, 200, 200)
    ]
    closing = [b"connection: close" in answer for [answer] in want]
    closes = [True] * len(CASES) if draining else [i in (10, 16) for i in range(len(CASES))]
    assert closing == closes


def test_a_bad_request_in_a_group_gets_its_400_and_the_others_their_answers() -> None:
    predictor = Recorder()
    bodies = [instances(1), instances(2), instances("two"), instances(3, 4)]
    for inline in (True, False):
        predictor.passes.clear()
        writes, _ = exchange(
            [[post(b)] for b in bodies], direct=True, inline=inline, predictor=predictor
        )
        assert [len(w) for w in writes] == [1, 1, 1, 1]
        answers = [orjson.loads(w[0].split(b"\r\n\r\n", 1)[1]) for w in writes]
        assert [w[0][9:12] for w in writes] == [b"200", b"200", b"400", b"200"]
        assert [len(a.get("predictions", [])) for a in answers] == [1, 1, 0, 2]
        assert answers[2] == {"error": "x must be an integer"}
        # Inline, the good requests of the group shared one forward pass (the thread takes
        # what is queued when it looks).
        assert predictor.passes == [4] if inline else sum(predictor.passes) == 4


def test_pipelined_requests_are_answered_in_order() -> None:
    three = post(instances(1)) + post(instances(2, 3)) + post(instances(4), path=b"/nope")
    [writes], _ = exchange([[three]], direct=True)
    assert len(writes) == 3
    bodies = [orjson.loads(w.split(b"\r\n\r\n", 1)[1]) for w in writes]
    assert [len(b.get("predictions", [])) for b in bodies] == [1, 2, 0]
    assert writes[2].startswith(b"HTTP/1.1 404 ")


def test_a_body_in_pieces_and_a_client_that_leaves() -> None:
    request = post(instances(5))
    cut = len(request) - 4
    writes, transports = exchange(
        [[request[:cut], request[cut:]], [post(instances(6))], [post(instances(7))]],
        direct=True,
        lose=(1,),
    )
    assert len(writes[0]) == 1 and writes[0][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[1] == []  # lost before its answer: nothing written, nothing stuck
    assert len(writes[2]) == 1 and not transports[2].closed


def test_connection_close_closes_after_the_answer() -> None:
    [writes], [transport] = exchange([[post(instances(1), b"connection: close")]], direct=True)
    assert len(writes) == 1 and b"\r\nconnection: close\r\n\r\n" in writes[0]
    assert transport.closed


def test_an_idle_connection_closes_after_the_keep_alive_timeout_a_busy_one_stays() -> None:
    class Answering:  # the app's side of the direct path, answered at once
        draining = False

        def invoke_direct(self, protocol: DirectProtocol, cycle: Any, body: bytes) -> None:
            protocol.answer(cycle, 200, b"{}")

    async def run() -> list[tuple[float, bool, int]]:
        async def asgi(scope, receive, send) -> None: ...

        config = uvicorn.Config(asgi, lifespan="off", timeout_keep_alive=0.6)
        config.load()
        protocol = DirectProtocol.for_app(Answering())(
            config=config, server_state=ServerState(), app_state={}
        )
        transport = _Transport()
        protocol.connection_made(transport)
        seen = []
        start = time.monotonic()
        for pause in (0.2, 0.2, 0.2, 1.0):  # requests 0.2 s apart: never idle 0.6 s
            protocol.data_received(post(instances(1)))
            await asyncio.sleep(pause)
            at = round(time.monotonic() - start, 1)
            seen.append((at, transport.closed, len(transport.writes)))
        protocol.connection_lost(None)
        return seen

    loop = asyncio.new_event_loop()
    try:
        seen = loop.run_until_complete(run())
    finally:
        loop.close()
    assert [closed for _, closed, _ in seen] == [False, False, False, True], seen
    assert [writes for _, _, writes in seen] == [1, 2, 3, 4]


def test_a_client_that_does_not_read_its_answers_is_not_read_either() -> None:
    class Answering:
        draining = False

        def invoke_direct(self, protocol: DirectProtocol, cycle: Any, body: bytes) -> None:
            protocol.answer(cycle, 200, b"{}")

    async def asgi(scope, receive, send) -> None: ...

    async def run() -> list[bool]:
        config = uvicorn.Config(asgi, lifespan="off")
        config.load()
        protocol = DirectProtocol.for_app(Answering())(
            config=config, server_state=ServerState(), app_state={}
        )
        protocol.connection_made(_Transport())
        paused = []
        protocol.data_received(post(instances(1)))
        paused.append(protocol.flow.read_paused)
        protocol.pause_writing()  # the transport's buffer passed its high-water mark
        protocol.data_received(post(instances(2)))
        paused.append(protocol.flow.read_paused)
        protocol.resume_writing()
        paused.append(protocol.flow.read_paused)
        protocol.connection_lost(None)
        return paused

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(run()) == [False, True, False]
    finally:
        loop.close()
