"""Point-in-time joins straight from parquet files: the local offline store's training sets.

The rule and the engines are `workloads.features.pit`'s. Only the entity and time columns of
the files are read for the join; then only the matched feature rows are read back, one row
group at a time, so the feature values are never all in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workloads.features.pit import (
    EpochTimes,
    _engine,
    _entity_kind,
    _epoch,
    _label_keys,
    _label_time,
    _match_rows,
    _one_unit,
    check_key_columns,
    to_utc,
)


def _arrow_kind(type_: pa.DataType) -> str:
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        return "number"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    return str(type_)


def _arrow_epoch(values: pa.ChunkedArray, what: str) -> EpochTimes:
    """A time column read from parquet -> int64 since the epoch, UTC, in us or ns."""
    if pa.types.is_timestamp(values.type):
        # Arrow keeps tz-aware timestamps as UTC instants and naive ones are taken as UTC:
        # either way the stored integers are the instants; only the unit changes.
        unit = "ns" if values.type.unit == "ns" else "us"
        if values.type.unit != unit:  # s and ms: exact in us
            values = values.cast(pa.timestamp(unit, values.type.tz))
        return pa.chunked_array([c.view(pa.int64()) for c in values.chunks], pa.int64()), unit
    return _epoch(to_utc(values.to_pandas(), what, keep_ns=True))  # strings, numbers, dates


def point_in_time_join_parquet(
    labels: pd.DataFrame,
    files: Sequence[str | Path],
    *,
    entity_column: str,
    label_time_column: str,
    feature_entity_column: str,
    feature_time_column: str,
    schema: pa.Schema | None = None,
) -> pd.DataFrame:
    """`point_in_time_join` with the feature rows read straight from parquet `files`.

    The files are one table in the order given (so on a tie in entity and time a row of a later
    file wins, as a later row of one file does). Only the entity and time columns are read for
    the join; the feature columns are then read one row group at a time and only the rows that
    matched are kept, so the feature values are never all in memory at once. `schema` (the
    feature table's columns and types) sets which columns come back and their types; without
    it, every column of the first file but the entity and time; a file without one of them
    (written before it was declared) gives nulls there. Entity and time columns are named as
    in the files (`feature_*`) and in the labels; the features' do not come back.
    """
    files = [Path(f) for f in files]
    if schema is None:
        if not files:
            raise ValueError("features: no parquet files and no schema")
        schema = pq.read_schema(files[0])
    for column in (feature_entity_column, feature_time_column):
        if column not in schema.names:
            raise ValueError(
                f"features: no column {column!r}; columns are {', '.join(schema.names)}"
            )
    check_key_columns(labels, "labels", (entity_column, label_time_column))
    value_schema = pa.schema(
        [f for f in schema if f.name not in (feature_entity_column, feature_time_column)]
    )
    clashes = sorted(set(value_schema.names) & set(map(str, labels.columns)))
    if clashes:
        raise ValueError(f"feature columns clash with label columns: {', '.join(clashes)}")
    left_kind = _entity_kind(labels[entity_column])
    right_kind = _arrow_kind(schema.field(feature_entity_column).type)
    if left_kind != right_kind:
        raise ValueError(
            f"entity column {entity_column!r}: labels hold {left_kind} ids "
            f"({labels[entity_column].dtype}), features hold {right_kind} ids "
            f"({schema.field(feature_entity_column).type})"
        )
    label_time = _label_time(labels, label_time_column)

    keys = [feature_entity_column, feature_time_column]
    key_schema = pa.schema([schema.field(c) for c in keys])
    parts = [_read_columns(f, key_schema) for f in files]
    table = pa.concat_tables(parts) if parts else key_schema.empty_table()
    del parts
    entity = table.column(feature_entity_column).combine_chunks()
    label_ints, feature_ints = _one_unit(
        _epoch(label_time),
        _arrow_epoch(table.column(feature_time_column), f"features column {feature_time_column!r}"),
    )
    del table
    rows = _match_rows(_label_keys(labels, entity_column, label_ints), entity, feature_ints)
    del entity, feature_ints
    gathered = _gather(files, rows, value_schema)
    return pd.concat([labels.reset_index(drop=True), gathered.to_pandas()], axis=1)


def _gather(files: list[Path], rows: np.ndarray, schema: pa.Schema) -> pa.Table:
    """The feature rows `rows` (-1: none, a null row) of the files, one row group at a time
    (decoded by polars when it is the engine: it decodes parquet with less CPU)."""
    found = np.flatnonzero(rows >= 0)
    order = np.argsort(rows[found], kind="stable")
    wanted = rows[found][order]  # ascending row numbers; a row may be wanted by many labels
    read = _polars_row_groups if wanted.size and _polars_reads() else _arrow_row_groups
    pieces = []
    offset = 0
    for path in files:
        # A file written before a feature was declared lacks its column: nulls there.
        present = [c for c in schema.names if c in pq.read_schema(path).names]
        for start, size, rows_of in read(path, present):
            lo, hi = np.searchsorted(wanted, [offset + start, offset + start + size])
            if hi > lo:
                chunk = rows_of().take(wanted[lo:hi] - offset - start)
                pieces.append(_as_schema(chunk, schema, path))
        offset += pq.ParquetFile(path).metadata.num_rows
    taken = pa.concat_tables(pieces) if pieces else schema.empty_table()
    # taken[i] belongs to label found[order[i]]: scatter back into label order, nulls elsewhere.
    position = np.full(len(rows), -1, dtype=np.int64)
    position[found[order]] = np.arange(len(order), dtype=np.int64)
    missing = position < 0
    return taken.take(pa.array(position, mask=missing if missing.any() else None))


def _polars_reads() -> bool:
    """Whether polars reads the parquet files: when it is the engine (it decodes with less
    CPU than pyarrow); the row budget does not matter, as reads go a row group at a time."""
    return _engine(0) == "polars"


def _read_columns(path: Path, schema: pa.Schema) -> pa.Table:
    """The columns of `schema` (the join keys) from one parquet file, as its types."""
    names = pq.read_schema(path).names
    for column in schema.names:
        if column not in names:
            raise ValueError(f"{path}: no column {column!r}; columns are {', '.join(names)}")
    if _polars_reads():
        import polars as pl

        return _as_schema(pl.read_parquet(path, columns=schema.names).to_arrow(), schema, path)
    return _as_schema(pq.read_table(path, columns=schema.names), schema, path)


def _as_schema(table: pa.Table, schema: pa.Schema, path: Path) -> pa.Table:
    """`table`'s columns cast to `schema`'s types (nulls for a column it lacks); a column that
    does not convert is an error naming the file and the column."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(
                f"{path}: column {field.name!r} ({table.schema.field(field.name).type}) does "
                f"not convert to {field.type}, the type of the schema or first file: {exc}"
            ) from None
    return pa.table(columns, schema=schema)


RowGroups = Iterator[tuple[int, int, Callable[[], pa.Table]]]


def _arrow_row_groups(path: Path, columns: list[str]) -> RowGroups:
    """(first row, rows, a reader of its `columns`) for each row group of a parquet file."""
    parquet = pq.ParquetFile(path)
    start = 0
    for group in range(parquet.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        yield start, size, partial(parquet.read_row_group, group, columns, use_threads=False)
        start += size


def _polars_row_groups(path: Path, columns: list[str]) -> RowGroups:
    import polars as pl

    scan = pl.scan_parquet(path).select(columns)
    for start, size, _ in _arrow_row_groups(path, columns):
        yield start, size, lambda s=start, n=size: scan.slice(s, n).collect().to_arrow()
