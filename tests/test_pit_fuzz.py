"""Fault and fuzz probes of the point-in-time joins (`pit.point_in_time_join` in memory and
`pit_files.point_in_time_join_parquet` over parquet files), on both engines.

The rule: each label takes the newest feature row of its entity at or before its time (a tie
on entity and time: the later written row), never a row after it, however the times are
written: nanoseconds (two times in one microsecond), before 1970, far in the future, null,
tz-aware in any zone or naive (UTC). Bounded, derandomized Hypothesis draws
(`fuzz_support.fuzz_settings`, `conftest.fixed_constant_pool`) are compared with a brute-force
reference; then a table of bad inputs that must be a `ValueError` naming the column.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz_support import fuzz_settings
from tests.test_pit import join
from workloads.features import pit
from workloads.features.pit_files import point_in_time_join_parquet

pytestmark = pytest.mark.usefixtures("fixed_constant_pool")  # conftest

ENGINES = ("polars", "duckdb")
# Where the drawn times cluster (ns since the epoch), and whether pandas' ns range holds them.
BASES = {
    "2024": (pd.Timestamp("2024-03-01").value, "ns"),
    "1960": (pd.Timestamp("1960-03-01").value, "ns"),
    "3000": (int(np.datetime64("3000-01-01", "us").astype(np.int64)) * 1000, "us"),
}
ZONES = ("UTC", "Asia/Kolkata", "America/New_York")


def join_parquet(labels: pd.DataFrame, files: list[Path]) -> pd.DataFrame:
    return point_in_time_join_parquet(
        labels,
        files,
        entity_column="id",
        label_time_column="label_time",
        feature_entity_column="id",
        feature_time_column="event_time",
    )


def reference(
    label_entities: list, label_ns: list[int], feature_entities: list, feature_ns: list
) -> list[int]:
    """For each label, the feature row taken by the rule (-1: none), by brute force."""
    out = []
    for entity, time in zip(label_entities, label_ns, strict=True):
        best = -1
        for row, (f_entity, f_time) in enumerate(zip(feature_entities, feature_ns, strict=True)):
            if entity is None or f_entity is None or f_time is None or f_time > time:
                continue
            if entity != f_entity:
                continue
            if best < 0 or f_time >= feature_ns[best]:
                best = row
        out.append(best)
    return out


def time_column(ns: list, unit: str, how: tuple[str | None, bool]) -> pd.Series:
    """Times (ns since the epoch, None: NaT) as datetime64[unit], in a zone (None: naive),
    or as their ISO-8601 text (with the zone's offset; None where null)."""
    zone, text = how
    raw = np.array(
        [np.iinfo(np.int64).min if v is None else v // 1000 ** (unit == "us") for v in ns]
    )
    values = pd.Series(raw.view(f"datetime64[{unit}]"))
    if zone is not None:
        values = values.dt.tz_localize("UTC").dt.tz_convert(zone)
    if text:
        return pd.Series([None if pd.isna(t) else t.isoformat() for t in values], dtype=object)
    return values


@st.composite
def cases(draw):
    """(entity kind, time unit, labels, features, number of files): labels and feature rows
    as (entities, ns times, zone), the times a few steps apart so that ties, neighbours in
    one microsecond and duplicates come up often; about one id or feature time in ten null."""
    kind = draw(st.sampled_from(["int", "float", "str"]))
    base, unit = BASES[draw(st.sampled_from(sorted(BASES)))]
    step = 1000 if unit == "us" else draw(st.sampled_from([1, 1000]))  # 1: same-us neighbours
    steps = [None, *range(-4, 5)]
    n_features, n_labels = draw(st.integers(0, 12)), draw(st.integers(0, 6))
    entity = st.sampled_from([0, 1, 0, 1, 2, 0, 1, 0, 1, None])

    def times(n: int, nulls: bool) -> list:
        picked = draw(st.lists(st.sampled_from(steps[not nulls :]), min_size=n, max_size=n))
        return [None if k is None else base + k * step for k in picked]

    zones = st.tuples(st.one_of(st.none(), st.sampled_from(ZONES)), st.booleans())
    if unit == "us":  # far future: naive datetime64[us] only
        zones = st.just((None, False))
    labels = (
        draw(st.lists(entity, min_size=n_labels, max_size=n_labels)),
        times(n_labels, nulls=False),
        draw(zones),
    )
    features = (
        draw(st.lists(entity, min_size=n_features, max_size=n_features)),
        times(n_features, nulls=True),
        draw(zones),
    )
    return kind, unit, labels, features, draw(st.integers(1, 3))


def ids(values: list, kind: str) -> pd.Series:
    """Entity ids of `kind`: strings, floats, or ints (floats once one is null)."""
    if kind == "str":
        return pd.Series([None if v is None else f"e{v}" for v in values], dtype=object)
    if kind == "float" or None in values:
        return pd.Series([np.nan if v is None else float(v) for v in values], dtype="float64")
    return pd.Series(values, dtype="int64")


def frames(case) -> tuple[pd.DataFrame, pd.DataFrame, list[int]]:
    kind, unit, (l_entity, l_ns, l_zone), (f_entity, f_ns, f_zone), _ = case
    labels = pd.DataFrame(
        {"id": ids(l_entity, kind), "label_time": time_column(l_ns, unit, l_zone)}
    )
    features = pd.DataFrame(
        {
            "id": ids(f_entity, kind),
            "event_time": time_column(f_ns, unit, f_zone),
            "row": np.arange(len(f_ns), dtype="float64"),
            "empty": pd.Series([None] * len(f_ns), dtype="float64"),
        }
    )
    return labels, features, reference(l_entity, l_ns, f_entity, f_ns)


def check(out: pd.DataFrame, labels: pd.DataFrame, expected: list[int], how: str) -> None:
    assert list(out.columns) == ["id", "label_time", "row", "empty"], how
    pd.testing.assert_frame_equal(out[["id", "label_time"]], labels, obj=how)
    got = [-1 if np.isnan(v) else int(v) for v in out["row"].astype("float64")]
    assert got == expected, how
    assert out["empty"].isna().all(), how


@fuzz_settings(max_examples=60)
@given(case=cases())
def test_both_joins_take_the_newest_row_at_or_before_the_label_time(case, tmp_path_factory):
    labels, features, expected = frames(case)
    folder = tmp_path_factory.mktemp("pit")
    schema = pa.Schema.from_pandas(features, preserve_index=False)
    if features["id"].dtype == object:  # all null or none at all: still a string column
        schema = schema.set(0, pa.field("id", pa.string()))
    files = []
    for part, chunk in enumerate(np.array_split(np.arange(len(features)), case[-1])):
        path = folder / f"part-{part}.parquet"
        table = pa.Table.from_pandas(features.iloc[chunk], schema, preserve_index=False)
        pq.write_table(table, path, row_group_size=2)  # many row groups, chained files
        files.append(path)
    with pytest.MonkeyPatch.context() as patch:
        for engine in ENGINES:
            patch.setattr(pit, "ENGINE", engine)
            out = join(labels, features)
            check(out, labels, expected, f"{engine} in memory")
            out = join_parquet(labels, files)
            check(out, labels, expected, f"{engine} parquet")


def join_both(labels: pd.DataFrame, features: pd.DataFrame, folder: Path) -> dict:
    """The "row" column each join (engine, in memory or parquet) gives `labels`."""
    path = folder / "features.parquet"
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), path)
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        for engine in ENGINES:
            patch.setattr(pit, "ENGINE", engine)
            joined = join(labels, features)
            out[engine, "memory"] = joined["row"].tolist()
            joined = join_parquet(labels, [path])
            out[engine, "parquet"] = joined["row"].tolist()
    return out


@pytest.mark.parametrize("when", ["2024-03-01 12:00:00", "1960-03-01 12:00:00"])
def test_a_row_one_nanosecond_after_the_label_in_the_same_microsecond_is_not_used(when, tmp_path):
    # Compared at whole microseconds, the label (.000000500) and the row 1 ns later
    # (.000000501) were one time: the row from the future was taken. Before 1970 the parquet
    # join rounded the row's time up (towards zero) instead, so an equal time was missed.
    label = pd.Timestamp(when) + pd.Timedelta(500, "ns")
    features = pd.DataFrame(
        {
            "id": [1, 1, 2],
            "event_time": [label - pd.Timedelta(1, "ms"), label + pd.Timedelta(1, "ns"), label],
            "row": [0.0, 1.0, 2.0],
        }
    )
    labels = pd.DataFrame({"id": [1, 2], "label_time": [label, label]})
    for how, rows in join_both(labels, features, tmp_path).items():
        assert rows == [0.0, 2.0], how


def test_nanosecond_rows_against_microsecond_labels_and_back(tmp_path):
    # One side in whole microseconds, the other with nanoseconds: compared exactly.
    label = pd.Timestamp("1969-12-31 23:59:59.999999")
    labels = pd.DataFrame({"id": [1], "label_time": pd.Series([label], dtype="datetime64[us]")})
    features = pd.DataFrame(
        {
            "id": [1, 1],
            "event_time": [label - pd.Timedelta(1, "ns"), label + pd.Timedelta(1, "ns")],
            "row": [0.0, 1.0],
        }
    )
    for how, rows in join_both(labels, features, tmp_path).items():
        assert rows == [0.0], how
    labels = pd.DataFrame({"id": [1], "label_time": [label + pd.Timedelta(1, "ns")]})
    features["event_time"] = features["event_time"].astype("datetime64[us]").iloc[[0, 0]].values
    features.loc[1, "event_time"] = label + pd.Timedelta(1, "us")
    for how, rows in join_both(labels, features, tmp_path).items():
        assert rows == [0.0], how


T0 = pd.Timestamp("2024-03-01")
LABELS = pd.DataFrame({"id": [1], "label_time": [T0]})
FEATURES = pd.DataFrame({"id": [1], "event_time": [T0], "row": [0.0]})
L, F = LABELS.assign, FEATURES.assign
LABEL_TIME, EVENT_TIME = "labels column 'label_time'", "features column 'event_time'"
BAD = {
    # name: (labels, features, what the message must say)
    "label time of bools": (L(label_time=[True]), FEATURES, LABEL_TIME),
    "feature time of bools": (LABELS, F(event_time=[True]), EVENT_TIME),
    "label time not ISO": (L(label_time=["soon"]), FEATURES, LABEL_TIME),
    "feature time not ISO": (LABELS, F(event_time=["soon"]), EVENT_TIME),
    "null label time": (L(label_time=[pd.NaT]), FEATURES, "null time at row 0"),
    "epoch seconds past datetime": (L(label_time=[1e300]), FEATURES, LABEL_TIME),
    "infinite epoch seconds": (LABELS, F(event_time=[np.inf]), EVENT_TIME),
    "durations, not times": (L(label_time=[pd.Timedelta(1)]), FEATURES, LABEL_TIME),
    "string ids against numbers": (L(id=["1"]), FEATURES, "entity column 'id'"),
    "ids of mixed types": (
        pd.DataFrame({"id": [1, "a"], "label_time": [T0, T0]}),
        F(id=["1"]),
        "labels column 'id': entity ids of mixed types",
    ),
    "list ids": (L(id=[[1]]), F(id=["1"]), "labels column 'id'"),
    "label time twice": (
        pd.concat([LABELS, LABELS[["label_time"]]], axis=1),
        FEATURES,
        "labels: column 'label_time' appears 2 times",
    ),
    "no entity column": (LABELS.rename(columns={"id": "user"}), FEATURES, "labels: no column 'id'"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_an_error_naming_the_column(name, tmp_path, monkeypatch):
    labels, features, message = BAD[name]
    path = tmp_path / "features.parquet"
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), path)
    for engine in ENGINES:
        monkeypatch.setattr(pit, "ENGINE", engine)
        with pytest.raises(ValueError, match=re.escape(message)):
            join(labels, features)
        with pytest.raises(ValueError, match=re.escape(message)):
            join_parquet(labels, [path])


WRITTEN = pd.Timestamp("2024-03-01").as_unit("ns")
BAD_FILES = {
    # name: (the second file's feature rows, what the message must say)
    "values that are not numbers": (
        pd.DataFrame({"id": [1], "event_time": [WRITTEN], "row": pd.Series(["one"], dtype="str")}),
        "column 'row' (large_string) does not convert to double",
    ),
    "a time past the first file's ns": (
        pd.DataFrame(
            {
                "id": [1],
                "event_time": pd.Series([np.datetime64("3000-01-01", "us")]),
                "row": [1.0],
            }
        ),
        "column 'event_time' (timestamp[us]) does not convert to timestamp[ns]",
    ),
    "no entity column": (
        pd.DataFrame({"user": [1], "event_time": [WRITTEN], "row": [1.0]}),
        "no column 'id'",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_file_that_does_not_fit_the_first_is_an_error_naming_it(name, tmp_path, monkeypatch):
    second, message = BAD_FILES[name]
    first = pd.DataFrame({"id": [1], "event_time": [WRITTEN], "row": [0.0]})
    files = [tmp_path / "first.parquet", tmp_path / "second.parquet"]
    for frame, path in zip([first, second], files, strict=True):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    labels = pd.DataFrame({"id": [1], "label_time": [WRITTEN + pd.Timedelta("1D")]})
    for engine in ENGINES:
        monkeypatch.setattr(pit, "ENGINE", engine)
        with pytest.raises(ValueError, match=re.escape(f"{files[1]}: {message}")):
            join_parquet(labels, files)
