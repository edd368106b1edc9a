"""The point-in-time rule: newest feature row at or before the label time, never after."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workloads.features import pit
from workloads.features.pit import point_in_time_join, to_utc
from workloads.features.pit_files import point_in_time_join_parquet

T0 = pd.Timestamp("2024-03-01 12:00:00")


@pytest.fixture(autouse=True, params=["polars", "duckdb"])
def engine(request, monkeypatch):
    """Every test runs on both engines: the answer may not depend on which one joined."""
    monkeypatch.setattr(pit, "ENGINE", request.param)
    return request.param


def join(labels: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    return point_in_time_join(
        labels,
        features,
        entity_column="id",
        label_time_column="label_time",
        feature_time_column="event_time",
    )


def test_future_row_one_second_later_is_never_used_and_equal_time_is():
    features = pd.DataFrame(
        {
            "id": [1, 1, 1, 2],
            "event_time": [
                T0 - pd.Timedelta("1D"),
                T0,  # exactly the label time of the first label: used
                T0 + pd.Timedelta("1s"),  # one second after the second label: must not leak
                T0 + pd.Timedelta("1s"),
            ],
            "x": [1.0, 2.0, 3.0, 9.0],
        }
    )
    labels = pd.DataFrame(
        {
            "id": [1, 1, 2],
            "label_time": [T0, T0 + pd.Timedelta("500ms"), T0],
            "y": [0, 1, 1],
        }
    )
    out = join(labels, features)
    assert list(out.columns) == ["id", "label_time", "y", "x"]
    assert out["x"].iloc[0] == 2.0
    assert out["x"].iloc[1] == 2.0  # the T0+1s row is after T0+500ms
    assert np.isnan(out["x"].iloc[2])  # entity 2 has only a future row


def test_unsorted_input_keeps_label_order_and_columns():
    rng = np.random.default_rng(1)
    features = pd.DataFrame(
        {
            "id": [3, 1, 2, 1, 3],
            "event_time": pd.to_datetime(
                ["2024-01-05", "2024-01-03", "2024-01-01", "2024-01-01", "2024-01-02"]
            ),
            "x": [35, 13, 21, 11, 32],
            "plan": ["c5", "a3", "b1", "a1", "c2"],
        }
    )
    labels = pd.DataFrame(
        {
            "label_time": pd.to_datetime(["2024-01-04", "2024-01-02", "2024-01-06", "2024-01-03"]),
            "id": [3, 1, 3, 1],
            "y": rng.integers(0, 2, 4),
        },
        index=[10, 5, 7, 1],
    )
    out = join(labels, features)
    assert list(out["plan"]) == ["c2", "a1", "c5", "a3"]
    assert list(out["x"]) == [32, 11, 35, 13]
    assert out["x"].dtype.kind == "i"  # every label matched: no upcast to float
    assert list(out["y"]) == list(labels["y"])
    assert list(out.index) == [0, 1, 2, 3]


def test_entities_without_features_get_nulls():
    features = pd.DataFrame(
        {"id": ["a"], "event_time": [T0], "n": [5], "s": pd.Series(["v"], dtype="str")}
    )
    labels = pd.DataFrame({"id": ["a", "b", None], "label_time": [T0, T0, T0]})
    out = join(labels, features)
    assert out["n"].iloc[0] == 5 and out["s"].iloc[0] == "v"
    assert out["n"].isna().tolist() == [False, True, True]
    assert out["s"].isna().tolist() == [False, True, True]


def test_timezone_aware_and_naive_times_are_compared_in_utc():
    features = pd.DataFrame(
        {
            "id": [1, 1],
            # naive = UTC: 10:00 and 11:00 UTC
            "event_time": pd.to_datetime(["2024-06-01 10:00", "2024-06-01 11:00"]),
            "x": [10, 11],
        }
    )
    # 12:30 in UTC+02:00 is 10:30 UTC: only the 10:00 row is at or before it.
    labels = pd.DataFrame(
        {
            "id": [1, 1],
            "label_time": pd.Series(
                [
                    pd.Timestamp("2024-06-01 12:30", tz="Europe/Berlin"),  # 10:30 UTC
                    pd.Timestamp("2024-06-01 12:00", tz="Europe/Berlin"),  # 10:00 UTC
                ]
            ),
        }
    )
    out = join(labels, features)
    assert list(out["x"]) == [10, 10]
    # and the other way round: aware features, naive (UTC) labels
    aware = features.assign(event_time=features["event_time"].dt.tz_localize("Asia/Tokyo"))
    # 10:00 and 11:00 Tokyo are 01:00 and 02:00 UTC
    naive = pd.DataFrame({"id": [1, 1], "label_time": pd.to_datetime(["2024-06-01 01:30"] * 2)})
    assert list(join(naive, aware)["x"]) == [10, 10]
    # the label column itself is returned as given
    assert out["label_time"].dt.tz is not None


def test_iso_strings_and_epoch_seconds_are_times():
    assert to_utc(pd.Series(["2024-01-01T00:00:00Z"]), "t").iloc[0] == pd.Timestamp("2024-01-01")
    assert to_utc(pd.Series([1704067200.5]), "t").iloc[0] == pd.Timestamp("2024-01-01 00:00:00.5")
    with pytest.raises(ValueError, match="'t'|t: not a time column"):
        to_utc(pd.Series(["yesterday-ish"]), "t")


def test_ties_take_the_last_written_row():
    features = pd.DataFrame({"id": [1, 1, 1], "event_time": [T0, T0, T0], "x": [1, 2, 3]})
    labels = pd.DataFrame({"id": [1], "label_time": [T0]})
    assert join(labels, features)["x"].iloc[0] == 3


def test_multiple_groups_chain_without_leaks():
    profile = pd.DataFrame(
        {"id": [1, 1], "event_time": [T0 - pd.Timedelta("2D"), T0 + pd.Timedelta("1s")]}
    ).assign(plan=["basic", "pro"])
    activity = pd.DataFrame(
        {"id": [1, 1], "event_time": [T0 - pd.Timedelta("1D"), T0], "sessions": [4, 7]}
    )
    labels = pd.DataFrame({"id": [1], "label_time": [T0]})
    out = join(join(labels, profile), activity)
    assert out.iloc[0].to_dict() == {"id": 1, "label_time": T0, "plan": "basic", "sessions": 7}


def test_bad_input_names_the_problem():
    features = pd.DataFrame({"id": [1], "event_time": [T0], "y": [1]})
    labels = pd.DataFrame({"id": [1], "label_time": [T0], "y": [0]})
    with pytest.raises(ValueError, match="clash.*y"):
        join(labels, features)
    with pytest.raises(ValueError, match="labels: no column 'label_time'"):
        join(labels.rename(columns={"label_time": "t"}), features.drop(columns="y"))
    with pytest.raises(ValueError, match="entity column 'id'.*string ids.*number ids"):
        join(labels.assign(id=["1"]).drop(columns="y"), features)
    with pytest.raises(ValueError, match="null time at row 1"):
        join(
            pd.DataFrame({"id": [1, 1], "label_time": [T0, pd.NaT]}),
            features.drop(columns="y"),
        )


def naive_join(labels: pd.DataFrame, features: pd.DataFrame) -> list[float]:
    """The definition, row by row: the last-written row with the newest time <= label time."""
    out = []
    for entity, when in zip(labels["id"], labels["label_time"], strict=True):
        best = None
        for position, (fid, ftime) in enumerate(
            zip(features["id"], features["event_time"], strict=True)
        ):
            if fid == entity and ftime <= when and (best is None or ftime >= best[0]):
                best = (ftime, position)
        out.append(np.nan if best is None else float(features["x"].iloc[best[1]]))
    return out


@pytest.mark.parametrize("seed", range(25))
def test_matches_a_brute_force_join_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n_features, n_labels = int(rng.integers(0, 60)), int(rng.integers(1, 40))
    minutes = 30  # a small time range makes exact ties and equal times frequent
    features = pd.DataFrame(
        {
            "id": rng.integers(0, 6, n_features),
            "event_time": T0 + pd.to_timedelta(rng.integers(0, minutes, n_features), unit="min"),
            "x": rng.integers(0, 1000, n_features),
        }
    )
    labels = pd.DataFrame(
        {
            "id": rng.integers(0, 7, n_labels),
            "label_time": T0 + pd.to_timedelta(rng.integers(-2, minutes + 2, n_labels), unit="min"),
        }
    )
    if seed % 2:  # the same instants, expressed in another zone
        labels["label_time"] = (
            labels["label_time"].dt.tz_localize("UTC").dt.tz_convert("America/New_York")
        )
        expected = naive_join(
            labels.assign(
                label_time=labels["label_time"].dt.tz_convert("UTC").dt.tz_localize(None)
            ),
            features,
        )
    else:
        expected = naive_join(labels, features)
    got = join(labels, features)["x"].astype(float).tolist()
    np.testing.assert_array_equal(got, expected)


def test_no_feature_rows_and_no_labels():
    empty = pd.DataFrame(
        {
            "id": pd.Series([], dtype="int64"),
            "event_time": pd.Series([], dtype="datetime64[us]"),
            "x": pd.Series([], dtype="float64"),
        }
    )
    labels = pd.DataFrame({"id": [1, 2], "label_time": [T0, T0]})
    out = join(labels, empty)
    assert list(out.columns) == ["id", "label_time", "x"] and out["x"].isna().all()
    assert join(labels.iloc[:0], empty).empty
    features = pd.DataFrame({"id": [1], "event_time": [T0], "x": [1.5]})
    assert join(labels.iloc[:0], features).columns.tolist() == ["id", "label_time", "x"]


# --- straight from parquet files -------------------------------------------------------------


def join_files(labels: pd.DataFrame, files: list, **kwargs) -> pd.DataFrame:
    return point_in_time_join_parquet(
        labels,
        files,
        entity_column="id",
        label_time_column="label_time",
        feature_entity_column="fid",
        feature_time_column="event_time",
        **kwargs,
    )


def write_parts(folder, features: pd.DataFrame, splits: list[int], row_group_size: int) -> list:
    """`features` as several parquet files (cut at `splits`), each of small row groups."""
    files = []
    bounds = [0, *splits, len(features)]
    for n, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        part = features.iloc[start:stop]
        path = folder / f"part-{n:03d}.parquet"
        pq.write_table(
            pa.Table.from_pandas(part, preserve_index=False), path, row_group_size=row_group_size
        )
        files.append(path)
    return files


@pytest.mark.parametrize("seed", range(12))
def test_parquet_join_matches_the_in_memory_join(tmp_path, seed):
    """Files cut anywhere, row groups of any size, ties within and across files, labels in any
    order: the same answer as the in-memory join (and so as the brute force above)."""
    rng = np.random.default_rng(100 + seed)
    n_features, n_labels = int(rng.integers(1, 200)), int(rng.integers(1, 80))
    features = pd.DataFrame(
        {
            "fid": rng.integers(0, 8, n_features),
            "event_time": (
                T0 + pd.to_timedelta(rng.integers(0, 40, n_features), unit="min")
            ).tz_localize("UTC"),
            "x": rng.integers(0, 1000, n_features),
            "s": pd.Series(rng.choice(["a", "b", "c"], n_features), dtype="str"),
            "v": rng.normal(size=n_features),
        }
    )
    labels = pd.DataFrame(
        {
            "id": rng.integers(0, 9, n_labels),
            "label_time": T0 + pd.to_timedelta(rng.integers(-3, 43, n_labels), unit="min"),
            "y": rng.integers(0, 2, n_labels),
        },
        index=rng.permutation(n_labels) + 50,
    )
    splits = sorted(rng.integers(0, n_features, int(rng.integers(0, 4))).tolist())
    files = write_parts(tmp_path, features, splits, int(rng.integers(1, 30)))
    got = join_files(labels, files)
    expected = join(labels, features.rename(columns={"fid": "id"}))
    assert list(got.columns) == ["id", "label_time", "y", "x", "s", "v"]
    pd.testing.assert_frame_equal(got, expected)
    naive_times = features["event_time"].dt.tz_localize(None)
    expected_x = naive_join(
        labels, features.rename(columns={"fid": "id"}).assign(event_time=naive_times)
    )
    np.testing.assert_array_equal(got["x"].astype(float), expected_x)


def test_parquet_join_normalises_every_time_form_to_utc(tmp_path):
    instants = pd.to_datetime(["2024-06-01 10:00", "2024-06-01 11:00"]).tz_localize("UTC")
    labels = pd.DataFrame(
        {
            "id": [1, 1, 2],
            # 12:30 Berlin = 10:30 UTC; 13:00 Berlin = 11:00 UTC (equal time: that row counts)
            "label_time": pd.Series(
                pd.to_datetime(["2024-06-01 12:30", "2024-06-01 13:00", "2024-06-01 13:00"])
            ).dt.tz_localize("Europe/Berlin"),
        }
    )
    forms = {
        "aware ns, another zone": pd.Series(instants.tz_convert("Asia/Tokyo")).astype(
            "datetime64[ns, Asia/Tokyo]"
        ),
        "naive = UTC, ms": pd.Series(instants.tz_localize(None)).astype("datetime64[ms]"),
        "ISO-8601 strings": pd.Series(["2024-06-01T12:00:00+02:00", "2024-06-01T11:00:00Z"]),
        "epoch seconds": pd.Series((instants - pd.Timestamp(0, tz="UTC")).total_seconds()),
    }
    for form, times in forms.items():
        features = pd.DataFrame({"fid": [1, 1], "event_time": times, "x": [10, 11]})
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.parquet"
        features.to_parquet(path, index=False)
        out = join_files(labels, [path])
        assert out["x"].tolist()[:2] == [10, 11], form
        assert np.isnan(out["x"].iloc[2]), form


def test_parquet_join_later_file_wins_a_tie_and_schema_sets_the_types(tmp_path):
    def part(name: str, x: list[int], s: list[str]) -> str:
        path = tmp_path / name
        frame = pd.DataFrame({"fid": [1] * len(x), "event_time": [T0] * len(x), "x": x, "s": s})
        frame.to_parquet(path, index=False)
        return path

    files = [part("a.parquet", [1, 2], ["p", "q"]), part("b.parquet", [3], ["r"])]
    labels = pd.DataFrame({"id": [1, 2], "label_time": [T0, T0]})
    out = join_files(labels, files)
    assert out["x"].tolist()[0] == 3 and out["s"].tolist()[0] == "r"
    assert join_files(labels, files[:1])["x"].tolist()[0] == 2  # the last row of one file
    schema = pa.schema(
        [
            ("fid", pa.int64()),
            ("event_time", pa.timestamp("us")),
            ("x", pa.float32()),
            ("s", pa.string()),
        ]
    )
    typed = join_files(labels, files, schema=schema)
    assert typed["x"].dtype == np.float32 and typed["x"].tolist()[0] == 3.0
    # no files yet: the schema's columns, all null
    empty = join_files(labels, [], schema=schema)
    assert list(empty.columns) == ["id", "label_time", "x", "s"]
    assert empty["x"].isna().all() and empty["s"].isna().all()


def test_parquet_join_bad_input_names_the_problem(tmp_path):
    path = tmp_path / "f.parquet"
    pd.DataFrame({"fid": [1], "event_time": [T0], "y": [1]}).to_parquet(path, index=False)
    labels = pd.DataFrame({"id": [1], "label_time": [T0]})
    with pytest.raises(ValueError, match="clash.*y"):
        join_files(labels.assign(y=0), [path])
    with pytest.raises(
        ValueError, match="features: no column 'id'; columns are fid, event_time, y"
    ):
        point_in_time_join_parquet(
            labels,
            [path],
            entity_column="id",
            label_time_column="label_time",
            feature_entity_column="id",
            feature_time_column="event_time",
        )
    with pytest.raises(ValueError, match="labels: no column 'label_time'"):
        join_files(labels.rename(columns={"label_time": "t"}), [path])
    with pytest.raises(ValueError, match="entity column 'id'.*string ids.*number ids"):
        join_files(labels.assign(id=["1"]), [path])
    with pytest.raises(ValueError, match="null time at row 0"):
        join_files(labels.assign(label_time=[pd.NaT]), [path])
    with pytest.raises(ValueError, match="no parquet files and no schema"):
        join_files(labels, [])


def test_the_engine_is_polars_in_memory_and_duckdb_past_the_row_budget(monkeypatch):
    monkeypatch.setattr(pit, "ENGINE", "auto")
    monkeypatch.setattr(pit, "IN_MEMORY_ROWS", 100)
    assert pit._engine(100) == "polars" and pit._engine(101) == "duckdb"
    monkeypatch.setattr(pit, "IN_MEMORY_ROWS", "20 million")  # as read from the environment
    with pytest.raises(ValueError, match="MLINFRA_PIT_IN_MEMORY_ROWS='20 million': a number"):
        pit._engine(1)
    monkeypatch.setattr(pit, "IN_MEMORY_ROWS", "1e2")
    assert pit._engine(100) == "polars" and pit._engine(101) == "duckdb"
    monkeypatch.setitem(sys.modules, "polars", None)  # not installed: DuckDB does it all
    assert pit._engine(1) == "duckdb"
    monkeypatch.setattr(pit, "ENGINE", "spark")
    with pytest.raises(
        ValueError, match="MLINFRA_PIT_ENGINE='spark': choose auto, polars or duckdb"
    ):
        pit._engine(1)


def test_mixed_number_ids_and_null_keys_match_alike():
    features = pd.DataFrame(
        {
            "id": [1.0, 2.0, np.nan, 1.0],
            "event_time": [T0, T0, T0, pd.NaT],  # a row without a time matches nothing
            "x": [10, 20, 30, 40],
        }
    )
    labels = pd.DataFrame({"id": [1, 2, 3], "label_time": [T0] * 3})
    assert join(labels, features)["x"].tolist()[:2] == [10, 20]
    assert np.isnan(join(labels, features)["x"].iloc[2])
    nullable = pd.DataFrame({"id": pd.array([1, None], dtype="Int64"), "label_time": [T0] * 2})
    out = join(nullable, features)
    assert out["x"].iloc[0] == 10 and np.isnan(out["x"].iloc[1])  # a null id matches nothing


def test_parquet_join_a_file_without_a_later_declared_column_gives_nulls(tmp_path):
    old, new = tmp_path / "part-1.parquet", tmp_path / "part-2.parquet"
    pd.DataFrame({"fid": [1], "event_time": [T0], "x": [1.5]}).to_parquet(old, index=False)
    pd.DataFrame(
        {"fid": [2], "event_time": [T0], "x": [2.5], "plan": pd.Series(["pro"], dtype="str")}
    ).to_parquet(new, index=False)
    schema = pa.schema(
        [
            ("fid", pa.int64()),
            ("event_time", pa.timestamp("us", tz="UTC")),
            ("x", pa.float64()),
            ("plan", pa.string()),
        ]
    )
    labels = pd.DataFrame({"id": [1, 2, 3], "label_time": [T0] * 3})
    out = join_files(labels, [old, new], schema=schema)
    assert out["x"].tolist()[:2] == [1.5, 2.5] and np.isnan(out["x"].iloc[2])
    assert out["plan"].isna().tolist() == [True, False, True] and out["plan"].iloc[1] == "pro"
