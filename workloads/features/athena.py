"""Point-in-time training sets on AWS: one Athena query over the offline store's Glue tables.

The join runs where the data lives. The labels are uploaded once as a Parquet file and
catalogued as a temporary Glue table next to the offline store's tables; one `UNLOAD` query
joins them with every feature group and writes Parquet files under
`s3://<artifacts>/training-sets/<name>/data/`, a prefix that holds nothing else, so the URI
is a training channel as it stands (`SM_CHANNEL_TRAIN`, a SageMaker `InputData`, or
`--train` of a Kubernetes Job). Nothing comes back through the client.

Semantics are those of `workloads.features.pit.point_in_time_join` (the local DuckDB join):
for each label row and group, the newest feature row of the same entity whose event time
is at or before the label's time; among rows with the same entity and event time, the last
written (`write_time`, then `api_invocation_time`) wins; rows that SageMaker marked deleted
(`is_deleted`) are skipped, as `SageMakerFeatureStore.read_offline` skips them; a label with
no such row keeps its row, with nulls. Times are compared as whole microseconds since the
epoch, as the local join compares them (it keeps nanoseconds only where both sides hold them).

The SQL (`point_in_time_sql`) is written in the Trino dialect Athena speaks, using only
functions DuckDB also has or that a test defines as DuckDB macros with Trino's meaning
(`from_iso8601_timestamp`, `to_unixtime`), so the very text sent to Athena is proven on
DuckDB against the local join (tests/test_athena.py). Athena writes column names in
lowercase.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workloads.features.pit import to_utc
from workloads.platform import FeatureGroupRef

ROW = "__mlinfra_row"  # the label's position: the result comes back in label order
TIME_US = "__mlinfra_time_us"  # the label's time in microseconds since the epoch (UTC)
_RANK = "__mlinfra_rank"
_ENTITY = "__mlinfra_entity"
_WRITE = "__mlinfra_write_time"
_API = "__mlinfra_api_time"
# Columns SageMaker adds to every offline store row.
WRITE_TIME, API_TIME, IS_DELETED = "write_time", "api_invocation_time", "is_deleted"
TRAINING_SETS_PREFIX = "training-sets"
# The temporary Glue tables labels are catalogued in: the only tables a workload may create.
LABELS_TABLE_PREFIX = "mlinfra_labels_"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
POLL_S = 2.0
DEFAULT_TIMEOUT_S = 3600.0

# Arrow types of label columns -> the Hive types of a Glue table over them.
_HIVE_TYPES: dict[str, str] = {
    "int8": "tinyint",
    "int16": "smallint",
    "int32": "int",
    "int64": "bigint",
    "float": "float",
    "double": "double",
    "bool": "boolean",
    "string": "string",
    "large_string": "string",
    "date32[day]": "date",
}


class TrainingSetError(RuntimeError):
    """A training set Athena could not build; the message says which query and why."""


def quote(identifier: str) -> str:
    """A SQL identifier, double-quoted (Trino and DuckDB agree on this)."""
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class OfflineTable:
    """One feature group's offline store as Athena sees it (its Glue table)."""

    group: str  # the spec's feature group name
    database: str
    table: str
    record_identifier: str
    event_time: str
    event_time_kind: str  # "string" (ISO-8601) or "fractional" (epoch seconds)
    features: tuple[str, ...]  # the columns joined onto the labels, in declared order

    @classmethod
    def of(cls, group: str, ref: FeatureGroupRef, database: str, table: str) -> OfflineTable:
        keys = (ref.record_identifier, ref.event_time)
        features = tuple(n for n in ref.features if n not in keys)
        return cls(
            group=group,
            database=database,
            table=table,
            record_identifier=ref.record_identifier,
            event_time=ref.event_time,
            event_time_kind=ref.features[ref.event_time],
            features=features,
        )

    @property
    def qualified(self) -> str:
        return f"{quote(self.database)}.{quote(self.table)}"


def event_time_micros(column: str, kind: str) -> str:
    """The SQL for an offline store's event time as whole microseconds since the epoch."""
    if kind == "fractional":
        seconds = f"CAST({quote(column)} AS DOUBLE)"
    elif kind == "string":
        seconds = f"to_unixtime(from_iso8601_timestamp({quote(column)}))"
    else:
        raise ValueError(
            f"event time {column!r} is {kind}: SageMaker event times are string or fractional"
        )
    # Whole microseconds, rounded as the local join rounds epoch seconds.
    return f"CAST(round({seconds} * 1000000) AS BIGINT)"


def point_in_time_sql(
    labels: str,
    label_columns: Sequence[str],
    entity_columns: Mapping[str, str],
    tables: Sequence[OfflineTable],
) -> str:
    """The SELECT joining `labels` (a qualified table with `ROW` and `TIME_US` columns) with
    each offline table; `entity_columns[group]` names the labels' entity column for it.

    Returns the label columns then each group's features, ordered by the labels' row.
    """
    if not tables:
        raise ValueError("name at least one feature group")
    ctes = [f"labels AS (SELECT * FROM {labels})"]
    joins, selected = [], [f"l.{quote(c)}" for c in label_columns]
    for i, t in enumerate(tables):
        entity = entity_columns[t.group]
        feature_list = "".join(f", {quote(c)}" for c in t.features)
        ctes.append(
            f"f{i} AS (\n"
            f"  SELECT {quote(t.record_identifier)} AS {_ENTITY},\n"
            f"    {event_time_micros(t.event_time, t.event_time_kind)} AS {TIME_US},\n"
            f"    {quote(WRITE_TIME)} AS {_WRITE}, {quote(API_TIME)} AS {_API}{feature_list}\n"
            f"  FROM {t.qualified}\n"
            f"  WHERE {quote(IS_DELETED)} IS NULL OR NOT {quote(IS_DELETED)}\n"
            f")"
        )
        picked = "".join(f", f.{quote(c)}" for c in t.features)
        ctes.append(
            f"m{i} AS (\n"
            f"  SELECT l.{ROW}{picked},\n"
            f"    row_number() OVER (PARTITION BY l.{ROW} ORDER BY f.{TIME_US} DESC,\n"
            f"      f.{_WRITE} DESC NULLS LAST, f.{_API} DESC NULLS LAST) AS {_RANK}\n"
            f"  FROM labels l JOIN f{i} f\n"
            f"    ON f.{_ENTITY} = l.{quote(entity)} AND f.{TIME_US} <= l.{TIME_US}\n"
            f")"
        )
        joins.append(f"LEFT JOIN m{i} ON m{i}.{ROW} = l.{ROW} AND m{i}.{_RANK} = 1")
        selected += [f"m{i}.{quote(c)}" for c in t.features]
    return (
        "WITH " + ",\n".join(ctes) + "\n"
        f"SELECT {', '.join(selected)}\n"
        "FROM labels l\n" + "\n".join(joins) + f"\nORDER BY l.{ROW}"
    )


def unload_sql(select: str, destination: str) -> str:
    """Athena's UNLOAD: the SELECT's rows as Parquet files under `destination` (empty prefix)."""
    return (
        f"UNLOAD (\n{select}\n)\nTO {_literal(destination)}\n"
        "WITH (format = 'PARQUET', compression = 'SNAPPY')"
    )


def labels_table(labels: pd.DataFrame, time_column: str) -> pa.Table:
    """The labels as uploaded: their columns, then `ROW` and `TIME_US` (both bigint).

    Times with a zone are stored as UTC instants; the label columns keep their names.
    """
    for reserved in (ROW, TIME_US):
        if reserved in labels.columns:
            raise ValueError(f"labels: column {reserved!r} is reserved for the join")
    micros = to_utc(labels[time_column], f"labels column {time_column!r}")
    if micros.isna().any():
        row = int(np.flatnonzero(micros.isna().to_numpy())[0])
        raise ValueError(f"labels column {time_column!r}: null time at row {row}")
    frame = labels.reset_index(drop=True)
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.tz_convert("UTC").dt.tz_localize(None)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column(ROW, pa.array(np.arange(len(frame), dtype=np.int64)))
    values = micros.to_numpy(dtype="datetime64[us]").view(np.int64)
    return table.append_column(TIME_US, pa.array(values))


def hive_columns(schema: pa.Schema) -> list[dict[str, str]]:
    """Glue column definitions for a Parquet schema; an unsupported type names its column."""
    columns = []
    for field in schema:
        kind = str(field.type)
        if pa.types.is_timestamp(field.type):
            hive = "timestamp"
        elif kind in _HIVE_TYPES:
            hive = _HIVE_TYPES[kind]
        else:
            raise ValueError(
                f"labels column {field.name!r} has type {kind}: Athena reads integers, floats, "
                "booleans, strings, dates and timestamps"
            )
        columns.append({"Name": field.name, "Type": hive})
    return columns


def glue_table_input(name: str, location: str, schema: pa.Schema) -> dict[str, Any]:
    """A Glue `TableInput` for Parquet files under `location` (an external table)."""
    return {
        "Name": name,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
        "StorageDescriptor": {
            "Columns": hive_columns(schema),
            "Location": location,
            "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
            "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
            "SerdeInfo": {
                "SerializationLibrary": (
                    "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
                ),
            },
        },
    }


@dataclass(frozen=True)
class TrainingSet:
    """A training set Athena wrote: `uri` is the channel (a prefix of Parquet files)."""

    uri: str
    query_execution_id: str
    sql: str
    rows: int


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        raise ValueError(f"{uri!r} is not an s3:// URI")
    return parsed.netloc, parsed.path.lstrip("/")


class AthenaTrainingSets:
    """Builds training sets with Athena; every client is passed in (boto3 or test doubles)."""

    def __init__(
        self,
        *,
        athena: Any,
        glue: Any,
        s3: Any,
        sagemaker: Any,
        artifacts: str,
        workgroup: str = "primary",
        poll_s: float = POLL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.athena, self.glue, self.s3, self.sagemaker = athena, glue, s3, sagemaker
        self.artifacts = artifacts.rstrip("/")
        self.workgroup = workgroup
        self.poll_s, self.timeout_s, self.sleep = poll_s, timeout_s, sleep

    def offline_table(self, group: str, ref: FeatureGroupRef) -> OfflineTable:
        """The group's Glue table, as SageMaker recorded it when it made the offline store."""
        described = self.sagemaker.describe_feature_group(FeatureGroupName=ref.name)
        catalog = described.get("OfflineStoreConfig", {}).get("DataCatalogConfig")
        if not catalog:
            raise TrainingSetError(
                f"feature group {group!r} ({ref.name}) has no Glue table for its offline store"
            )
        return OfflineTable.of(group, ref, catalog["Database"], catalog["TableName"])

    def build(
        self,
        labels: pd.DataFrame,
        refs: Mapping[str, FeatureGroupRef],
        entity_columns: Mapping[str, str],
        time_column: str,
        name: str | None = None,
    ) -> TrainingSet:
        """Join `labels` with the offline stores of `refs`, written by Athena as Parquet under
        `<artifacts>/training-sets/<name>/data/`."""
        name = name or f"ts-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if not _NAME.match(name):
            raise ValueError(
                f"training set name {name!r}: lowercase letters, digits and '-', at most 63"
            )
        root = f"{self.artifacts}/{TRAINING_SETS_PREFIX}/{name}"
        destination = f"{root}/data/"
        bucket, prefix = _split(destination)
        if self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"):
            raise TrainingSetError(f"{destination} already holds a training set; choose a new name")
        tables = [self.offline_table(g, ref) for g, ref in refs.items()]
        database = tables[0].database
        table = labels_table(labels, time_column)
        label_columns = [c for c in table.column_names if c not in (ROW, TIME_US)]
        glue_name = LABELS_TABLE_PREFIX + name.replace("-", "_")
        table_input = glue_table_input(glue_name, f"{root}/labels/", table.schema)
        select = point_in_time_sql(
            f"{quote(database)}.{quote(glue_name)}", label_columns, entity_columns, tables
        )
        sql = unload_sql(select, destination)

        body = io.BytesIO()
        pq.write_table(table, body)
        labels_bucket, labels_key = _split(f"{root}/labels/labels.parquet")
        self.s3.put_object(Bucket=labels_bucket, Key=labels_key, Body=body.getvalue())
        self.glue.create_table(DatabaseName=database, TableInput=table_input)
        try:
            query_id = self._run(sql, database, f"{root}/athena/")
        finally:
            self.glue.delete_table(DatabaseName=database, Name=glue_name)
        return TrainingSet(uri=destination, query_execution_id=query_id, sql=sql, rows=len(labels))

    def _run(self, sql: str, database: str, output: str) -> str:
        started = self.athena.start_query_execution(
            QueryString=sql,
            QueryExecutionContext={"Database": database},
            ResultConfiguration={"OutputLocation": output},
            WorkGroup=self.workgroup,
        )
        query_id = started["QueryExecutionId"]
        deadline = time.monotonic() + self.timeout_s
        while True:
            status = self.athena.get_query_execution(QueryExecutionId=query_id)
            state = status["QueryExecution"]["Status"]
            if state["State"] == "SUCCEEDED":
                return query_id
            if state["State"] in ("FAILED", "CANCELLED"):
                raise TrainingSetError(
                    f"Athena query {query_id} {state['State'].lower()}: "
                    f"{state.get('StateChangeReason', 'no reason given')}"
                )
            if time.monotonic() > deadline:
                self.athena.stop_query_execution(QueryExecutionId=query_id)
                raise TrainingSetError(
                    f"Athena query {query_id} still {state['State']} after {self.timeout_s:.0f} s; "
                    "stopped it"
                )
            self.sleep(self.poll_s)

    def read(self, training_set: TrainingSet) -> pd.DataFrame:
        """The training set as a DataFrame (its Parquet files, in key order)."""
        bucket, prefix = _split(training_set.uri)
        keys = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        tables = [
            pq.read_table(io.BytesIO(self.s3.get_object(Bucket=bucket, Key=k)["Body"].read()))
            for k in sorted(keys)
        ]
        if not tables:
            raise TrainingSetError(f"Athena wrote no files under {training_set.uri}")
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
