"""Point-in-time joins: the engine behind every training set.

For each label row, take the newest feature row of the same entity whose event time is at or
before the label's time, never after (a left join: no such row -> nulls). Only the join keys
(entity, time, row number) go to an engine; the feature values are gathered afterwards by row
number. The engine: polars' `join_asof` (in memory, about 60 bytes a feature row, ties resolved
by its stable sort in one pass) when polars is installed (the `features` extra) and the feature
rows number at most `MLINFRA_PIT_IN_MEMORY_ROWS`; else DuckDB's ASOF JOIN (sort-merge, out of
core: it spills past `MLINFRA_PIT_MEMORY_LIMIT`), so the join's memory stays bounded at any
scale. Both give the same answer (tests/test_pit.py runs every case on both).
`workloads.features.pit_files` joins straight from parquet files (the local offline store).

Time columns may be datetimes (naive = UTC, or tz-aware), ISO-8601 strings, or epoch seconds
(numbers); all are normalised to UTC before comparing, as whole microseconds, or nanoseconds
when both sides hold them (a feature row 1 ns after its label is never taken).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
import pyarrow as pa

_LABEL_INDEX = "__mlinfra_label_row"
_FEATURE_ROW = "__mlinfra_feature_row"
_ENTITY = "__mlinfra_entity"
_TIME = "__mlinfra_time"
# DuckDB's working memory for one join; past it, its sort spills to the temp folder.
MEMORY_LIMIT = os.environ.get("MLINFRA_PIT_MEMORY_LIMIT", "512MB")
# Up to this many feature rows the keys are joined in memory by polars (~1.2 GB at 20M).
# Read when a join runs, so a malformed value is an error naming the variable, not an import crash.
IN_MEMORY_ROWS: int | str = os.environ.get("MLINFRA_PIT_IN_MEMORY_ROWS", "20e6")
# "auto" (as above), or "polars" / "duckdb" to force one.
ENGINE = os.environ.get("MLINFRA_PIT_ENGINE", "auto")


def to_utc(values: pd.Series, what: str, *, keep_ns: bool = False) -> pd.Series:
    """Normalise a time column to naive UTC datetime64[us] (naive input is taken as UTC);
    with `keep_ns`, datetime64[ns] when the column holds nanoseconds (so that two times in
    one microsecond still compare as they are)."""
    try:
        if pd.api.types.is_datetime64_any_dtype(values.dtype):
            unit = "ns" if keep_ns and values.dt.unit == "ns" else "us"
            # tz-aware datetimes are stored as UTC instants: this is a view, not a copy.
            return pd.Series(values.to_numpy(dtype=f"datetime64[{unit}]"), index=values.index)
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
            values.dtype
        ):
            # Whole microseconds first: float seconds times 1e9 would smear the last digits.
            micros = np.round(values.astype("float64") * 1e6)
            out = pd.Series(pd.to_datetime(micros, unit="us"), index=values.index)
        else:
            out = pd.to_datetime(values, utc=True, format="ISO8601").dt.tz_localize(None)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(
            f"{what}: not a time column (datetimes, ISO-8601 strings or epoch seconds): {exc}"
        ) from None
    return out.astype("datetime64[ns]" if keep_ns and out.dt.unit == "ns" else "datetime64[us]")


# Integer times since the epoch and their unit, "us" or "ns" (null: no time).
EpochTimes = tuple[pa.Array, str]


def _epoch(times: pd.Series) -> EpochTimes:
    """Naive UTC datetime64[us] or [ns] -> int64 since the epoch in that unit (NaT -> null)."""
    unit = "ns" if times.dtype == "datetime64[ns]" else "us"
    values = times.to_numpy(dtype=f"datetime64[{unit}]")
    missing = np.isnat(values)
    # Without nulls the int64 view goes to Arrow without a copy.
    return pa.array(values.view(np.int64), mask=missing if missing.any() else None), unit


def _one_unit(label: EpochTimes, feature: EpochTimes) -> tuple[pa.Array, pa.Array]:
    """Label and feature times in one unit, so that `feature <= label` holds exactly as for
    the instants: nanoseconds when both sides have them; else microseconds, the label times
    rounded down and the feature times up (exact, as the other side holds whole microseconds:
    a feature row 1 ns after a label time in the same microsecond stays after it)."""
    (label_values, label_unit), (feature_values, feature_unit) = label, feature
    if label_unit == "ns" and feature_unit != "ns":
        label_values = _ns_to_us(label_values, np.floor_divide)
    if feature_unit == "ns" and label_unit != "ns":
        feature_values = _ns_to_us(feature_values, lambda v, d: -np.floor_divide(-v, d))
    return label_values, feature_values


def _ns_to_us(values: pa.Array | pa.ChunkedArray, divide) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    ints = values.fill_null(0).to_numpy()
    missing = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
    return pa.array(divide(ints, 1000), mask=missing)


def check_key_columns(frame: pd.DataFrame, name: str, columns: tuple[str, ...]) -> None:
    """Each key column is in `frame` exactly once."""
    for column in columns:
        count = int((frame.columns == column).sum())
        if count == 0:
            raise ValueError(
                f"{name}: no column {column!r}; columns are {', '.join(map(str, frame))}"
            )
        if count > 1:
            raise ValueError(f"{name}: column {column!r} appears {count} times")


def _entity_array(values: pd.Series, what: str) -> pa.Array:
    """Entity ids -> Arrow: one type of plain values (numbers, strings), never lists."""
    try:
        array = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"{what}: entity ids of mixed types ({exc})") from None
    if pa.types.is_nested(array.type):
        raise ValueError(f"{what}: entity ids are {array.type} values; use numbers or strings")
    return array


def _entity_kind(values: pd.Series) -> str:
    if pd.api.types.is_integer_dtype(values.dtype) or pd.api.types.is_float_dtype(values.dtype):
        return "number"
    if pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
        return "string"
    return str(values.dtype)


def _label_time(labels: pd.DataFrame, label_time_column: str) -> pd.Series:
    what = f"labels column {label_time_column!r}"
    label_time = to_utc(labels[label_time_column], what, keep_ns=True)
    if label_time.isna().any():
        row = int(np.flatnonzero(label_time.isna().to_numpy())[0])
        raise ValueError(f"labels column {label_time_column!r}: null time at row {row}")
    return label_time


def _label_keys(labels: pd.DataFrame, entity_column: str, label_time: pa.Array) -> pa.Table:
    return pa.table(
        {
            _ENTITY: _entity_array(labels[entity_column], f"labels column {entity_column!r}"),
            _TIME: label_time,
            _LABEL_INDEX: pa.array(np.arange(len(labels), dtype=np.int64)),
        }
    )


def _engine(feature_rows: int) -> str:
    if ENGINE not in ("auto", "polars", "duckdb"):
        raise ValueError(f"MLINFRA_PIT_ENGINE={ENGINE!r}: choose auto, polars or duckdb")
    if ENGINE != "auto":
        return ENGINE
    try:
        limit = int(float(IN_MEMORY_ROWS))
    except ValueError:
        raise ValueError(
            f"MLINFRA_PIT_IN_MEMORY_ROWS={IN_MEMORY_ROWS!r}: a number of feature rows, e.g. 20e6"
        ) from None
    if feature_rows > limit:
        return "duckdb"
    try:
        import polars  # noqa: F401
    except ImportError:
        return "duckdb"
    return "polars"


def _match_rows(left: pa.Table, entity: pa.Array, micros: pa.Array) -> np.ndarray:
    """For each label key row, the number of its feature row (-1: none), feature rows being
    numbered in the order given (a later row wins a tie on entity and time)."""
    if _engine(len(entity)) == "polars":
        result = _match_polars(left, entity, micros)
    else:
        result = _match_duckdb(left, entity, micros)
    # Back into label order without a sort: scatter each match to its label's position.
    rows = np.full(len(left), -1, dtype=np.int64)
    matched = result.column(_FEATURE_ROW)
    rows[result.column(_LABEL_INDEX).to_numpy()] = matched.fill_null(-1).to_numpy()
    return rows


def _match_polars(left: pa.Table, entity: pa.Array, micros: pa.Array) -> pa.Table:
    import polars as pl

    labels = pl.LazyFrame(pl.from_arrow(left))
    features = pl.LazyFrame(pl.from_arrow(pa.table({_ENTITY: entity, _TIME: micros})))
    features = features.with_row_index(_FEATURE_ROW)  # numbered before any row is dropped
    if entity.null_count or micros.null_count:
        features = features.drop_nulls([_ENTITY, _TIME])  # such a row matches nothing
    kinds = {labels.collect_schema()[_ENTITY], features.collect_schema()[_ENTITY]}
    if len(kinds) > 1:  # int and float ids, or two string types: compare as one type
        common = pl.String if pl.String in kinds else pl.Float64
        labels = labels.with_columns(pl.col(_ENTITY).cast(common))
        features = features.with_columns(pl.col(_ENTITY).cast(common))
    # join_asof wants both sides sorted by time (within each entity). The stable sort keeps
    # the feature rows' order among equal times and "backward" takes the last row at or
    # before the label time, so the last written row wins a tie in the same pass.
    joined = labels.sort(_TIME).join_asof(
        features.sort(_TIME, maintain_order=True),
        on=_TIME,
        by=_ENTITY,
        strategy="backward",
        check_sortedness=False,  # sorted just above; polars cannot check it per entity
    )
    out = joined.select(_LABEL_INDEX, pl.col(_FEATURE_ROW).cast(pl.Int64)).collect()
    return out.to_arrow()


def _match_duckdb(left: pa.Table, entity: pa.Array, micros: pa.Array) -> pa.Table:
    import duckdb

    right = pa.table(
        {
            _ENTITY: entity,
            _TIME: micros,
            _FEATURE_ROW: pa.array(np.arange(len(entity), dtype=np.int64)),
        }
    )
    # The ASOF JOIN finds each label's newest feature time at or before its own. Several rows
    # may share that entity and time; the last one (highest row) is taken, so the answer is
    # deterministic - resolved only for the matched (entity, time) pairs, a cheap hash join.
    query = f"""
        WITH m AS MATERIALIZED (
            SELECT l.{_LABEL_INDEX}, l.{_ENTITY}, f.{_TIME}
            FROM l ASOF LEFT JOIN r AS f
            ON l.{_ENTITY} = f.{_ENTITY} AND l.{_TIME} >= f.{_TIME}
        ),
        w AS (
            SELECT r.{_ENTITY}, r.{_TIME}, max(r.{_FEATURE_ROW}) AS {_FEATURE_ROW}
            FROM r SEMI JOIN m ON r.{_ENTITY} = m.{_ENTITY} AND r.{_TIME} = m.{_TIME}
            GROUP BY r.{_ENTITY}, r.{_TIME}
        )
        SELECT m.{_LABEL_INDEX}, w.{_FEATURE_ROW}
        FROM m LEFT JOIN w ON m.{_ENTITY} = w.{_ENTITY} AND m.{_TIME} = w.{_TIME}
    """
    config = {
        "memory_limit": MEMORY_LIMIT,
        "temp_directory": tempfile.gettempdir(),
        "preserve_insertion_order": False,  # the rows are put back in order after
    }
    con = duckdb.connect(config=config)
    try:
        con.register("l", left)
        con.register("r", right)
        return con.sql(query).to_arrow_table()
    finally:
        con.close()


def point_in_time_join(
    labels: pd.DataFrame,
    features: pd.DataFrame,
    *,
    entity_column: str,
    label_time_column: str,
    feature_time_column: str,
) -> pd.DataFrame:
    """Left-join onto `labels` the newest `features` row per entity at or before the label time.

    Returns the label columns (in their order, the rows in the labels' order, a fresh index)
    followed by every feature column except the entity and the feature time. When several
    feature rows share an entity and an event time, the last one in `features` wins (the
    latest written). A feature column that is also a label column is an error.
    """
    check_key_columns(labels, "labels", (entity_column, label_time_column))
    check_key_columns(features, "features", (entity_column, feature_time_column))
    feature_columns = [c for c in features.columns if c not in (entity_column, feature_time_column)]
    clashes = sorted(set(feature_columns) & set(labels.columns))
    if clashes:
        raise ValueError(f"feature columns clash with label columns: {', '.join(clashes)}")
    left_kind, right_kind = (
        _entity_kind(labels[entity_column]),
        _entity_kind(features[entity_column]),
    )
    if left_kind != right_kind:
        raise ValueError(
            f"entity column {entity_column!r}: labels hold {left_kind} ids "
            f"({labels[entity_column].dtype}), features hold {right_kind} ids "
            f"({features[entity_column].dtype})"
        )

    label_time = _label_time(labels, label_time_column)
    what = f"features column {feature_time_column!r}"
    feature_time = to_utc(features[feature_time_column], what, keep_ns=True)
    label_ints, feature_ints = _one_unit(_epoch(label_time), _epoch(feature_time))

    # Only the join keys go to DuckDB; feature values are gathered afterwards by row number,
    # so wide feature frames are never copied into the engine. Times are int64 (us or ns).
    rows = _match_rows(
        _label_keys(labels, entity_column, label_ints),
        _entity_array(features[entity_column], f"features column {entity_column!r}"),
        feature_ints,
    )
    found = rows >= 0
    rows[~found] = 0
    if len(features) == 0:  # no feature rows at all: every value null
        gathered = features[feature_columns].reset_index(drop=True).reindex(range(len(labels)))
    else:
        # Column by column: one take per column, nulls only where a label found no row
        # (ints become floats with NaN, as in any pandas left join).
        missing = None if found.all() else ~found
        columns = {}
        for column in feature_columns:
            values = features[column].iloc[rows].reset_index(drop=True)
            columns[column] = values if missing is None else values.mask(missing)
        gathered = pd.DataFrame(columns, index=pd.RangeIndex(len(labels)))
    return pd.concat([labels.reset_index(drop=True), gathered], axis=1)
