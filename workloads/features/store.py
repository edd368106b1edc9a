"""The feature store client: ingest, online reads, offline reads and point-in-time training sets.

Two backends behind one interface, picked from the platform descriptor:

- `SageMakerFeatureStore`: `sagemaker-featurestore-runtime` PutRecord / GetRecord /
  BatchGetRecord for the online store (SageMaker replicates each put to the offline store),
  and the offline store read from its S3 parquet layout
  (`<offline_uri>/<account>/sagemaker/<region>/offline-store/<group>-<ts>/data/.../*.parquet`).
  Training sets are built by Athena over the offline store's Glue tables
  (`workloads.features.athena`), written to the artifacts bucket as a training channel.
- `LocalFeatureStore`: the offline store is parquet files under the group's `file://` folder,
  each written atomically (temp file + rename, so readers never see a partial file); the
  online store is a SQLite database keeping the latest record per id by event time, safe for
  concurrent readers and writers in several processes (WAL, one transaction per ingest).

Both validate a DataFrame against the group's declared features before writing anything,
and both build training sets with `workloads.features.pit` (the local store straight from its
parquet files). Groups are addressed by the spec's logical feature group name.

Types: `integral` values come back as ints, `fractional` as floats, `string` as str; the event
time always comes back as a UTC datetime, whichever way it is declared (ISO-8601 string or
epoch seconds). In DataFrames from `read_offline`, an integral column with nulls is float.
"""

from __future__ import annotations

import io
import json
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workloads.features.athena import AthenaTrainingSets, TrainingSet
from workloads.features.pit import point_in_time_join, to_utc
from workloads.features.pit_files import point_in_time_join_parquet
from workloads.platform import FeatureGroupRef, NotDeclaredError, PlatformDescriptor
from workloads.storage import SqliteDatabase, atomic_path


class FeatureValidationError(ValueError):
    """A DataFrame that does not match its feature group's declaration."""


class UnknownFeatureGroupError(NotDeclaredError):
    kind = "feature group"


class FeatureStoreClient(Protocol):
    def ingest(self, group: str, df: pd.DataFrame) -> int: ...

    def get_record(self, group: str, record_id: Any) -> dict[str, Any] | None: ...

    def get_records(self, group: str, ids: Sequence[Any]) -> list[dict[str, Any] | None]: ...

    def read_offline(self, group: str) -> pd.DataFrame: ...

    def training_set(
        self,
        labels: pd.DataFrame,
        groups: list[str],
        *,
        entity_column: str | None = None,
        time_column: str = "event_time",
    ) -> pd.DataFrame: ...


# --- validation -----------------------------------------------------------------------------


def _first_bad_row(mask: np.ndarray | pd.Series) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def _check_column(group: str, name: str, values: pd.Series, kind: str) -> pd.Series:
    """Check one feature column against its declared type; return it in the stored dtype."""
    where = f"feature group {group!r}: column {name!r}"
    dtype = values.dtype
    if kind in ("integral", "fractional"):
        if pd.api.types.is_bool_dtype(dtype):
            raise FeatureValidationError(f"{where} is {kind} but holds booleans")
        if pd.api.types.is_object_dtype(dtype):
            bad = values.map(lambda v: not (v is None or _is_number(v)))
            if bad.any():
                row = _first_bad_row(bad)
                raise FeatureValidationError(
                    f"{where} is {kind} but row {row} holds {values.iloc[row]!r}"
                )
            values = pd.to_numeric(values)
            dtype = values.dtype
        if not pd.api.types.is_numeric_dtype(dtype):
            raise FeatureValidationError(f"{where} is {kind} but has dtype {dtype}")
        as_float = values.astype("float64")
        finite = np.isfinite(as_float.fillna(0.0).to_numpy())
        if not finite.all():
            row = _first_bad_row(~finite)
            raise FeatureValidationError(f"{where}: row {row} is not finite ({values.iloc[row]})")
        if kind == "fractional":
            return as_float
        whole = (as_float.fillna(0.0) % 1 == 0).to_numpy()
        if not whole.all():
            row = _first_bad_row(~whole)
            raise FeatureValidationError(
                f"{where} is integral but row {row} holds {values.iloc[row]!r}"
            )
        return values.astype("Int64")
    # string
    if isinstance(dtype, pd.CategoricalDtype):
        values = values.astype(object).where(values.notna(), None)
        dtype = values.dtype
    if pd.api.types.is_object_dtype(dtype):
        bad = values.map(lambda v: not (v is None or isinstance(v, str) or _is_nan(v)))
        if bad.any():
            row = _first_bad_row(bad)
            raise FeatureValidationError(
                f"{where} is string but row {row} holds {values.iloc[row]!r}"
            )
    elif not pd.api.types.is_string_dtype(dtype):
        raise FeatureValidationError(f"{where} is string but has dtype {dtype}")
    return values.astype("str")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def validate_frame(group: str, ref: FeatureGroupRef, df: pd.DataFrame) -> pd.DataFrame:
    """Check `df` against the group's declared features; return it in the stored types.

    Every declared feature must be a column and no other column may be; the record id and
    the event time may not be null; values must match their declared type. The event time
    comes back as a UTC datetime column.
    """
    if not isinstance(df, pd.DataFrame):
        raise FeatureValidationError(
            f"feature group {group!r}: expected a pandas DataFrame, got {type(df).__name__}"
        )
    declared = list(ref.features)
    missing = [c for c in declared if c not in df.columns]
    extra = [str(c) for c in df.columns if c not in ref.features]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"undeclared column(s) {', '.join(map(repr, extra))}")
        raise FeatureValidationError(
            f"feature group {group!r}: {'; '.join(parts)}; declared: {', '.join(declared)}"
        )
    if df.columns.duplicated().any():
        dupes = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise FeatureValidationError(f"feature group {group!r}: repeated column(s) {dupes}")
    out = {}
    for name in declared:
        values = df[name].reset_index(drop=True)
        if name in (ref.record_identifier, ref.event_time) and values.isna().any():
            role = "record identifier" if name == ref.record_identifier else "event time"
            raise FeatureValidationError(
                f"feature group {group!r}: column {name!r} ({role}) is null at row "
                f"{_first_bad_row(values.isna())}"
            )
        if name == ref.event_time:
            if ref.features[name] == "fractional" and not (
                pd.api.types.is_numeric_dtype(values.dtype)
                or pd.api.types.is_datetime64_any_dtype(values.dtype)
            ):
                raise FeatureValidationError(
                    f"feature group {group!r}: column {name!r} (event time, fractional) must "
                    f"be epoch seconds or datetimes, got dtype {values.dtype}"
                )
            try:
                out[name] = to_utc(values, f"column {name!r}").dt.tz_localize("UTC")
            except ValueError as exc:
                raise FeatureValidationError(f"feature group {group!r}: {exc}") from None
        else:
            out[name] = _check_column(group, name, values, ref.features[name])
    return pd.DataFrame(out)


def _format_time(value: pd.Timestamp | datetime, kind: str) -> str:
    """An event time as SageMaker accepts it: ISO-8601 with milliseconds, or epoch seconds."""
    ts = pd.Timestamp(value).tz_convert("UTC")
    if kind == "fractional":
        return repr((ts.value // 1000) / 1e6)  # whole microseconds, shortest repr
    if ts.microsecond:
        return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime:
    """An event time as stored: epoch seconds (number or numeric string) or ISO-8601."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            ts = pd.Timestamp(value)
            ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
            return ts.to_pydatetime()
    return pd.Timestamp(float(value), unit="s", tz="UTC").to_pydatetime()


def _typed(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "integral":
        return int(value)
    if kind == "fractional":
        return float(value)
    return str(value)


class _Groups:
    def __init__(self, groups: Mapping[str, FeatureGroupRef]):
        self.groups = dict(groups)

    def ref(self, group: str) -> FeatureGroupRef:
        return UnknownFeatureGroupError.lookup(self.groups, group)

    def _online(self, group: str) -> FeatureGroupRef:
        ref = self.ref(group)
        if not ref.online:
            raise ValueError(f"feature group {group!r} has no online store (online: false)")
        return ref

    def _offline(self, group: str) -> FeatureGroupRef:
        ref = self.ref(group)
        if not ref.offline or not ref.offline_uri:
            raise ValueError(f"feature group {group!r} has no offline store (offline: false)")
        return ref

    def _id(self, ref: FeatureGroupRef, record_id: Any) -> Any:
        kind = ref.features[ref.record_identifier]
        try:
            return int(record_id) if kind == "integral" else str(record_id)
        except (TypeError, ValueError):
            raise ValueError(
                f"record id {record_id!r} is not a valid {kind} {ref.record_identifier!r}"
            ) from None

    def _decode(self, ref: FeatureGroupRef, values: Mapping[str, Any]) -> dict[str, Any]:
        """Typed record: declared features in order, missing ones as None."""
        out = {}
        for name, kind in ref.features.items():
            raw = values.get(name)
            if raw is None:
                out[name] = None
            elif name == ref.event_time:
                out[name] = _parse_time(raw)
            else:
                out[name] = _typed(raw, kind)
        return out

    def read_offline(self, group: str) -> pd.DataFrame:  # pragma: no cover - per backend
        raise NotImplementedError

    def training_set(
        self,
        labels: pd.DataFrame,
        groups: list[str],
        *,
        entity_column: str | None = None,
        time_column: str = "event_time",
    ) -> pd.DataFrame:
        """For each label row, each group's newest features at or before its time.

        `entity_column` names the labels' entity column (default: each group's record
        identifier). Feature columns join with their plain names; a name that two groups, or
        a group and the labels, share is an error.
        """
        refs, entities = self._plan_training_set(labels, groups, entity_column, time_column)
        out = labels
        for group, ref in refs.items():
            out = self._join_group(out, group, ref, entities[group], time_column)
        return out

    def _join_group(
        self, labels: pd.DataFrame, group: str, ref: FeatureGroupRef, entity: str, time_column: str
    ) -> pd.DataFrame:
        """One group's features joined onto `labels` (the offline store read as a DataFrame)."""
        features = self.read_offline(group).rename(columns={ref.record_identifier: entity})
        return point_in_time_join(
            labels,
            features,
            entity_column=entity,
            label_time_column=time_column,
            feature_time_column=ref.event_time,
        )

    def _plan_training_set(
        self,
        labels: pd.DataFrame,
        groups: list[str],
        entity_column: str | None,
        time_column: str,
    ) -> tuple[dict[str, FeatureGroupRef], dict[str, str]]:
        """Check a training set request; return each group's ref and its labels' entity column."""
        if not isinstance(labels, pd.DataFrame):
            raise ValueError(f"labels: expected a pandas DataFrame, got {type(labels).__name__}")
        if not groups:
            raise ValueError("groups: name at least one feature group")
        if time_column not in labels.columns:
            raise ValueError(
                f"labels: no time column {time_column!r}; columns are "
                f"{', '.join(map(str, labels.columns))}"
            )
        refs = {g: self._offline(g) for g in groups}
        owners: dict[str, str] = {str(c): "the labels" for c in labels.columns}
        for group, ref in refs.items():
            entity = entity_column or ref.record_identifier
            if entity not in labels.columns:
                raise ValueError(f"labels: no entity column {entity!r} for feature group {group!r}")
            for name in ref.features:
                if name in (ref.record_identifier, ref.event_time):
                    continue
                if name in owners:
                    raise ValueError(
                        f"feature {name!r} of group {group!r} clashes with a column of "
                        f"{owners[name]}"
                    )
                owners[name] = f"group {group!r}"
        return refs, {g: entity_column or ref.record_identifier for g, ref in refs.items()}


# --- local ----------------------------------------------------------------------------------


def uri_path(uri: str) -> Path:
    """`file:///abs/path` (or a plain path) -> Path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    raise ValueError(f"{uri!r}: the local feature store needs a file:// URI")


_ONLINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    group_name    TEXT NOT NULL,
    record_id     NOT NULL,
    event_time_us INTEGER NOT NULL,
    record        TEXT NOT NULL,
    PRIMARY KEY (group_name, record_id)
)
"""


class LocalFeatureStore(_Groups):
    """Offline parquet files per group, online records in SQLite."""

    def __init__(self, groups: Mapping[str, FeatureGroupRef], online_store: str | Path):
        super().__init__(groups)
        self.online_path = Path(online_store)
        self.online_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = SqliteDatabase(
            self.online_path,
            _ONLINE_SCHEMA,
            what="the online feature store",
            remedy=(
                "restore it from a backup, or move the file away and run `mlinfra up` for an "
                "empty one, then ingest the feature groups again"
            ),
        )

    def _folder(self, ref: FeatureGroupRef) -> Path:
        return uri_path(ref.offline_uri or "")

    def ingest(self, group: str, df: pd.DataFrame) -> int:
        ref = self.ref(group)
        frame = validate_frame(group, ref, df)
        if frame.empty:
            return 0
        if ref.offline and ref.offline_uri:
            self._append_offline(ref, frame)
        if ref.online:
            self._put_online(ref, frame)
        return len(frame)

    def _append_offline(self, ref: FeatureGroupRef, frame: pd.DataFrame) -> None:
        folder = self._folder(ref)
        folder.mkdir(parents=True, exist_ok=True)
        # Names sort in write order (nanosecond clock first), which read_offline relies on
        # to let the last written row win a tie.
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        table = pa.Table.from_pandas(frame, preserve_index=False)
        # fsynced, renamed, the rename made durable: a crash after ingest keeps the file.
        with atomic_path(folder / name) as tmp:
            pq.write_table(table, tmp)

    def _put_online(self, ref: FeatureGroupRef, frame: pd.DataFrame) -> None:
        kinds = ref.features
        times = frame[ref.event_time]
        micros = (times.dt.tz_convert("UTC").dt.tz_localize(None) - pd.Timestamp(0)) // (
            pd.Timedelta("1us")
        )
        records = frame.astype(object).where(frame.notna(), None)
        rows = []
        for i, record in enumerate(records.to_dict("records")):
            values = {
                name: (
                    pd.Timestamp(value).isoformat()  # full precision, UTC offset included
                    if name == ref.event_time
                    else _typed(value, kinds[name])
                )
                for name, value in record.items()
            }
            rid = self._id(ref, record[ref.record_identifier])
            rows.append((ref.name, rid, int(micros.iloc[i]), json.dumps(values)))
        with self.db.write() as con:
            # The newest event time wins; an equal time overwrites (the later write wins).
            con.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?) "
                "ON CONFLICT (group_name, record_id) DO UPDATE SET "
                "event_time_us = excluded.event_time_us, record = excluded.record "
                "WHERE excluded.event_time_us >= records.event_time_us",
                rows,
            )

    def get_record(self, group: str, record_id: Any) -> dict[str, Any] | None:
        return self.get_records(group, [record_id])[0]

    def get_records(self, group: str, ids: Sequence[Any]) -> list[dict[str, Any] | None]:
        ref = self._online(group)
        keys = [self._id(ref, i) for i in ids]
        found: dict[Any, dict[str, Any]] = {}
        with self.db.read() as con:
            for start in range(0, len(keys), 500):  # SQLite caps bound parameters
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for rid, record in con.execute(
                    f"SELECT record_id, record FROM records "
                    f"WHERE group_name = ? AND record_id IN ({marks})",
                    (ref.name, *chunk),
                ):
                    found[rid] = self._decode(ref, json.loads(record))
        return [found.get(k) for k in keys]

    def _files(self, ref: FeatureGroupRef) -> list[Path]:
        """The offline store's files in write order (a later row wins a tie)."""
        folder = self._folder(ref)
        return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []

    def read_offline(self, group: str) -> pd.DataFrame:
        ref = self._offline(group)
        schema = _arrow_schema(ref)
        tables = [pq.read_table(f, schema=schema) for f in self._files(ref)]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        return table.to_pandas()

    def _join_group(
        self, labels: pd.DataFrame, group: str, ref: FeatureGroupRef, entity: str, time_column: str
    ) -> pd.DataFrame:
        """Straight from the parquet files: only the id and time columns are read for the
        join, the feature values one row group at a time, only the matched rows kept."""
        return point_in_time_join_parquet(
            labels,
            self._files(ref),
            entity_column=entity,
            label_time_column=time_column,
            feature_entity_column=ref.record_identifier,
            feature_time_column=ref.event_time,
            schema=_arrow_schema(ref),
        )


def _arrow_schema(ref: FeatureGroupRef) -> pa.Schema:
    types = {"integral": pa.int64(), "fractional": pa.float64(), "string": pa.string()}
    return pa.schema(
        [
            pa.field(name, pa.timestamp("us", tz="UTC") if name == ref.event_time else types[kind])
            for name, kind in ref.features.items()
        ]
    )


# --- SageMaker ------------------------------------------------------------------------------


class SageMakerFeatureStore(_Groups):
    """SageMaker Feature Store: the runtime API online, the S3 parquet files offline."""

    BATCH_GET_LIMIT = 100  # BatchGetRecord takes at most 100 identifiers per call

    def __init__(
        self,
        groups: Mapping[str, FeatureGroupRef],
        runtime: Any,
        s3: Any,
        max_workers: int = 8,
        page_size: int = 1000,
        training_sets: AthenaTrainingSets | None = None,
    ):
        super().__init__(groups)
        self.runtime = runtime
        self.s3 = s3
        self.max_workers = max_workers
        self.page_size = page_size
        self.training_sets = training_sets

    def training_set_uri(
        self,
        labels: pd.DataFrame,
        groups: list[str],
        *,
        entity_column: str | None = None,
        time_column: str = "event_time",
        name: str | None = None,
    ) -> TrainingSet:
        """Build the training set with Athena, where the offline store lives.

        The result's `uri` (`s3://<artifacts>/training-sets/<name>/data/`) holds only its
        Parquet files: pass it as a training channel as it is.
        """
        if self.training_sets is None:
            raise ValueError(
                "this SageMaker feature store has no Athena configuration (training_sets=); "
                "build it with feature_store_from_descriptor"
            )
        refs, entities = self._plan_training_set(labels, groups, entity_column, time_column)
        return self.training_sets.build(labels, refs, entities, time_column, name)

    def training_set(
        self,
        labels: pd.DataFrame,
        groups: list[str],
        *,
        entity_column: str | None = None,
        time_column: str = "event_time",
    ) -> pd.DataFrame:
        """The training set as a DataFrame: built by Athena and read back when the store has
        an Athena configuration (as from the factory), else joined here from the offline
        files (small stores)."""
        if self.training_sets is None:
            return super().training_set(
                labels, groups, entity_column=entity_column, time_column=time_column
            )
        built = self.training_set_uri(
            labels, groups, entity_column=entity_column, time_column=time_column
        )
        return self.training_sets.read(built)

    def _record(self, ref: FeatureGroupRef, row: Mapping[str, Any]) -> list[dict[str, str]]:
        record = []
        for name, kind in ref.features.items():
            value = row[name]
            if value is None or value is pd.NA or _is_nan(value):
                continue  # SageMaker records simply omit a missing feature
            if name == ref.event_time:
                text = _format_time(value, kind)
            elif kind == "integral":
                text = str(int(value))
            elif kind == "fractional":
                text = repr(float(value))
            else:
                text = str(value)
            record.append({"FeatureName": name, "ValueAsString": text})
        return record

    def ingest(self, group: str, df: pd.DataFrame) -> int:
        ref = self.ref(group)
        frame = validate_frame(group, ref, df)
        if frame.empty:
            return 0
        targets = [
            s for s, on in (("OnlineStore", ref.online), ("OfflineStore", ref.offline)) if on
        ]
        records = [self._record(ref, row) for row in frame.astype(object).to_dict("records")]

        def put(record: list[dict[str, str]]) -> None:
            self.runtime.put_record(FeatureGroupName=ref.name, Record=record, TargetStores=targets)

        if self.max_workers > 1 and len(records) > 1:
            with ThreadPoolExecutor(self.max_workers) as pool:
                list(pool.map(put, records))  # list(): re-raise the first failure
        else:
            for record in records:
                put(record)
        return len(records)

    def get_record(self, group: str, record_id: Any) -> dict[str, Any] | None:
        ref = self._online(group)
        response = self.runtime.get_record(
            FeatureGroupName=ref.name,
            RecordIdentifierValueAsString=str(self._id(ref, record_id)),
        )
        record = response.get("Record")
        if not record:
            return None
        return self._decode(ref, {f["FeatureName"]: f["ValueAsString"] for f in record})

    def get_records(self, group: str, ids: Sequence[Any]) -> list[dict[str, Any] | None]:
        ref = self._online(group)
        keys = [str(self._id(ref, i)) for i in ids]
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), self.BATCH_GET_LIMIT):
            pending = unique[start : start + self.BATCH_GET_LIMIT]
            for _attempt in range(5):
                response = self.runtime.batch_get_record(
                    Identifiers=[
                        {"FeatureGroupName": ref.name, "RecordIdentifiersValueAsString": pending}
                    ]
                )
                if response.get("Errors"):
                    error = response["Errors"][0]
                    raise RuntimeError(
                        f"BatchGetRecord on {ref.name!r} failed for id "
                        f"{error.get('RecordIdentifierValueAsString')!r}: "
                        f"{error.get('ErrorCode')} {error.get('ErrorMessage')}"
                    )
                for item in response.get("Records", []):
                    values = {f["FeatureName"]: f["ValueAsString"] for f in item["Record"]}
                    found[item["RecordIdentifierValueAsString"]] = self._decode(ref, values)
                pending = [
                    rid
                    for unprocessed in response.get("UnprocessedIdentifiers", [])
                    for rid in unprocessed["RecordIdentifiersValueAsString"]
                ]
                if not pending:
                    break
            else:
                raise RuntimeError(
                    f"BatchGetRecord on {ref.name!r}: {len(pending)} ids still unprocessed "
                    "after 5 attempts"
                )
        return [found.get(k) for k in keys]

    def _offline_keys(self, ref: FeatureGroupRef) -> tuple[str, list[str]]:
        parsed = urlparse(ref.offline_uri or "")
        if parsed.scheme != "s3":
            raise ValueError(
                f"feature group {ref.name!r}: offline_uri {ref.offline_uri!r} is not s3://"
            )
        bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        # SageMaker's layout: .../offline-store/<group>-<creation epoch>/data/year=.../x.parquet
        layout = re.compile(
            rf"(^|/)offline-store/{re.escape(ref.name)}-\d+/data/.+\.parquet$", re.IGNORECASE
        )
        keys = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": self.page_size}
        ):
            keys += [o["Key"] for o in page.get("Contents", []) if layout.search(o["Key"])]
        return bucket, sorted(keys)

    def read_offline(self, group: str) -> pd.DataFrame:
        ref = self._offline(group)
        bucket, keys = self._offline_keys(ref)
        frames = []
        for key in keys:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            frames.append(pq.read_table(io.BytesIO(body)).to_pandas())
        columns = list(ref.features)
        if not frames:
            return _arrow_schema(ref).empty_table().to_pandas()
        data = pd.concat(frames, ignore_index=True)
        if "is_deleted" in data.columns:
            data = data[~data["is_deleted"].fillna(False).astype(bool)]
        if "write_time" in data.columns:  # the last written row wins a tie downstream
            data = data.sort_values("write_time", kind="stable")
        missing = [c for c in columns if c not in data.columns]
        for name in missing:
            data[name] = None
        out = {}
        for name, kind in ref.features.items():
            values = data[name].reset_index(drop=True)
            if name == ref.event_time:
                out[name] = to_utc(values, name).dt.tz_localize("UTC")
            elif kind == "string":
                out[name] = values.astype("str").where(values.notna())
            else:
                numbers = pd.to_numeric(values)
                out[name] = (
                    numbers.astype("int64")
                    if kind == "integral" and numbers.notna().all()
                    else numbers.astype("float64")
                )
        return pd.DataFrame(out)


def feature_store_from_descriptor(
    descriptor: PlatformDescriptor, session: Any = None
) -> LocalFeatureStore | SageMakerFeatureStore:
    """The feature store backend the descriptor names (`backend: local` or `backend: aws`)."""
    groups = descriptor.feature_store.groups
    if descriptor.backend == "local":
        if descriptor.local is None:
            raise ValueError("descriptor: backend is local but it has no `local` section")
        return LocalFeatureStore(groups, descriptor.local.online_store)
    import boto3

    session = session or boto3.Session(region_name=descriptor.region)
    region = descriptor.region
    s3 = session.client("s3", region_name=region)
    return SageMakerFeatureStore(
        groups,
        runtime=session.client("sagemaker-featurestore-runtime", region_name=region),
        s3=s3,
        training_sets=AthenaTrainingSets(
            athena=session.client("athena", region_name=region),
            glue=session.client("glue", region_name=region),
            s3=s3,
            sagemaker=session.client("sagemaker", region_name=region),
            artifacts=descriptor.buckets.artifacts,
            workgroup=descriptor.feature_store.workgroup or "primary",
        ),
    )
