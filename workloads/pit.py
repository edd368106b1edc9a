"""Point-in-time joins: the engine behind every training set.

For each label row, take the newest feature row of the same entity whose event time is at or
before the label's time, never after (a left join: no such row -> nulls). DuckDB's ASOF JOIN
does the work (sort-merge, multi-threaded, out of core), so it scales to tens of millions of
feature rows within a small memory budget.

Time columns may be datetimes (naive = UTC, or tz-aware), ISO-8601 strings, or epoch seconds
(numbers); all are normalised to UTC before comparing.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

_LABEL_INDEX = "__mlinfra_label_row"
_FEATURE_ROW = "__mlinfra_feature_row"
_ENTITY = "__mlinfra_entity"
_TIME = "__mlinfra_time"
_ROW_SLOTS = 1 << 40  # room for the feature row number below the time in the ASOF key


def to_utc(values: pd.Series, what: str) -> pd.Series:
    """Normalise a time column to naive UTC datetime64[us] (naive input is taken as UTC)."""
    try:
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            out = values.dt.tz_convert("UTC").dt.tz_localize(None)
        elif pd.api.types.is_datetime64_dtype(values.dtype):
            out = values
        elif pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
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
    return out.astype("datetime64[us]")


def _entity_kind(values: pd.Series) -> str:
    if pd.api.types.is_integer_dtype(values.dtype) or pd.api.types.is_float_dtype(values.dtype):
        return "number"
    if pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
        return "string"
    return str(values.dtype)


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
    for frame, name, columns in (
        (labels, "labels", (entity_column, label_time_column)),
        (features, "features", (entity_column, feature_time_column)),
    ):
        for column in columns:
            if column not in frame.columns:
                raise ValueError(
                    f"{name}: no column {column!r}; columns are {', '.join(map(str, frame))}"
                )
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

    label_time = to_utc(labels[label_time_column], f"labels column {label_time_column!r}")
    if label_time.isna().any():
        row = int(np.flatnonzero(label_time.isna().to_numpy())[0])
        raise ValueError(f"labels column {label_time_column!r}: null time at row {row}")
    feature_time = to_utc(features[feature_time_column], f"features column {feature_time_column!r}")

    # Only the join keys go to DuckDB; feature values are gathered afterwards by row number,
    # so wide feature frames are never copied into the engine. The key is (time, row) packed
    # into one HUGEINT: the ASOF match is the newest time at or before the label's, and among
    # rows with that same time the last one - deterministic, in a single sort-merge pass.
    left = pa.table(
        {
            _ENTITY: pa.array(labels[entity_column], from_pandas=True),
            _TIME: pa.array(label_time, from_pandas=True),
            _LABEL_INDEX: pa.array(np.arange(len(labels), dtype=np.int64)),
        }
    )
    right = pa.table(
        {
            _ENTITY: pa.array(features[entity_column], from_pandas=True),
            _TIME: pa.array(feature_time, from_pandas=True),
            _FEATURE_ROW: pa.array(np.arange(len(features), dtype=np.int64)),
        }
    )
    query = f"""
        SELECT l.{_LABEL_INDEX}, f.{_FEATURE_ROW}
        FROM (SELECT {_LABEL_INDEX}, {_ENTITY},
                     epoch_us({_TIME})::HUGEINT * {_ROW_SLOTS} + {_ROW_SLOTS - 1} AS k
              FROM l) AS l
        ASOF LEFT JOIN
             (SELECT {_FEATURE_ROW}, {_ENTITY},
                     epoch_us({_TIME})::HUGEINT * {_ROW_SLOTS} + {_FEATURE_ROW} AS k
              FROM r) AS f
        ON l.{_ENTITY} = f.{_ENTITY} AND l.k >= f.k
        ORDER BY l.{_LABEL_INDEX}
    """
    con = duckdb.connect()
    try:
        con.register("l", left)
        con.register("r", right)
        matched = con.sql(query).to_arrow_table().column(_FEATURE_ROW)
    finally:
        con.close()

    found = matched.is_valid().to_numpy(zero_copy_only=False)
    rows = matched.fill_null(0).to_numpy()
    gathered = features[feature_columns].iloc[rows].reset_index(drop=True)
    if not found.all():
        # Unmatched labels get nulls (ints become floats with NaN, as in any pandas left join).
        gathered = gathered.mask(np.broadcast_to(~found[:, None], gathered.shape))
    return pd.concat([labels.reset_index(drop=True), gathered], axis=1)
