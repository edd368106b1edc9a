"""Data capture for the inference server, in SageMaker's data-capture format and layout.

Each captured request is one JSON Lines record:

    {"captureData": {"endpointInput": {"observedContentType": "text/csv", "mode": "INPUT",
                                       "data": "1,2,3", "encoding": "CSV"},
                     "endpointOutput": {"observedContentType": "application/json",
                                        "mode": "OUTPUT", "data": "{...}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceId": "<X-Amzn-SageMaker-Inference-Id>",
                       "inferenceTime": "2026-11-30T10:00:00.123Z"},
     "eventVersion": "0"}

in files `<destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/<MM-SS-mmm-uuid>.jsonl` (the
hour and the name from the file's first record, UTC). As SageMaker does with a
CaptureContentTypeHeader, `text/csv` is stored as CSV text and JSON as JSON text; anything
else (or every payload, with `base64=True`, SageMaker's default) is BASE64.

Capture never slows or fails a request: `offer` samples, then puts the bytes on a bounded
queue without waiting; a full queue drops the record and counts it. A writer thread
gathers records and writes a new file (atomically: readers never see half a line) every
`flush_seconds` or `flush_records`, and when the hour changes. The destination is a folder
(local endpoints: the logs bucket folder) or `s3://bucket/prefix` (Kubernetes endpoints: the
logs bucket's `data-capture/`, one PutObject per file under the pod's IRSA role); a write
or upload that fails loses that file's records, counted in `write_errors`.
"""

from __future__ import annotations

import base64
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from workloads.storage import atomic_write

log = logging.getLogger("workloads.serving.capture")
ENV_DIR = "MLINFRA_CAPTURE_DIR"
ENV_PERCENT = "MLINFRA_CAPTURE_PERCENT"
ENV_ENDPOINT = "MLINFRA_ENDPOINT_NAME"
ENV_VARIANT = "MLINFRA_VARIANT_NAME"
ENV_MODEL_VERSION = "MLINFRA_MODEL_VERSION"
ENV_PACKAGE = "MODEL_PACKAGE_ARN"  # set on Kubernetes serving pods (components/serving_pod.py)
DEFAULT_VARIANT = "AllTraffic"
QUEUE_SIZE = 10_000


@dataclass(frozen=True)
class Captured:
    content_type: str
    request: bytes
    response: bytes
    response_type: str
    inference_id: str | None
    time: datetime


def _encoded(content_type: str, body: bytes, base64_all: bool) -> tuple[str, str]:
    media = content_type.split(";")[0].strip().lower()
    if not base64_all:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            text = None
        if text is not None and media == "text/csv":
            return text, "CSV"
        if text is not None and (media == "application/json" or media.endswith("+json")):
            return text, "JSON"
    return base64.b64encode(body).decode(), "BASE64"


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def capture_record(
    item: Captured, event_id: str, base64_all: bool = False, model_version: str | None = None
) -> dict:
    """One SageMaker data-capture record. `model_version`, when set, is an extra
    `eventMetadata.modelVersion` field the monitor uses to keep versions apart."""
    in_data, in_enc = _encoded(item.content_type, item.request, base64_all)
    out_data, out_enc = _encoded(item.response_type, item.response, base64_all)
    meta: dict[str, str] = {"eventId": event_id}
    if item.inference_id:
        meta["inferenceId"] = item.inference_id
    meta["inferenceTime"] = _iso(item.time)
    if model_version:
        meta["modelVersion"] = model_version
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": item.content_type,
                "mode": "INPUT",
                "data": in_data,
                "encoding": in_enc,
            },
            "endpointOutput": {
                "observedContentType": item.response_type,
                "mode": "OUTPUT",
                "data": out_data,
                "encoding": out_enc,
            },
        },
        "eventMetadata": meta,
        "eventVersion": "0",
    }


def capture_key(endpoint: str, variant: str, first: datetime) -> str:
    """`<endpoint>/<variant>/yyyy/mm/dd/hh/<MM-SS-mmm-uuid>.jsonl`, under the destination."""
    name = f"{first:%M-%S}-{first.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
    return f"{endpoint}/{variant}/{first:%Y/%m/%d/%H}/{name}"


def capture_path(root: Path, endpoint: str, variant: str, first: datetime) -> Path:
    """`<root>/<endpoint>/<variant>/yyyy/mm/dd/hh/<MM-SS-mmm-uuid>.jsonl`."""
    return root / capture_key(endpoint, variant, first)


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at its ends) of `s3://bucket/prefix`."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"capture destination {uri!r}: expected s3://bucket/prefix")
    return bucket, prefix.strip("/")


class Capturer:
    """The bounded queue and the writer thread; `start` it, `offer` records, `stop` it."""

    def __init__(
        self,
        directory: str | Path,
        endpoint: str,
        *,
        variant: str = DEFAULT_VARIANT,
        percent: float = 100.0,
        queue_size: int = QUEUE_SIZE,
        flush_seconds: float = 5.0,
        flush_records: int = 1000,
        base64_all: bool = False,
        model_version: str | None = None,
        sample: Callable[[], float] = random.random,
        s3_client: Any = None,
    ) -> None:
        """`directory` is a folder, or `s3://bucket/prefix`: each file is then one PutObject
        (with `s3_client`, else a boto3 client made by the writer thread: the pod's IRSA
        role on Kubernetes)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"capture percent {percent}: must be between 0 and 100")
        if not endpoint or "/" in endpoint:
            raise ValueError(f"endpoint name {endpoint!r}: must be non-empty without '/'")
        self.s3: tuple[str, str] | None = None
        if str(directory).startswith("s3://"):
            self.s3 = split_s3(str(directory))
        self._s3_client = s3_client
        self.destination = str(directory)
        self.root, self.endpoint, self.variant = Path(directory), endpoint, variant
        self.percent, self.base64_all, self.model_version = percent, base64_all, model_version
        self.flush_seconds, self.flush_records = flush_seconds, flush_records
        self._sample = sample
        self._queue: queue.Queue[Captured | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.offered = self.captured = self.dropped = self.written = 0
        self.files = self.write_errors = 0

    def start(self) -> Capturer:
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()
        return self

    def offer(
        self,
        content_type: str,
        request: bytes,
        response: bytes,
        inference_id: str | None = None,
        response_type: str = "application/json",
    ) -> bool:
        """Queue one request/response pair if sampled; never blocks. True when queued."""
        self.offered += 1
        if self.percent < 100 and self._sample() * 100 >= self.percent:
            return False
        item = Captured(
            content_type, request, response, response_type, inference_id, datetime.now(UTC)
        )
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            return False
        self.captured += 1
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued and end the writer thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("capture: the queue stayed full for %.0f s; records lost", timeout)
        self._thread.join(timeout)
        self._thread = None

    def stats(self) -> dict[str, int | float]:
        return {
            "percent": self.percent,
            "offered": self.offered,
            "captured": self.captured,
            "dropped": self.dropped,
            "written": self.written,
            "files": self.files,
            "write_errors": self.write_errors,
            "queued": self._queue.qsize(),
        }

    def _run(self) -> None:
        batch: list[Captured] = []
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = ...  # time to flush
            if item is None:
                self._flush(batch)
                return
            if item is not ...:
                if batch and (item.time.hour, item.time.date()) != (
                    batch[0].time.hour,
                    batch[0].time.date(),
                ):
                    self._flush(batch)
                    batch = []
                batch.append(item)
            if len(batch) >= self.flush_records or time.monotonic() >= deadline:
                self._flush(batch)
                batch = []
                deadline = time.monotonic() + self.flush_seconds

    def _flush(self, batch: list[Captured]) -> None:
        if not batch:
            return
        lines = b"".join(
            orjson.dumps(capture_record(i, str(uuid.uuid4()), self.base64_all, self.model_version))
            + b"\n"
            for i in batch
        )
        key = capture_key(self.endpoint, self.variant, batch[0].time)
        try:
            if self.s3 is None:
                path = self.root / key
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lines)
            else:
                self._put(key, lines)
        except Exception as exc:  # a full disk or a refused upload loses records, never the server
            self.write_errors += 1
            log.warning("capture: cannot write %s to %s: %s", key, self.destination, exc)
            return
        self.files += 1
        self.written += len(batch)

    def _put(self, key: str, lines: bytes) -> None:
        """One capture file as one S3 object: readers never see half a file. The bucket's
        default encryption (the team's KMS key) applies."""
        assert self.s3 is not None
        bucket, prefix = self.s3
        if self._s3_client is None:
            import boto3

            self._s3_client = boto3.client("s3")
        self._s3_client.put_object(
            Bucket=bucket,
            Key=f"{prefix}/{key}" if prefix else key,
            Body=lines,
            ContentType="application/jsonl",
        )


def version_of_package(arn: str | None) -> str | None:
    """The version number at the end of a model package ARN
    (`arn:aws:sagemaker:<region>:<account>:model-package/<group>/<n>`), else None."""
    if not arn or ":model-package/" not in arn:
        return None
    last = arn.rsplit("/", 1)[-1]
    return last if last.isdigit() else None


def from_env(env: dict[str, str]) -> Capturer | None:
    """A capturer from `MLINFRA_CAPTURE_DIR` (a folder or `s3://bucket/prefix`; and percent,
    endpoint, variant, version), or None when capture is off. Without
    `MLINFRA_MODEL_VERSION` the version is the one of `MODEL_PACKAGE_ARN` (a Kubernetes
    serving pod's model), so the monitor keeps versions apart."""
    directory = env.get(ENV_DIR)
    if not directory:
        return None
    try:
        percent = float(env.get(ENV_PERCENT, "100"))
    except ValueError:
        raise ValueError(f"{ENV_PERCENT}={env[ENV_PERCENT]!r}: expected a number 0-100") from None
    return Capturer(
        directory,
        env.get(ENV_ENDPOINT, "local"),
        variant=env.get(ENV_VARIANT, DEFAULT_VARIANT),
        percent=percent,
        model_version=env.get(ENV_MODEL_VERSION) or version_of_package(env.get(ENV_PACKAGE)),
    )


def add_flags(parser: Any) -> None:
    """The server's capture flags; each sets its environment variable (worker processes
    read the environment)."""
    parser.add_argument(
        "--capture-dir",
        default=None,
        help=f"${ENV_DIR}: capture destination (a folder or s3://bucket/prefix)",
    )
    parser.add_argument(
        "--capture-percent", type=float, default=None, help=f"${ENV_PERCENT} (default 100)"
    )
    parser.add_argument(
        "--endpoint-name", default=None, help=f"${ENV_ENDPOINT}: the capture folder's endpoint name"
    )


def apply_flags(args: Any, env: MutableMapping[str, str]) -> None:
    """Put the flags given into `env` once they build a capturer: a bad value raises a
    ValueError naming it and leaves `env` as it was."""
    given = {}
    for flag, name in (
        ("capture_dir", ENV_DIR),
        ("capture_percent", ENV_PERCENT),
        ("endpoint_name", ENV_ENDPOINT),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            given[name] = str(value)
    from_env({**env, **given})
    env.update(given)
