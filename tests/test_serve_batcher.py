"""The batcher on its own (no HTTP): how model faults and per-request input errors are answered."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
import orjson

from workloads.serving.server import Batcher
from workloads.training.tasks.base import InputError


class FakePredictor:
    """Rows are one number each; a row of 666 breaks the forward pass (as an input that
    overflows the network does), a row of -1 gets a NaN probability (a broken model)."""

    feature_columns = ["x"]

    def prepare_records(self, records: list[dict]) -> np.ndarray:
        return np.array([[r["x"]] for r in records], dtype=np.float32)

    def prepare_rows(self, rows: list[list]) -> np.ndarray:
        return np.array([[float(r[0])] for r in rows], dtype=np.float32)

    def predict_matrix(self, x: np.ndarray) -> list:
        bad = np.nonzero(x[:, 0] == 666)[0]
        if bad.size:
            raise InputError(f"instance {int(bad[0])}: overflows")
        return [
            {"label": "a", "probabilities": {"a": float("nan") if v == -1 else 1.0}}
            for v in x[:, 0].tolist()
        ]


def run(batches: list[list[dict]], predictor: Any = None) -> list[tuple[int, dict]]:
    """Submit the requests together (one batch) and return (status, body) per request."""
    # all in flight: they share one forward pass
    [answers] = serve_in_turns(predictor or FakePredictor(), [batches], 0.05, len(batches))
    return answers


def test_an_input_that_breaks_the_forward_pass_fails_only_its_request() -> None:
    answers = run([[{"x": 1}], [{"x": 2}, {"x": 666}], [{"x": 3}]])
    assert [status for status, _ in answers] == [200, 400, 200]
    assert answers[1][1] == {"error": "instance 1: overflows"}
    assert answers[2][1]["predictions"] == [{"label": "a", "probabilities": {"a": 1.0}}]


def test_a_non_finite_prediction_is_a_logged_500_never_an_answer(caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="mlinfra.serve"):
        answers = run([[{"x": 1}], [{"x": -1}]])
    assert answers[0][0] == 200
    status, body = answers[1]
    assert status == 500 and "non-finite prediction" in body["error"]
    assert "predictions" not in body
    assert any("model fault" in r.getMessage() for r in caplog.records)


def test_finite_predictions_with_a_null_label_are_answered() -> None:
    class NullLabel(FakePredictor):
        def predict_matrix(self, x: np.ndarray) -> list:
            return [{"label": None, "probabilities": {"a": 0.5}} for _ in range(len(x))]

    [(status, body)] = run([[{"x": 1}]], NullLabel())
    assert status == 200 and body["predictions"][0]["label"] is None


class Recording(FakePredictor):
    """Records which thread ran each call, and how many records each prepare call saw."""

    def __init__(self) -> None:
        self.prepared: list[int] = []
        self.threads: list[str] = []

    def prepare_records(self, records: list[dict]) -> np.ndarray:
        if any(not isinstance(r.get("x"), int) for r in records):
            raise InputError("x must be an integer")
        self.prepared.append(len(records))
        self.threads.append(threading.current_thread().name)
        return super().prepare_records(records)


def loop_batcher(predictor: Any, **options: Any) -> Batcher:
    """A batcher on the running event loop as these tests make it: batches of up to 64
    rows, no wait for more, the tasks' input error; `options` override."""
    options = {"max_batch_size": 64, "max_wait_s": 0.0, "input_error": InputError} | options
    return Batcher(predictor, asyncio.get_running_loop(), **options)


def serve_in_turns(
    predictor: Any, turns: list[list[list[dict]]], max_wait_s: float = 0.0, in_flight: int = 0
) -> list[list[tuple[int, dict]]]:
    """Each turn: submit its requests together, wait for their answers, then the next turn."""

    async def main() -> list[list[tuple[int, bytes]]]:
        batcher = loop_batcher(predictor, max_wait_s=max_wait_s)
        batcher.open_requests = in_flight
        try:
            out = []
            for turn in turns:
                futures = [batcher.submit("json", records) for records in turn]
                out.append(await asyncio.wait_for(asyncio.gather(*futures), 10))
            return out
        finally:
            batcher.stop()

    # A loop of its own, never the thread's current one: asyncio.run would leave none behind,
    # and other tests in this process (Pulumi's mocks) ask for the current loop.
    loop = asyncio.new_event_loop()
    try:
        answers = loop.run_until_complete(main())
    finally:
        loop.close()
    return [[(status, orjson.loads(body)) for status, body in turn] for turn in answers]


def test_requests_that_arrive_together_are_prepared_in_one_pass() -> None:
    predictor = Recording()
    [answers] = serve_in_turns(predictor, [[[{"x": 1}], [{"x": 2}, {"x": 3}], [{"x": 4}]]])
    assert [status for status, _ in answers] == [200, 200, 200]
    assert predictor.prepared == [4]  # one call for the four records of three requests
    assert [len(body["predictions"]) for _, body in answers] == [1, 2, 1]


def test_a_bad_request_among_merged_ones_gets_its_own_error() -> None:
    predictor = Recording()
    [answers] = serve_in_turns(predictor, [[[{"x": 1}], [{"x": "two"}], [{"x": 3}]]])
    assert [status for status, _ in answers] == [200, 400, 200]
    assert answers[1][1] == {"error": "x must be an integer"}
    assert predictor.prepared == [1, 1]  # the merged pass failed: each request on its own


def test_a_cheap_batch_runs_on_the_event_loop_once_its_cost_is_known() -> None:
    predictor = Recording()
    serve_in_turns(predictor, [[[{"x": 1}]], [[{"x": 2}]], [[{"x": 3}], [{"x": 4}]]])
    # The first batch has no known cost: the thread; then the event loop (no hand-off).
    assert predictor.threads[0] == "mlinfra-batcher"
    assert predictor.threads[1:] == [threading.main_thread().name] * 2


def test_a_predictor_that_decodes_never_runs_on_the_event_loop() -> None:
    class Decoding(Recording):
        content_types = ("image/png",)

    predictor = Decoding()
    serve_in_turns(predictor, [[[{"x": 1}]], [[{"x": 2}]], [[{"x": 3}]]])
    assert predictor.threads == ["mlinfra-batcher"] * 3


def test_an_expensive_batch_goes_to_the_thread() -> None:
    class Slow(Recording):
        def predict_matrix(self, x: np.ndarray) -> list:
            end = time.thread_time() + 0.003  # 3 ms of CPU: over the 1 ms budget
            while time.thread_time() < end:
                pass
            return super().predict_matrix(x)

    predictor = Slow()
    serve_in_turns(predictor, [[[{"x": 1}]], [[{"x": 2}]], [[{"x": 3}]]])
    assert predictor.threads == ["mlinfra-batcher"] * 3


def test_the_last_request_of_its_turn_hands_the_group_over_at_once() -> None:
    """With the server's count of requests about to start, the last of a turn's requests
    flushes the group itself: answered inline, its future is done before it is awaited."""
    from workloads.serving.lifecycle import Arrivals

    predictor = Recording()

    async def main() -> tuple[list[bool], list[bool]]:
        batcher = loop_batcher(predictor)
        batcher.arrivals = Arrivals()
        try:
            await batcher.submit("json", [{"x": 0}])  # the first batch learns the cost
            # Three requests of one turn: two more are about to start as the first submits.
            batcher.arrivals.waiting = 2
            futures = []
            for i in range(3):
                futures.append(batcher.submit("json", [{"x": i}]))
                batcher.arrivals.waiting = max(0, batcher.arrivals.waiting - 1)
            together = [f.done() for f in futures]
            lone = batcher.submit("json", [{"x": 9}])  # nothing else is about to start
            alone = [lone.done()]
            await asyncio.gather(*futures, lone)
            return together, alone
        finally:
            batcher.stop()

    loop = asyncio.new_event_loop()
    try:
        together, alone = loop.run_until_complete(main())
    finally:
        loop.close()
    assert predictor.prepared == [1, 3, 1]  # the turn's three requests in one pass
    assert together == [True, True, True] and alone == [True]  # no further turn of the loop
    assert predictor.threads[1:] == ["MainThread", "MainThread"]
