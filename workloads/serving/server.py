"""The inference server: SageMaker's hosting contract over a plain ASGI app on uvicorn.

`python -m workloads.serve [--model-dir D] [--port P] [--host H]` (console script `serve`).

- Listens on 8080, or `SAGEMAKER_BIND_TO_PORT`, or `--port`; loads the artifact from
  `--model-dir`, `SM_MODEL_DIR` or `/opt/ml/model` with `workloads.training.artifact.load_model`.
- `GET /ping`: 503 while the model loads, 200 once it is loaded.
- `POST /invocations`: `application/json` `{"instances": [{column: value}, ...]}` or `text/csv`
  rows in `feature_columns` order without a header; answers `{"predictions": [...]}`. A
  predictor may accept more content types (`content_types`, e.g. `image/png` for the image
  task): such a body is one instance, handed to `predictor.prepare(content_type, body)` on the
  batcher thread.
- `GET /openapi.json` (the API description), `GET /stats` (batching counters of this worker,
  and its capture counters), `GET /execution-parameters` (what SageMaker batch transform asks for).
- Data capture (`workloads.serving.capture`): with `--capture-dir` / `MLINFRA_CAPTURE_DIR`
  each sampled request (`--capture-percent`) and its answer, 4xx included, is written in
  SageMaker's data-capture format under `<dir>/<--endpoint-name>/AllTraffic/yyyy/mm/dd/hh/`;
  `X-Amzn-SageMaker-Inference-Id` becomes the record's `inferenceId`.

Why this shape: the request path is a hand-written ASGI app (no framework routing or request
objects) on uvicorn with httptools and uvloop, with orjson for JSON, and several worker
processes share the port. `POST /invocations` does not even take the ASGI path: the HTTP
protocol hands a request read whole straight to the app and writes its answer straight to the
connection (workloads/serving/direct.py: no task, no ASGI messages per request; the same
bytes). Model work (validation, preprocessing, the forward pass, encoding the
answer) runs on one batcher thread per worker, so `/ping` answers while a batch runs; the
exception is a batch the model answers within 1 ms (its cost per row is learned from the recent
batches) while the thread is idle: that runs right on the event loop, since the hand-off to a
thread and back would cost more than the work (the reference model). Decoding images and
tokenizing texts always runs on the thread. The batcher merges the requests that are waiting,
up to a maximum batch size (rows) and a maximum wait, validates and transforms their records in
one pass (if one request's input is bad, each is validated on its own: only that one gets its
400), runs one forward pass and hands each request its rows. The requests read in one turn of
the event loop form a group: on the direct path the group goes once every socket of the turn
has been read, and its answers are written in that same callback, one write each (on the ASGI
path it is handed over by the last request to start: the protocol counts the requests about
to start, `lifecycle.ARRIVALS`), so a group answered inline costs no further turn of the loop.
Serving's batches are small, so their fixed cost is what counts: the tabular model encodes a
request of a few records with a function written for its columns and runs a small batch's
forward pass in numpy (workloads/training/tasks/tabular/), and a response's head and body
leave in one write (`lifecycle.CoalescingTransport` on the ASGI path). Once the model is loaded
the heap is frozen (`gc.freeze`): a full garbage collection would otherwise traverse torch's
objects, a pause of 100-200 ms.
On SIGTERM the server drains (workloads/serving/lifecycle.py: a window that keeps answering with
`Connection: close`, then the accept queue is emptied before the port closes, in-flight
requests finish within 30 s) and exits 0; workers die with their supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import gc
import importlib
import importlib.util
import io
import logging
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from workloads.serving import capture
from workloads.serving.openapi import MAX_BODY_MB, openapi

log = logging.getLogger("mlinfra.serve")

MAX_BODY_BYTES = MAX_BODY_MB * 1024 * 1024  # SageMaker's real-time payload limit
DRAIN_TIMEOUT_S = 30
# A batch the model is expected to answer within this runs on the event loop (see Batcher).
INLINE_BUDGET_S = 0.001
DEFAULT_LOADER = "workloads.training.artifact:load_model"

# Environment variables; every one also has a command-line flag.
ENV_MODEL_DIR = "SM_MODEL_DIR"
ENV_PORT = "SAGEMAKER_BIND_TO_PORT"
ENV_WORKERS = "SAGEMAKER_MODEL_SERVER_WORKERS"
ENV_HOST = "MLINFRA_SERVE_HOST"
ENV_MAX_BATCH = "MLINFRA_SERVE_MAX_BATCH_SIZE"
ENV_MAX_WAIT = "MLINFRA_SERVE_MAX_WAIT_MS"
ENV_BATCHING = "MLINFRA_SERVE_BATCHING"
ENV_THREADS = "MLINFRA_SERVE_THREADS"
ENV_LOADER = "MLINFRA_SERVE_LOADER"
ENV_DRAIN = "MLINFRA_SERVE_DRAIN_S"

JSON = b"application/json"
CSV = b"text/csv"


class SettingsError(ValueError):
    """A bad flag or environment value; the message names it."""


@dataclass(frozen=True)
class ServeSettings:
    model_dir: Path = Path("/opt/ml/model")
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    max_batch_size: int = 64  # rows per forward pass
    max_wait_ms: float = 2.0  # how long a batch waits for more requests once one arrived
    batching: bool = True  # off: every request is its own forward pass
    threads: int = 1  # torch intra-op threads per worker
    loader: str = DEFAULT_LOADER  # "module:function" taking the model dir, returning a Predictor
    drain_s: float = 2.0  # after SIGTERM, keep answering (Connection: close) this long

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise SettingsError(f"port must be 1..65535, got {self.port}")
        for name in ("workers", "max_batch_size", "threads"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise SettingsError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not 0 <= self.drain_s <= 300:
            raise SettingsError(f"drain_s must be 0..300 seconds, got {self.drain_s}")
        if ":" not in self.loader:
            raise SettingsError(f"loader must be 'module:function', got {self.loader!r}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServeSettings:
        env = dict(os.environ if env is None else env)
        workers = _env(env, ENV_WORKERS, int, os.cpu_count() or 1)  # SageMaker's default
        return cls(
            model_dir=Path(env.get(ENV_MODEL_DIR) or "/opt/ml/model"),
            host=env.get(ENV_HOST) or "0.0.0.0",
            port=_env(env, ENV_PORT, int, 8080),
            workers=workers,
            max_batch_size=_env(env, ENV_MAX_BATCH, int, 64),
            max_wait_ms=_env(env, ENV_MAX_WAIT, float, 2.0),
            batching=_env(env, ENV_BATCHING, _parse_bool, True),
            threads=_env(env, ENV_THREADS, int, max(1, (os.cpu_count() or 1) // workers)),
            loader=env.get(ENV_LOADER) or DEFAULT_LOADER,
            drain_s=_env(env, ENV_DRAIN, float, 2.0),
        )

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` return these settings (for worker processes)."""
        return {
            ENV_MODEL_DIR: str(self.model_dir),
            ENV_HOST: self.host,
            ENV_PORT: str(self.port),
            ENV_WORKERS: str(self.workers),
            ENV_MAX_BATCH: str(self.max_batch_size),
            ENV_MAX_WAIT: repr(self.max_wait_ms),
            ENV_BATCHING: "1" if self.batching else "0",
            ENV_THREADS: str(self.threads),
            ENV_LOADER: self.loader,
            ENV_DRAIN: repr(self.drain_s),
        }


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected one of 1/0/true/false/yes/no/on/off, got {text!r}")


def _env(env: dict[str, str], name: str, parse: Callable[[str], Any], default: Any) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingsError(f"environment variable {name}={raw!r} is invalid: {exc}") from None


def load_callable(spec: str) -> Callable[[Path], Any]:
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"cannot load the model loader {spec!r}: {exc}") from None


def _freeze_heap() -> None:
    """Move every object alive once the model is loaded (torch's and the model's: ~200k) out
    of the garbage collector's reach: a full collection then looks only at what requests
    left behind. Without this, each full collection traverses them all, a pause of 100-200 ms
    every few seconds under load (the p99 of the benchmark's c=32 rounds)."""
    gc.collect()
    gc.freeze()


def _input_error_type() -> type[Exception]:
    from workloads.training.tasks.base import InputError

    return InputError


# --------------------------------------------------------------------------------------------
# The batcher: one thread per worker process that does all model work.


@dataclass(slots=True)
class _Job:
    kind: str  # "json" (records), "csv" (rows), or a predictor's own content type (one body)
    payload: list
    rows: int
    future: Any  # an asyncio.Future, or a `DirectAnswer` (done(), set_result((status, body)))


@dataclass
class BatchStats:
    """Counters of the batcher, read by `GET /stats` (per worker process)."""

    requests: int = 0
    rejected: int = 0  # requests that failed validation or prediction
    batches: int = 0
    rows: int = 0
    max_batch_requests: int = 0
    max_batch_rows: int = 0
    batch_requests: Counter = field(default_factory=Counter)  # requests per batch -> count

    def record(self, requests: int, rows: int, rejected: int) -> None:
        self.requests += requests + rejected
        self.rejected += rejected
        if requests:
            self.batches += 1
            self.rows += rows
            self.max_batch_requests = max(self.max_batch_requests, requests)
            self.max_batch_rows = max(self.max_batch_rows, rows)
            self.batch_requests[requests] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "requests": self.requests,
            "rejected": self.rejected,
            "batches": self.batches,
            "rows": self.rows,
            "max_batch_requests": self.max_batch_requests,
            "max_batch_rows": self.max_batch_rows,
            "batch_requests_histogram": {str(k): v for k, v in sorted(self.batch_requests.items())},
        }


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


class Batcher:
    """Merges the requests that are waiting into one forward pass.

    Requests that arrive together (in one turn of the event loop) are handed over as one
    group. A group the model is expected to answer within `inline_budget_s` (learned: the
    cost per row of the recent batches) is answered right there on the event loop when the
    batcher thread is idle: a hand-off to a thread and back costs more than such a batch
    (the reference model answers 32 rows in ~0.2 ms). Every other group goes to the batcher
    thread, which merges what is queued, up to `max_batch_size` rows and `max_wait_s`, so
    `/ping` and the reading of requests go on while a long forward pass runs."""

    def __init__(
        self,
        predictor: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch_size: int,
        max_wait_s: float,
        input_error: type[Exception],
        threads: int = 1,
        inline_budget_s: float = INLINE_BUDGET_S,
    ) -> None:
        self.predictor = predictor
        self.threads = threads
        self.loop = loop
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.input_error = input_error
        # Decoding images and tokenizing texts is real work: a predictor with its own
        # content types or its own collate (image, text) never runs on the event loop.
        default = not getattr(predictor, "content_types", ()) and not hasattr(predictor, "collate")
        self.inline: bool = getattr(predictor, "inline", default)
        self.inline_budget_s = inline_budget_s
        self.collate: Callable[[list], Any] | None = getattr(predictor, "collate", None)
        self.stats = BatchStats()
        # /invocations requests between arrival and answer; kept by the event loop thread.
        self.open_requests = 0
        # The server's count of requests about to start (`lifecycle.ARRIVALS`), when the app
        # runs on its protocol; None: every group waits for one more turn of the loop.
        self.arrivals: Any = None
        # Seconds per row of the recent batches (both paths); unknown until the first one.
        self._row_cost = math.inf
        # Kept by the event loop thread: jobs submitted this turn of the loop, and jobs
        # handed to the thread and not answered yet (while there are any, the thread may be
        # using the predictor, so nothing runs inline).
        self._pending: list[_Job] = []
        self._handed = 0
        self._loop_threads_set = False
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mlinfra-batcher", daemon=True)
        self._thread.start()

    def submit(self, kind: str, payload: list, answer: Any = None) -> Any:
        """Queue one request (on the event loop thread); the future gets (status, body).
        The last request of its turn of the loop (no other request is about to start, as
        `arrivals` counts them) hands the group over at once: a group answered inline then
        has its answers before the task awaits them, with no further turn of the loop.
        `answer` (the direct path, `DirectAnswer`) takes the future's place; such requests
        are read right in the loop's reading of the sockets, so their group goes when every
        socket of the turn has been read (`call_soon`)."""
        future = self.loop.create_future() if answer is None else answer
        self._pending.append(_Job(kind, payload, len(payload), future))
        arrivals = self.arrivals
        if answer is None and arrivals is not None and arrivals.waiting == 0:
            self._flush()
        elif len(self._pending) == 1:  # runs once every request read this turn has submitted
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        if not self._pending:  # the group went already, with the last request of its turn
            return
        jobs, self._pending = self._pending, []
        rows = sum(j.rows for j in jobs)
        if (
            self.inline
            and self._handed == 0
            and rows <= self.max_batch_size
            and rows * self._row_cost <= self.inline_budget_s
        ):
            if not self._loop_threads_set:  # torch's thread count is per calling thread
                import torch

                torch.set_num_threads(self.threads)
                self._loop_threads_set = True
            try:
                self._process(jobs, inline=True)
            except Exception:
                log.exception("batch failed")
                _set_results([(j.future, 500, _error("internal error")) for j in jobs])
            return
        self._handed += len(jobs)
        for job in jobs:
            self._queue.put(job)

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        import torch

        torch.set_num_threads(self.threads)  # set on the thread that runs the forward passes
        carry: _Job | None = None
        while True:
            job = carry or self._queue.get()
            carry = None
            if job is None:
                return
            jobs, rows = [job], job.rows
            deadline = time.monotonic() + self.max_wait_s
            stopping = False
            while rows < self.max_batch_size:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    # Wait only for requests that are already being received: with none in
                    # flight (say, one client) waiting would only add latency.
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.open_requests <= len(jobs):
                        break
                    try:
                        nxt = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                if nxt is None:
                    stopping = True
                    break
                if rows + nxt.rows > self.max_batch_size:
                    carry = nxt  # keeps the batch within the limit; it leads the next batch
                    break
                jobs.append(nxt)
                rows += nxt.rows
            try:
                self._process(jobs)
            except Exception:  # never let the thread die: that would wedge every request
                log.exception("batch failed")
                self._deliver([(j.future, 500, _error("internal error")) for j in jobs])
            if stopping:
                if carry is not None:
                    self._process([carry])
                return

    def _prepare(self, job: _Job) -> np.ndarray:
        if job.kind == "json":
            return self.predictor.prepare_records(job.payload)
        if job.kind == "csv":
            return self.predictor.prepare_rows(job.payload)
        return self.predictor.prepare(job.kind, job.payload[0])

    def _prepare_together(self, jobs: list[_Job]) -> np.ndarray | None:
        """One validation and transform pass over the records of every request (one
        tokenizer call, one numpy pass); None when the requests cannot share one (kinds
        differ, or one's input is bad: then each is prepared on its own, so that only the
        culprit is refused, with a message about its own records)."""
        kind = jobs[0].kind
        if len(jobs) < 2 or any(j.kind != kind for j in jobs):
            return None
        merged = [item for j in jobs for item in j.payload]
        try:
            if kind in ("json", "csv"):
                x = self._prepare(_Job(kind, merged, len(merged), jobs[0].future))
            elif hasattr(self.predictor, "prepare_many"):  # raw bodies (images), one each
                x = self.predictor.prepare_many(kind, merged)
            else:
                return None
        except Exception:
            return None
        return x if len(x) == len(merged) else None

    def _process(self, jobs: list[_Job], inline: bool = False) -> None:
        started = time.thread_time()  # CPU time: a busy shared machine does not inflate it
        results: list[tuple[asyncio.Future, int, bytes]] = []
        ready: list[tuple[_Job, np.ndarray]] = []
        x = self._prepare_together(jobs)
        merged = x is not None
        if merged:
            ready = [(job, job.payload) for job in jobs]  # a job's rows: len(its payload)
        else:
            for job in jobs:  # validate each request on its own
                try:
                    ready.append((job, self._prepare(job)))
                except self.input_error as exc:
                    results.append((job.future, 400, _error(str(exc))))
                except Exception as exc:
                    log.exception("preparing a request failed")
                    results.append((job.future, 500, _error(f"internal error: {exc}")))
        rows = 0
        if ready:
            if not merged:
                mats = [m for _, m in ready]
                # A predictor whose inputs differ in shape (token ids) merges them itself.
                if self.collate is not None:
                    x = self.collate(mats)
                else:
                    x = mats[0] if len(mats) == 1 else np.concatenate(mats)
            rows = len(x)
            try:
                preds = self.predictor.predict_matrix(x)
            except Exception as exc:
                # Isolate the culprit: run each request alone so only it fails.
                if not isinstance(exc, self.input_error):
                    log.exception("batched prediction failed; retrying request by request")
                start = 0
                for job, m in ready:
                    end = start + len(m)
                    results.append(self._predict_one(job, x[start:end] if merged else m))
                    start = end
            else:
                start = 0
                for job, m in ready:
                    end = start + len(m)
                    results.append((job.future, *_answer(preds[start:end])))
                    start = end
        ok = sum(1 for r in results if r[1] == 200)
        self.stats.record(ok, rows if ok else 0, len(results) - ok)
        if rows:
            # Falls at once, rises by at most a quarter a batch: one slow batch does not send
            # the next ones to the thread.
            cost = (time.thread_time() - started) / rows
            self._row_cost = min(cost, self._row_cost * 1.25)
        if inline:
            _set_results(results)
        else:
            self._deliver(results)

    def _predict_one(self, job: _Job, m: np.ndarray) -> tuple[asyncio.Future, int, bytes]:
        try:
            preds = self.predictor.predict_matrix(m)
        except self.input_error as exc:  # this request's input breaks the model (say, overflow)
            return job.future, 400, _error(str(exc))
        except Exception as exc:
            log.exception("prediction failed")
            return job.future, 500, _error(f"prediction failed: {exc}")
        return (job.future, *_answer(preds))

    def _deliver(self, results: list[tuple[asyncio.Future, int, bytes]]) -> None:
        # One wake-up of the event loop per batch, not one per request.
        try:
            self.loop.call_soon_threadsafe(self._answered, results)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _answered(self, results: list[tuple[asyncio.Future, int, bytes]]) -> None:
        """On the event loop: the thread answered these jobs."""
        self._handed -= len(results)
        _set_results(results)


def _answer(predictions: list) -> tuple[int, bytes]:
    """The 200 answer, unless a prediction is not a finite number: that is a fault of the
    model (the inputs were checked), logged and answered 500, never sent as a prediction.
    orjson writes NaN and infinity as null, so only a body with a null is looked into."""
    body = orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" in body and _has_non_finite(predictions):
        log.error("model fault: the predictor returned a non-finite prediction: %.300s", body)
        return 500, _error("internal error: the model produced a non-finite prediction")
    return 200, body


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float | np.floating):
        return not math.isfinite(value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "fc" and not np.isfinite(value).all()
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def _set_results(results: list[tuple[asyncio.Future, int, bytes]]) -> None:
    for future, status, body in results:
        if not future.done():
            future.set_result((status, body))


class DirectAnswer:
    """A request of the direct path in the batcher, in its future's place: the batcher's
    result (status, body) is written to the connection at once, so every request of a batch
    is answered in the callback that answers the batch, one write each, with no task to
    wake."""

    __slots__ = ("app", "batcher", "protocol", "cycle", "captured", "_done")

    def __init__(self, app: InferenceApp, batcher: Batcher, protocol: Any, cycle: Any) -> None:
        self.app = app
        self.batcher = batcher
        self.protocol = protocol
        self.cycle = cycle
        self.captured: tuple[bytes, bytes, str | None] | None = None  # (media, body, id)
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: tuple[int, bytes]) -> None:
        self._done = True
        self.batcher.open_requests -= 1
        status, body = result
        try:
            if self.captured is not None:
                media, request, inference_id = self.captured
                self.app._capture(media, request, status, body, inference_id)
            self.protocol.answer(self.cycle, status, body)
        except Exception:  # one connection's trouble must not keep its batch unanswered
            log.exception("answering a request failed")


# --------------------------------------------------------------------------------------------
# The ASGI app.


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, allow: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow  # the methods a 405 names in its Allow header


@functools.lru_cache(maxsize=256)  # a client sends the same few headers every time
def _media_type(value: bytes) -> bytes:
    return value.split(b";", 1)[0].strip().lower()


@functools.lru_cache(maxsize=256)
def _accepts_json(accept: bytes | None) -> bool:
    """True if an Accept header admits application/json (absent header admits anything)."""
    if not accept:
        return True
    for part in accept.split(b","):
        pieces = part.split(b";")
        media = pieces[0].strip().lower()
        quality = 1.0
        for param in pieces[1:]:
            key, _, value = param.strip().partition(b"=")
            if key.strip() == b"q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0 and media in (JSON, b"application/*", b"*/*", b""):
            return True
    return False


def parse_csv(body: bytes) -> list[list[str]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _HTTPError(400, f"text/csv body is not valid UTF-8: {exc}") from None
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as exc:
        raise _HTTPError(400, f"malformed CSV: {exc}") from None
    if not rows:
        raise _HTTPError(400, "empty CSV body: send one row per instance, without a header")
    return rows


def parse_json(body: bytes) -> list:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _HTTPError(400, f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or "instances" not in doc:
        raise _HTTPError(400, 'expected a JSON object {"instances": [{column: value, ...}, ...]}')
    if len(doc) != 1:  # "instances" and more
        extra = sorted(set(doc) - {"instances"})
        raise _HTTPError(400, f"unexpected top-level keys {extra}: only 'instances' is allowed")
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise _HTTPError(400, f"'instances' must be a list, got {type(instances).__name__}")
    if not instances:
        raise _HTTPError(400, "'instances' is an empty list: send at least one instance")
    return instances


class InferenceApp:
    """ASGI application; `create_app()` builds it from the environment."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.predictor: Any = None
        self.batcher: Batcher | None = None
        self.raw_types: frozenset[bytes] = frozenset()  # the predictor's own content types
        self.load_error: str | None = None
        self._loader_thread: threading.Thread | None = None
        # `lifecycle.ARRIVALS` when the server runs on `LastCallProtocol` (`_serve`).
        self.arrivals: Any = None
        # Set on SIGTERM (lifecycle.DrainingServer): answers close their connection.
        self.draining = False
        self.capturer = capture.from_env(dict(os.environ))  # None: capture off

    # -- lifecycle ---------------------------------------------------------------------------

    def start_loading(self, loop: asyncio.AbstractEventLoop) -> None:
        """Load the model on a thread so /ping answers 503 (not nothing) while it loads."""
        self._loader_thread = threading.Thread(
            target=self._load, args=(loop,), name="mlinfra-loader", daemon=True
        )
        self._loader_thread.start()

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.settings
        try:
            predictor = load_callable(s.loader)(s.model_dir)
            _freeze_heap()
            self.batcher = Batcher(
                predictor,
                loop,
                max_batch_size=s.max_batch_size if s.batching else 1,
                max_wait_s=s.max_wait_ms / 1000 if s.batching else 0.0,
                input_error=_input_error_type(),
                threads=s.threads,
            )
            self.batcher.arrivals = self.arrivals
            self.raw_types = frozenset(
                t.encode("latin-1") for t in getattr(predictor, "content_types", ())
            )
            self.predictor = predictor
            log.info(
                "model loaded from %s (%d features, task %s); batching %s",
                s.model_dir,
                len(predictor.feature_columns),
                getattr(predictor, "task", "?"),
                f"on: max {s.max_batch_size} rows, {s.max_wait_ms} ms" if s.batching else "off",
            )
        except Exception as exc:
            self.load_error = f"loading the model from {s.model_dir} failed: {exc}"
            from workloads.training.artifact import ArtifactError  # lazily: it imports torch

            if isinstance(exc, ArtifactError | SettingsError):  # says what is wrong
                log.error("%s", self.load_error)
            else:
                log.exception("loading the model from %s failed", s.model_dir)

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        if self.capturer is not None:
            self.capturer.stop()

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.capturer is not None:
                    self.capturer.start()
                self.start_loading(asyncio.get_running_loop())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.arrivals is not None:
            self.arrivals.waiting -= 1  # this request has started
        path, method = scope["path"], scope["method"]
        allow = None
        try:
            if path == "/invocations":
                if method != "POST":
                    raise _HTTPError(405, f"{method} /invocations: use POST", allow=b"POST")
                status, body = await self._invoke(scope, receive)
            elif path == "/ping":
                _require(method, "GET", path)
                status, body = self._ping()
            elif path == "/openapi.json":
                _require(method, "GET", path)
                status, body = 200, orjson.dumps(openapi(self.predictor))
            elif path == "/stats":
                _require(method, "GET", path)
                stats = self.batcher.stats.as_dict() if self.batcher else {}
                stats["gc_frozen"] = gc.get_freeze_count()  # objects no collection traverses
                if self.capturer is not None:
                    stats["capture"] = self.capturer.stats()
                status, body = 200, orjson.dumps(stats)
            elif path == "/execution-parameters":
                _require(method, "GET", path)
                status, body = 200, orjson.dumps(self._execution_parameters())
            else:
                raise _HTTPError(404, f"no such path {path!r}: use POST /invocations or GET /ping")
        except _HTTPError as exc:
            status, body, allow = exc.status, _error(exc.message), exc.allow
        headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(body))]
        if allow is not None:
            headers.append((b"allow", allow))
        if self.draining:  # the client reconnects, to a replica that is not stopping
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if method != "HEAD" else b""})

    def _ping(self) -> tuple[int, bytes]:
        if self.draining:
            return 503, _error("draining: the server is stopping")
        if self.batcher is not None:
            return 200, b'{"status":"ok"}'
        if self.load_error:
            return 500, _error(self.load_error)
        return 503, _error("model is loading")

    def _execution_parameters(self) -> dict[str, Any]:
        return {
            "MaxConcurrentTransforms": self.settings.workers * 8,
            "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": MAX_BODY_MB,
        }

    def _admit(self, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, str | None, Batcher]:
        """The header checks of `POST /invocations`: (media type, inference id, batcher);
        raises `_HTTPError` (406, 415, 413, 503)."""
        content_type = accept = length = inference_id = None
        for name, value in headers:
            if name == b"x-amzn-sagemaker-inference-id":
                inference_id = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value
            elif name == b"accept":
                accept = value
            elif name == b"content-length":
                length = value
        if not _accepts_json(accept):
            raise _HTTPError(406, f"cannot answer Accept: {accept.decode('latin-1')}; "
                             "this server answers application/json")  # fmt: skip
        media = _media_type(content_type) if content_type else b""
        if media not in (JSON, CSV) and media not in self.raw_types and self.batcher:
            shown = content_type.decode("latin-1") if content_type else "(none)"
            usable = ", ".join(t.decode() for t in (JSON, CSV, *sorted(self.raw_types)))
            raise _HTTPError(415, f"unsupported Content-Type {shown}: use {usable}")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise _HTTPError(
                413, f"body of {int(length)} bytes is over the {MAX_BODY_BYTES} byte limit"
            )
        batcher = self.batcher
        if batcher is None:
            raise _HTTPError(503, self.load_error or "model is loading; retry when /ping is 200")
        return media, inference_id, batcher

    @staticmethod
    def _payload(media: bytes, body: bytes) -> tuple[str, list]:
        """What the batcher takes for a body: (kind, payload); raises `_HTTPError` (400)."""
        if media == JSON:
            return "json", parse_json(body)
        if media == CSV:
            return "csv", parse_csv(body)
        return media.decode("latin-1"), [body]  # the predictor's own format, one instance

    async def _invoke(self, scope: dict, receive: Callable) -> tuple[int, bytes]:
        media, inference_id, batcher = self._admit(scope["headers"])
        batcher.open_requests += 1
        body = b""
        try:
            body = await _read_body(receive)
            status, answer = await batcher.submit(*self._payload(media, body))
        except _HTTPError as exc:
            self._capture(media, body, exc.status, _error(exc.message), inference_id)
            raise
        finally:
            batcher.open_requests -= 1
        if self.capturer is not None:
            self._capture(media, body, status, answer, inference_id)
        return status, answer

    def invoke_direct(self, protocol: Any, cycle: Any, body: bytes) -> None:
        """`POST /invocations` with its whole body read, off the ASGI path
        (`workloads.serving.direct`): the same checks and answers as `_invoke`; the answer
        goes out through `protocol.answer(cycle, status, body)`, now or when its batch is
        answered."""
        media, inference_id = b"", None
        try:
            media, inference_id, batcher = self._admit(cycle.scope["headers"])
            try:
                kind, payload = self._payload(media, body)
            except _HTTPError as exc:
                self._capture(media, body, exc.status, _error(exc.message), inference_id)
                raise
        except _HTTPError as exc:
            protocol.answer(cycle, exc.status, _error(exc.message))
            return
        batcher.open_requests += 1
        answer = DirectAnswer(self, batcher, protocol, cycle)
        if self.capturer is not None:
            answer.captured = (media, body, inference_id)
        batcher.submit(kind, payload, answer)

    def _capture(
        self, media: bytes, body: bytes, status: int, answer: bytes, inference_id: str | None
    ) -> None:
        """Hand a served (or rejected, 4xx) request to the capturer; never blocks."""
        if self.capturer is not None and status < 500:
            self.capturer.offer(media.decode("latin-1"), body, answer, inference_id)


def _require(method: str, allowed: str, path: str) -> None:
    if method not in (allowed, "HEAD"):
        raise _HTTPError(405, f"{method} {path}: use {allowed}", allow=f"{allowed}, HEAD".encode())


async def _read_body(receive: Callable) -> bytes:
    message = await receive()
    if not message.get("more_body", False) and message["type"] == "http.request":
        body = message.get("body", b"")  # the whole body in one message: the common case
        if len(body) > MAX_BODY_BYTES:
            raise _HTTPError(413, f"body is over the {MAX_BODY_BYTES} byte limit")
        return body
    return await _read_chunks(receive, message)


async def _read_chunks(receive: Callable, message: dict) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise _HTTPError(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _HTTPError(413, f"body is over the {MAX_BODY_BYTES} byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        message = await receive()


def create_app() -> InferenceApp:
    """The app of one server process, from the environment (also a uvicorn factory)."""
    _configure_logging()  # worker processes are spawned: they do not inherit the parent's setup
    return InferenceApp(ServeSettings.from_env())


# --------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: list[str] | None = None) -> ServeSettings:
    try:
        base = ServeSettings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"serve: {exc}") from None
    p = argparse.ArgumentParser(prog="serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=base.model_dir, help=f"${ENV_MODEL_DIR}")
    p.add_argument("--host", default=base.host, help=f"${ENV_HOST} (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=base.port, help=f"${ENV_PORT} (default 8080)")
    p.add_argument("--workers", type=int, default=base.workers, help=f"${ENV_WORKERS}")
    p.add_argument(
        "--max-batch-size", type=int, default=base.max_batch_size, help=f"${ENV_MAX_BATCH}"
    )
    p.add_argument("--max-wait-ms", type=float, default=base.max_wait_ms, help=f"${ENV_MAX_WAIT}")
    p.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=base.batching,
        help=f"${ENV_BATCHING} (default on)",
    )
    p.add_argument("--threads", type=int, default=None, help=f"${ENV_THREADS} torch threads/worker")
    p.add_argument("--loader", default=base.loader, help=f"${ENV_LOADER} module:function")
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=base.drain_s,
        help=f"${ENV_DRAIN}: after SIGTERM, keep answering this long (default 2)",
    )
    capture.add_flags(p)
    args = p.parse_args(argv)
    try:
        capture.apply_flags(args, os.environ)
    except ValueError as exc:
        p.error(str(exc))
    threads = args.threads
    if threads is None:  # the environment's value, else share the cores between the workers
        threads = base.threads if os.environ.get(ENV_THREADS) else None
        threads = threads or max(1, (os.cpu_count() or 1) // max(1, args.workers))
    try:
        return ServeSettings(
            model_dir=args.model_dir,
            host=args.host,
            port=args.port,
            workers=args.workers,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            batching=args.batching,
            threads=threads,
            loader=args.loader,
            drain_s=args.drain_seconds,
        )
    except SettingsError as exc:
        p.error(str(exc))
        raise  # unreachable: p.error exits


def _configure_logging() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )


def _exit_zero(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"serve: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _serve(sock: socket.socket) -> None:
    """Run one server process on a bound socket until SIGTERM; drains, then returns."""
    import uvicorn

    from workloads.serving.direct import DirectProtocol
    from workloads.serving.lifecycle import ARRIVALS, DrainingServer

    app = create_app()
    app.arrivals = ARRIVALS  # LastCallProtocol counts the requests about to start
    config = uvicorn.Config(
        app,
        loop="uvloop",
        # httptools, with the last call of the drain, and POST /invocations off the ASGI path
        http=DirectProtocol.for_app(app),
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting: one middleware less per request
        server_header=False,
        date_header=False,
        backlog=4096,
        timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
        timeout_keep_alive=75,  # longer than a load balancer's idle timeout (60 s)
    )
    # The server drains on SIGTERM (workloads/serving/lifecycle.py), then raises the signal
    # again with the handler found at start; this one turns that into a clean exit 0
    # (SageMaker and Kubernetes read 143 as a crash).
    signal.signal(signal.SIGTERM, _exit_zero)
    sock.listen(4096)
    DrainingServer(config, app, app.settings.drain_s).run(sockets=[sock])


def _worker(host: str, port: int, supervisor: int) -> None:
    """A worker process: its own SO_REUSEPORT socket, so the kernel spreads connections
    evenly over the workers (one shared socket lets one worker accept most of them, and
    its batcher then carries most of the load while the other idles). It dies with its
    supervisor, so a SIGKILLed supervisor leaves no worker holding the port."""
    from workloads.serving.lifecycle import die_with_parent

    die_with_parent(supervisor)
    _configure_logging()
    _serve(_bind(host, port, reuse_port=True))


def _supervise(settings: ServeSettings) -> int:
    """Start the worker processes; on SIGTERM/SIGINT pass it on and wait for them to drain.
    A worker that dies on its own stops the server (exit 1) so the platform restarts it."""
    import multiprocessing

    # Fail fast if the port is taken: SO_REUSEPORT would otherwise share it silently.
    _bind(settings.host, settings.port, reuse_port=False).close()
    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs = [
        ctx.Process(
            target=_worker, args=(settings.host, settings.port, os.getpid()), name=f"worker-{i}"
        )
        for i in range(settings.workers)
    ]
    for proc in procs:
        proc.start()
    log.info("serving on %s:%d with %d workers", settings.host, settings.port, settings.workers)
    code = 0
    while not stopping.wait(0.5):
        dead = [p for p in procs if not p.is_alive()]
        if dead:
            log.error("worker %s exited with %s; stopping", dead[0].name, dead[0].exitcode)
            code = 1
            break
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.drain_s + DRAIN_TIMEOUT_S + 5
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
            code = 1
    return code


def _loader_problem(spec: str) -> str | None:
    """Why `spec` names no loader module (found without running it: the workers import it),
    or None."""
    module, sep, name = spec.partition(":")
    if not (module and sep and name):
        return "expected module:function"
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, a bad name
        found = False
    return None if found else f"no module named {module!r}"


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    if settings.loader == DEFAULT_LOADER and not settings.model_dir.is_dir():
        raise SystemExit(
            f"serve: model dir {settings.model_dir} does not exist "
            f"(set --model-dir or ${ENV_MODEL_DIR})"
        )
    problem = _loader_problem(settings.loader)
    if problem:
        raise SystemExit(
            f"serve: model loader {settings.loader!r} (--loader or {ENV_LOADER}): {problem}"
        )
    _configure_logging()
    os.environ.update(settings.to_env())  # worker processes rebuild the settings from it
    # Idle OpenMP threads sleep instead of spinning: spinning steals the core that the event
    # loop (and the other workers) need between batches. Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if settings.workers == 1:
        _serve(_bind(settings.host, settings.port, reuse_port=False))
        return 0
    return _supervise(settings)


if __name__ == "__main__":
    sys.exit(main())
