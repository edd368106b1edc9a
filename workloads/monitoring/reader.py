"""Reading captured traffic and ground truth, from `file://` (or a plain path) and `s3://`.

Captures are SageMaker data-capture JSON Lines, whichever backend served them:

    {"captureData": {"endpointInput": {"observedContentType": "text/csv", "mode": "INPUT",
                                       "data": "...", "encoding": "CSV"},
                     "endpointOutput": {... "mode": "OUTPUT" ...}},
     "eventMetadata": {"eventId": "...", "inferenceId": "...", "inferenceTime": "..."},
     "eventVersion": "0"}

under `<destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/*.jsonl`. Files are streamed in
blocks of whole lines (`iter_blocks`), never loaded whole; files whose hour folder lies
outside the window are skipped unread. A line that cannot be read is counted and skipped.
The monitor parses clean blocks column-wise (`columnar`), the rest line by line here.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson

HOUR_PATH = re.compile(r"(\d{4})/(\d{2})/(\d{2})/(\d{2})/[^/]*$")
ENCODINGS = ("CSV", "JSON", "BASE64")


class CaptureError(ValueError):
    """A capture or ground-truth location that cannot be read; the message says which."""


@dataclass
class Event:
    """One captured request: its rows, the response's predictions, when and which."""

    key: str  # the inference id when the caller sent one, else the event id
    time: datetime
    content_type: str
    inputs: list  # records (dicts) or CSV rows (lists)
    predictions: list | None  # None: the request was rejected (an error body)
    model_version: str | None = None


@dataclass
class ReadStats:
    files: int = 0
    lines: int = 0
    unreadable: int = 0
    outside_window: int = 0
    errors: list[str] = field(default_factory=list)  # the first few reasons, for the report

    def bad(self, where: str, why: str) -> None:
        self.unreadable += 1
        if len(self.errors) < 5:
            self.errors.append(f"{where}: {why}")


def _split(uri: str) -> tuple[str, str, str]:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return "s3", parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme in ("", "file"):
        return "file", "", parsed.path if parsed.scheme else uri
    raise CaptureError(
        f"{uri}: unsupported location scheme {parsed.scheme!r}: use file:// or s3://"
    )


def _in_window(name: str, since: datetime | None, until: datetime | None) -> bool:
    match = HOUR_PATH.search(name)
    if not match:
        return True
    y, m, d, h = (int(g) for g in match.groups())
    hour = datetime(y, m, d, h, tzinfo=UTC)
    if since is not None and hour + timedelta(hours=1) <= since:
        return False
    return until is None or hour < until


BLOCK_BYTES = 16 << 20  # what `iter_blocks` reads at a time


def _sources(
    uri: str,
    since: datetime | None,
    until: datetime | None,
    stats: ReadStats | None,
) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(name, open) of every `.jsonl` file under `uri` in the window, in name order (time
    order); `open()` gives a binary file object (a local file or an S3 body)."""
    scheme, bucket, prefix = _split(uri)
    if scheme == "file":
        root = Path(prefix)
        if not root.exists():
            raise CaptureError(f"{uri}: no such file or folder")
        found = [root] if root.is_file() else root.rglob("*.jsonl")
        files = sorted(p for p in found if p.is_file())  # not a folder named x.jsonl
        for path in files:
            if not _in_window(path.as_posix(), since, until):
                continue
            if stats:
                stats.files += 1
            yield path.name, partial(path.open, "rb")
        return
    import boto3

    s3 = boto3.client("s3")
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".jsonl")]
    for key in sorted(keys):
        if not _in_window(key, since, until):
            continue
        if stats:
            stats.files += 1
        yield key, partial(_s3_body, s3, bucket, key)


def _s3_body(s3: Any, bucket: str, key: str) -> Any:
    return s3.get_object(Bucket=bucket, Key=key)["Body"]


def iter_lines(
    uri: str,
    since: datetime | None = None,
    until: datetime | None = None,
    stats: ReadStats | None = None,
) -> Iterator[tuple[str, bytes]]:
    """(file name, line) of every `.jsonl` file under `uri`, in name order (time order)."""
    for name, block in iter_blocks(uri, since, until, stats):
        for line in block.split(b"\n"):
            yield name, line


def iter_blocks(
    uri: str,
    since: datetime | None = None,
    until: datetime | None = None,
    stats: ReadStats | None = None,
    size: int = BLOCK_BYTES,
) -> Iterator[tuple[str, bytes]]:
    """(file name, block) of every `.jsonl` file under `uri`: blocks of whole lines of
    about `size` bytes (a longer line is one block), streamed, never a whole file."""
    for name, opener in _sources(uri, since, until, stats):
        try:
            body = opener()
        except OSError as exc:  # a local file: permissions, a broken link
            raise CaptureError(f"{name}: cannot read it: {exc.strerror or exc}") from None
        try:
            rest = b""
            while chunk := _read(body, size, name):
                chunk = rest + chunk if rest else chunk
                cut = chunk.rfind(b"\n") + 1
                rest = chunk[cut:]
                if cut:
                    yield name, chunk[:cut]
            if rest:
                yield name, rest + b"\n"
        finally:
            body.close()


def _read(body: Any, size: int, name: str) -> bytes:
    try:
        return body.read(size)
    except OSError as exc:
        raise CaptureError(f"{name}: cannot read it: {exc.strerror or exc}") from None


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is {type(value).__name__}, expected an object")
    return value


def _text(part: dict, key: str, where: str, default: str) -> str:
    value = part.get(key)
    if value is None:  # absent or null: the default, as the column-wise reader takes it
        return default
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key} is {type(value).__name__}, expected a string")
    return value


def _event_key(value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"eventMetadata.eventId {value!r}: expected a string")
    return str(value)


def loads(body: bytes | str) -> Any:
    """JSON, as orjson reads it; failing that as Python's `json` does, which also takes the
    NaN and Infinity that Python clients send (`json.dumps` writes them)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise ValueError(f"not JSON: {exc}") from None


def decode_data(part: dict, where: str = "data") -> bytes:
    data = part.get("data", "")
    encoding = part.get("encoding")
    if not isinstance(data, str):
        raise ValueError(f"{where}.data is {type(data).__name__}, expected a string")
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"{where}.encoding {encoding!r}: expected one of {list(ENCODINGS)}")
    if encoding == "BASE64":
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}.data is not valid base64") from None
    return data.encode()


def parse_payload(content_type: str, body: bytes) -> list:
    """Request rows: CSV rows (lists of strings) or JSON `{"instances": [...]}` records; any
    other body (an image) is one input, its bytes."""
    media = content_type.split(";")[0].strip().lower()
    if media == "text/csv":
        return [row for row in csv.reader(io.StringIO(body.decode())) if row]
    if media != "application/json" and not media.endswith("+json"):
        return [body]
    doc = loads(body)
    if isinstance(doc, dict) and isinstance(doc.get("instances"), list):
        return doc["instances"]
    raise ValueError(f'unexpected {media} payload: expected {{"instances": [...]}}')


def parse_predictions(content_type: str, body: bytes) -> list | None:
    media = content_type.split(";")[0].strip().lower()
    if media == "text/csv":
        return [row[0] if len(row) == 1 else row for row in csv.reader(io.StringIO(body.decode()))]
    doc = loads(body)
    if isinstance(doc, dict) and "predictions" in doc:
        if not isinstance(doc["predictions"], list):
            kind = type(doc["predictions"]).__name__
            raise ValueError(f"response predictions is {kind}, expected a list")
        return doc["predictions"]
    return None  # an error body: the request was rejected


def parse_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"inferenceTime {text!r}: expected an ISO time string")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_event(line: bytes) -> Event:
    doc = _object(loads(line), "the line")
    data = _object(doc["captureData"], "captureData")
    meta = _object(doc["eventMetadata"], "eventMetadata")
    inp = _object(data["endpointInput"], "captureData.endpointInput")
    out = data.get("endpointOutput")
    content_type = _text(inp, "observedContentType", "endpointInput", "application/json")
    predictions = None
    if out is not None:
        out = _object(out, "captureData.endpointOutput")
        out_type = _text(out, "observedContentType", "endpointOutput", "application/json")
        predictions = parse_predictions(out_type, decode_data(out, "endpointOutput"))
    body = decode_data(inp, "endpointInput")
    try:
        inputs = parse_payload(content_type, body)
    except (ValueError, csv.Error):
        if predictions is not None:
            raise
        inputs = []  # a request the server refused (4xx) because it could not read it
    key = _event_key(meta.get("inferenceId") or meta["eventId"])
    version = meta.get("modelVersion")
    return Event(
        key=key,
        time=parse_time(meta["inferenceTime"]),
        content_type=content_type,
        inputs=inputs,
        predictions=predictions,
        model_version=None if version is None else str(version),
    )


def read_events(
    uri: str, since: datetime | None, until: datetime | None, stats: ReadStats
) -> Iterator[Event]:
    return events_of(iter_lines(uri, since, until, stats), since, until, stats)


def events_of(
    lines: Iterable[tuple[str, bytes]],
    since: datetime | None,
    until: datetime | None,
    stats: ReadStats,
) -> Iterator[Event]:
    """The events of (file name, line) pairs in the window; bad lines counted, skipped."""
    for name, line in lines:
        if not line.strip():
            continue
        stats.lines += 1
        try:
            event = parse_event(line)
        except (ValueError, KeyError, TypeError, csv.Error) as exc:
            stats.bad(name, f"{type(exc).__name__}: {exc}"[:200])
            continue
        if (since is not None and event.time < since) or (
            until is not None and event.time >= until
        ):
            stats.outside_window += 1
            continue
        yield event


def read_ground_truth(uri: str, stats: ReadStats) -> dict[str, list]:
    """Labels by inference id (or event id): `{"groundTruthData": {"data": ..., "encoding":
    "CSV" | "JSON" | "BASE64"}, "eventMetadata": {"eventId": ...}, "eventVersion": "0"}`."""
    labels: dict[str, list] = {}
    for name, line in iter_lines(uri, stats=stats):
        if not line.strip():
            continue
        stats.lines += 1
        try:
            doc = _object(loads(line), "the line")
            part = _object(doc["groundTruthData"], "groundTruthData")
            key = _event_key(_object(doc["eventMetadata"], "eventMetadata")["eventId"])
            body = decode_data(part, "groundTruthData")
            if part.get("encoding") == "JSON":
                value: Any = loads(body)
                values = value if isinstance(value, list) else [value]
            else:
                values = [_scalar(v) for row in csv.reader(io.StringIO(body.decode())) for v in row]
        except (ValueError, KeyError, TypeError, csv.Error) as exc:
            stats.bad(name, f"ground truth: {type(exc).__name__}: {exc}"[:200])
            continue
        labels[key] = values
    return labels


def _scalar(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text
