"""Column-wise reading of captured JSON requests with Arrow: a block of capture lines in,
whole columns out, no Python object per value.

`add_block` takes a block of whole JSON Lines (`reader.iter_blocks`) and adds it to a
`monitor.Window` when every line is of the common, clean kind: a readable record whose
request and response are JSON (`{"instances": [{feature: value, ...}]}` and
`{"predictions": [...]}`, encoding other than base64), features only the baseline knows,
numbers where the baseline has numbers and strings (or whole numbers) where it has
categories. Otherwise it changes nothing and says False, and the caller reads the block line
by line (`reader.events_of`); both ways give the same window: the same counts, the same
values, the same category codes.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

if TYPE_CHECKING:
    from workloads.monitoring.monitor import Column, Options, Window

JSON_MEDIA = "application/json"
_PART = pa.struct(
    [
        ("observedContentType", pa.string()),
        ("data", pa.string()),
        ("encoding", pa.string()),
    ]
)
_RECORD = pa.schema(
    [
        ("captureData", pa.struct([("endpointInput", _PART), ("endpointOutput", _PART)])),
        (
            "eventMetadata",
            pa.struct(
                [
                    ("eventId", pa.string()),
                    ("inferenceTime", pa.string()),
                    ("modelVersion", pa.string()),
                ]
            ),
        ),
    ]
)
_OPTIONS = pj.ParseOptions(explicit_schema=_RECORD, unexpected_field_behavior="ignore")
_READ = pj.ReadOptions(block_size=8 << 20, use_threads=False)  # threads: more CPU, no gain here
_NUMBERS = (pa.int64(), pa.float64(), pa.null())


class _Declined(Exception):
    """The block is not of the clean kind: read it line by line."""


def add_block(window: Window, block: bytes, options: Options) -> bool:
    """Add a block of capture lines to `window` column-wise; False (window untouched) when
    the block needs the line-by-line reader."""
    try:
        update = _parse(window, block, options)
    except (_Declined, pa.ArrowException):
        return False
    update()
    return True


def _json_rows(text: pa.Array, n: int) -> pa.Table:
    """Parse `n` JSON documents, one per string (none may hold a line break)."""
    if n == 0:
        return pa.table({})
    if text.null_count or pc.any(pc.match_substring_regex(text, r"[\n\r]")).as_py():
        raise _Declined
    lines = pc.binary_join_element_wise(text, pa.scalar(""), "\n")
    offsets, data = lines.buffers()[1], lines.buffers()[2]
    bounds = np.frombuffer(offsets, dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    table = pj.read_json(io.BytesIO(memoryview(data)[bounds[0] : bounds[-1]]), read_options=_READ)
    if table.num_rows != n:  # an empty document
        raise _Declined
    return table


def _part(records: pa.Table, part: str) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """(present, content type, data, encoding) of `endpointInput` or `endpointOutput`."""
    data = pc.struct_field(records.column("captureData").combine_chunks(), [part])
    fields = [pc.struct_field(data, [k]) for k in ("observedContentType", "data", "encoding")]
    return (pc.is_valid(data), *fields)


def _check_json(present: pa.Array, media: pa.Array, encoding: pa.Array) -> None:
    """Decline unless every present part is JSON text (an encoding other than base64)."""
    media = pc.fill_null(media, JSON_MEDIA)
    text = pc.is_in(pc.fill_null(encoding, "JSON"), pa.array(["JSON", "CSV"]))
    wrong = pc.or_(pc.not_equal(media, JSON_MEDIA), pc.invert(text))
    if pc.any(pc.and_(present, wrong)).as_py():
        raise _Declined


def _times(meta: pa.Array) -> pa.Array:
    text = pc.struct_field(meta, ["inferenceTime"])
    if text.null_count or pc.struct_field(meta, ["eventId"]).null_count:
        raise _Declined
    return pc.cast(text, pa.timestamp("us", tz="UTC"))


def _moment(value: datetime | None) -> pa.Scalar | None:
    if value is None:
        return None
    return pa.scalar(value.astimezone(UTC), type=pa.timestamp("us", tz="UTC"))


def _parse(window: Window, block: bytes, options: Options) -> Any:
    """Everything the block adds, checked before anything is added: returns the update."""
    records = pj.read_json(io.BytesIO(block), read_options=_READ, parse_options=_OPTIONS)
    n = records.num_rows
    meta = records.column("eventMetadata").combine_chunks()
    if n == 0:
        return lambda: None
    if records.column("captureData").null_count or meta.null_count:
        raise _Declined
    times = _times(meta)
    in_present, in_media, in_data, in_encoding = _part(records, "endpointInput")
    out_present, out_media, out_data, out_encoding = _part(records, "endpointOutput")
    if in_present.false_count:
        raise _Declined
    _check_json(in_present, in_media, in_encoding)
    _check_json(out_present, out_media, out_encoding)
    inputs = _json_rows(in_data, n)
    if "instances" not in inputs.column_names:
        raise _Declined
    instances = inputs.column("instances")
    if _nulls_inside(instances):
        raise _Declined
    instances = instances.combine_chunks()
    if instances.null_count or not _is_records(instances.type):
        raise _Declined
    # the response: no body (None) or a body without predictions means a rejected request
    answered = out_present.filter(out_present)
    outputs = _json_rows(out_data.filter(out_present), len(answered))
    predictions = pa.nulls(n, pa.list_(pa.null()))
    if "predictions" in outputs.column_names:
        if _nulls_inside(outputs.column("predictions")):
            raise _Declined
        answers = outputs.column("predictions").combine_chunks()
        mask = out_present.to_numpy(zero_copy_only=False)
        where = pa.array(np.cumsum(mask) - 1, mask=~mask)  # null: no response
        predictions = answers.take(where)
    if not pa.types.is_list(predictions.type):
        raise _Declined
    # `{"predictions": null}` is an unreadable line, no predictions at all a rejected request
    unanswered = pc.and_(out_present, pc.is_null(predictions))
    if pc.any(pc.and_(unanswered, pc.match_substring(out_data, '"predictions"'))).as_py():
        raise _Declined

    # the window, then the model version, as the line-by-line reader checks them
    since, until = _moment(options.since), _moment(options.until)
    inside = pa.array(np.ones(n, dtype=bool))
    if since is not None:
        inside = pc.and_(inside, pc.greater_equal(times, since))
    if until is not None:
        inside = pc.and_(inside, pc.less(times, until))
    versions = pc.struct_field(meta, ["modelVersion"])
    other = pa.array(np.zeros(n, dtype=bool))
    if options.model_version:
        other = pc.and_(
            inside,
            pc.fill_null(pc.not_equal(versions, options.model_version), False),
        )
    kept = pc.and_(inside, pc.invert(other))
    in_len = pc.list_value_length(instances)
    out_len = pc.list_value_length(predictions)
    rejected = pc.and_(kept, pc.fill_null(pc.not_equal(in_len, out_len), True))
    good = pc.and_(kept, pc.invert(rejected))
    rows = pc.list_flatten(instances.filter(good))
    if rows.null_count:  # a null in "instances"
        raise _Declined
    preds = pc.list_flatten(predictions.filter(good))
    features = _features(window, rows)
    prediction = _values(window.prediction, _prediction_values(preds))
    kept_times = times.filter(kept)
    other_counts = pc.value_counts(versions.filter(other)).to_pylist()

    def update() -> None:
        window.read.lines += n
        window.read.outside_window += inside.false_count
        for item in other_counts:
            version = item["values"]
            window.other_versions[version] = window.other_versions.get(version, 0) + item["counts"]
        window.requests += len(kept_times)
        window.rejected += rejected.true_count
        if len(kept_times):
            first, last = pc.min(kept_times).as_py(), pc.max(kept_times).as_py()
            window.first = first if window.first is None else min(window.first, first)
            window.last = last if window.last is None else max(window.last, last)
        for column, add in features:
            add(column)
        prediction(window.prediction)

    return update


def _nulls_inside(lists: pa.ChunkedArray) -> bool:
    """Lists of nothing but nulls (`[null, null]`): Arrow's JSON reader (25.0) builds them
    with too short a values array, which fails or misreads later; the line-by-line reader
    takes them."""
    kind = lists.type
    if not (pa.types.is_list(kind) and pa.types.is_null(kind.value_type)):
        return False
    return any(pc.max(pc.list_value_length(chunk)).as_py() for chunk in lists.chunks if len(chunk))


def _is_records(kind: pa.DataType) -> bool:
    """A list of JSON objects (or a list that is always empty)."""
    return pa.types.is_list(kind) and (
        pa.types.is_struct(kind.value_type) or pa.types.is_null(kind.value_type)
    )


def _features(window: Window, rows: pa.Array) -> list[tuple[Column, Any]]:
    known = set(window.columns)
    fields = rows.type.names if pa.types.is_struct(rows.type) else []
    if set(fields) - known:  # a field the model lacks: counted per record line by line
        raise _Declined
    out = []
    for name, column in window.columns.items():
        values = pc.struct_field(rows, [name]) if name in fields else pa.nulls(len(rows))
        out.append((column, _values(column, values)))
    return out


def _prediction_values(preds: pa.Array) -> pa.Array:
    """`{"label": ...}` objects give their label; plain values are themselves."""
    if pa.types.is_struct(preds.type):
        if "label" not in preds.type.names:
            return pa.nulls(len(preds))
        return pc.struct_field(preds, ["label"])
    return preds


def _values(column: Column, values: pa.Array) -> Any:
    """How `values` extend `column` (as `Column.add` would, value by value)."""
    kind = values.type
    if column.kind == "numeric":
        if kind not in _NUMBERS:
            raise _Declined  # strings, booleans: type errors, counted line by line
        if kind == pa.null():
            array = np.full(len(values), np.nan)
        else:
            array = pc.fill_null(pc.cast(values, pa.float64()), np.nan).to_numpy(
                zero_copy_only=False
            )
        # as `Column.add`: null and NaN are missing, infinity a type error (stored as NaN)
        infinite = np.isinf(array)
        errors = int(infinite.sum())
        if errors:
            array = np.where(infinite, np.nan, array)
        missing = int(np.isnan(array).sum()) - errors
        return lambda col: col.extend(array, missing, errors)
    if pa.types.is_null(kind):
        codes = np.full(len(values), -1, dtype=np.int32)
        return lambda col: col.extend(codes, len(values))
    if kind == pa.int64():
        values = pc.cast(values, pa.string())  # str() of a whole number
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise _Declined  # floats and booleans print differently in Python
    values = pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)
    encoded = pc.dictionary_encode(values)
    keys = encoded.dictionary.to_pylist()
    indices = encoded.indices.to_numpy(zero_copy_only=False) if len(values) else np.zeros(0)
    nulls = values.null_count

    def add(col: Column) -> None:
        mapping = np.array([col.code(k) for k in keys] + [-1], dtype=np.int32)
        idx = np.where(np.isnan(indices), -1, indices).astype(np.int64) if nulls else indices
        col.extend(mapping[np.asarray(idx, dtype=np.int64)], nulls)

    return add
