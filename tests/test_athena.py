"""Athena training sets: the SQL sent to Athena, run on DuckDB, equals the local join row for row.

The offline stores are laid out as SageMaker writes them (Parquet under
`<account>/sagemaker/<region>/offline-store/<table>/data/year=.../`, with `write_time`,
`api_invocation_time` and `is_deleted`); DuckDB reads them through views named like the
Glue tables, with the two Trino functions the SQL uses defined as macros of the same meaning.
"""

from __future__ import annotations

import io
from pathlib import Path

import boto3
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from workloads.features.athena import (
    ROW,
    AthenaTrainingSets,
    OfflineTable,
    TrainingSetError,
    hive_columns,
    labels_table,
    point_in_time_sql,
    unload_sql,
)
from workloads.features.pit import point_in_time_join
from workloads.features.store import SageMakerFeatureStore
from workloads.platform import FeatureGroupRef

DATABASE = "team_dev_features"
PROFILE = FeatureGroupRef(
    name="team-dev-profile",
    record_identifier="customer_id",
    event_time="event_time",
    features={
        "customer_id": "integral",
        "event_time": "string",
        "plan": "string",
        "tenure": "integral",
    },
    online=True,
    offline=True,
    offline_uri="s3://features/offline/profile",
)
ACTIVITY = FeatureGroupRef(
    name="team-dev-activity",
    record_identifier="customer_id",
    event_time="ts",
    features={"customer_id": "integral", "ts": "fractional", "spend": "fractional"},
    online=False,
    offline=True,
    offline_uri="s3://features/offline/activity",
)
TABLES = {"profile": "team_dev_profile_1700000000", "activity": "team_dev_activity_1700000000"}
T0 = pd.Timestamp("2024-01-01", tz="UTC")


def write_offline(root: Path, table: str, frame: pd.DataFrame, files: int = 3) -> None:
    """Parquet files in SageMaker's offline layout, rows spread over `files` files."""
    folder = root / "123456789012/sagemaker/us-east-1/offline-store" / table / "data"
    bounds = np.linspace(0, len(frame), files + 1).astype(int)
    for i in range(files):
        part = frame.iloc[bounds[i] : bounds[i + 1]]
        hour = folder / f"year=2024/month=01/day=01/hour={i:02d}"
        hour.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), hour / f"{i}.parquet")


def offline_rows(rng: np.random.Generator, n: int, entities: int, kind: str) -> pd.DataFrame:
    """Random offline rows with many (entity, event time) ties, each with its own write time."""
    minutes = rng.integers(0, 40, n)
    times = T0 + pd.to_timedelta(minutes, unit="min")
    frame = pd.DataFrame({"customer_id": rng.integers(0, entities, n)})
    if kind == "string":
        frame["event_time"] = times.strftime("%Y-%m-%dT%H:%M:%SZ")
        frame["plan"] = rng.choice(["basic", "pro", None], n)
        tenure = pd.array(rng.integers(0, 100, n), dtype="Int64")
        tenure[rng.random(n) < 0.2] = pd.NA
        frame["tenure"] = tenure
    else:
        frame["ts"] = (times - pd.Timestamp(0, tz="UTC")).total_seconds()
        frame["spend"] = np.round(rng.random(n) * 100, 3)
    written = T0 + pd.Timedelta(days=1) + pd.to_timedelta(rng.permutation(n), unit="s")
    frame[WRITE] = written.tz_localize(None)
    frame["api_invocation_time"] = frame[WRITE] - pd.Timedelta(seconds=1)
    frame["is_deleted"] = rng.random(n) < 0.05
    return frame


WRITE = "write_time"


def local_join(labels: pd.DataFrame, offline: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The reference: what SageMakerFeatureStore.read_offline + the local join compute."""
    out = labels
    for group, ref in (("profile", PROFILE), ("activity", ACTIVITY)):
        if group not in offline:
            continue
        data = offline[group]
        data = data[~data["is_deleted"]].sort_values(WRITE, kind="stable")
        data = data[list(ref.features)]
        out = point_in_time_join(
            out,
            data,
            entity_column="customer_id",
            label_time_column="label_time",
            feature_time_column=ref.event_time,
        )
    return out


def duckdb_run(root: Path, labels: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """Run the generated SELECT on DuckDB over the offline layout and the uploaded labels."""
    refs = {"profile": PROFILE, "activity": ACTIVITY}
    tables = [OfflineTable.of(g, refs[g], DATABASE, TABLES[g]) for g in groups]
    upload = labels_table(labels, "label_time")
    labels_file = root / "labels.parquet"
    pq.write_table(upload, labels_file)
    sql = point_in_time_sql(
        f'"{DATABASE}"."labels_x"',
        [c for c in upload.column_names if not c.startswith("__mlinfra")],
        {g: "customer_id" for g in groups},
        tables,
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # Trino's functions, with Trino's meaning: an ISO-8601 string as an instant, and an
    # instant as (fractional) seconds since the epoch.
    con.execute("CREATE MACRO from_iso8601_timestamp(s) AS CAST(s AS TIMESTAMPTZ)")
    con.execute("CREATE MACRO to_unixtime(t) AS epoch(t)")
    con.execute(f'CREATE SCHEMA "{DATABASE}"')
    for group in groups:
        pattern = root / "123456789012/sagemaker/us-east-1/offline-store" / TABLES[group]
        con.execute(
            f'CREATE VIEW "{DATABASE}"."{TABLES[group]}" AS SELECT * FROM '
            f"read_parquet('{pattern}/data/**/*.parquet', hive_partitioning = false)"
        )
    con.execute(
        f'CREATE VIEW "{DATABASE}"."labels_x" AS SELECT * FROM read_parquet(\'{labels_file}\')'
    )
    try:
        return con.sql(sql).df()
    finally:
        con.close()


def assert_same(sql_result: pd.DataFrame, local: pd.DataFrame) -> None:
    assert list(sql_result.columns) == list(local.columns)
    assert len(sql_result) == len(local)
    for column in local.columns:
        expected = local[column]
        got = sql_result[column]
        if isinstance(expected.dtype, pd.DatetimeTZDtype):
            expected = expected.dt.tz_convert("UTC").dt.tz_localize(None)
        left = expected.astype(object).where(expected.notna(), None).tolist()
        right = got.astype(object).where(got.notna(), None).tolist()
        if pd.api.types.is_numeric_dtype(expected.dtype) or pd.api.types.is_numeric_dtype(
            got.dtype
        ):
            left = [None if v is None else float(v) for v in left]
            right = [None if v is None else float(v) for v in right]
        mismatches = [i for i, (a, b) in enumerate(zip(left, right, strict=True)) if a != b]
        assert not mismatches, (
            f"column {column!r} differs at rows {mismatches[:5]}: "
            f"sql {[right[i] for i in mismatches[:5]]} local {[left[i] for i in mismatches[:5]]}"
        )


def test_ties_deletes_and_labels_without_features(tmp_path):
    at = lambda minutes: T0 + pd.Timedelta(minutes=minutes)  # noqa: E731
    profile = pd.DataFrame(
        {
            "customer_id": [1, 1, 1, 2, 2, 3],
            "event_time": [
                "2024-01-01T00:10:00Z",
                "2024-01-01T00:10:00Z",  # a tie: written later, stored in an earlier file
                "2024-01-01T00:20:00.250Z",
                "2024-01-01T00:05:00Z",
                "2024-01-01T00:30:00Z",  # deleted: skipped
                "2024-01-01T00:50:00Z",  # after every label of customer 3
            ],
            "plan": ["old", "new", "later", "basic", "gone", "future"],
            "tenure": pd.array([1, 2, 3, None, 5, 6], dtype="Int64"),
            WRITE: pd.to_datetime(
                [
                    "2024-01-02 00:00:01",
                    "2024-01-02 00:00:05",
                    "2024-01-02 00:00:00",
                    "2024-01-02 00:00:00",
                    "2024-01-02 00:00:00",
                    "2024-01-02 00:00:00",
                ]  # fmt: skip
            ),
            "api_invocation_time": pd.Timestamp("2024-01-02"),
            "is_deleted": [False, False, False, False, True, False],
        }
    )
    # File order puts the later-written tie first: the SQL must go by write_time.
    write_offline(tmp_path, TABLES["profile"], profile.iloc[[1, 0, 2, 3, 4, 5]], files=2)
    labels = pd.DataFrame(
        {
            "customer_id": [1, 1, 1, 2, 2, 3, 4],
            "label_time": [at(9), at(10), at(25), at(6), at(40), at(45), at(45)],
            "churned": [0, 1, 0, 1, 0, 1, 1],
        }
    )
    sql_result = duckdb_run(tmp_path, labels, ["profile"])
    local = local_join(labels, {"profile": profile})
    assert_same(sql_result, local)
    # The cases, spelled out: before any row -> nulls; at the tie -> the later write; the
    # newest at or before; the deleted row skipped; nothing yet -> nulls; unknown -> nulls.
    plans = sql_result["plan"].astype(object).where(sql_result["plan"].notna(), None)
    assert plans.tolist() == [None, "new", "later", "basic", "basic", None, None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_two_groups_equal_the_local_join_row_for_row(tmp_path, seed):
    rng = np.random.default_rng(seed)
    profile = offline_rows(rng, 400, 30, "string")
    activity = offline_rows(rng, 600, 30, "fractional")
    write_offline(tmp_path, TABLES["profile"], profile)
    write_offline(tmp_path, TABLES["activity"], activity)
    n = 300
    labels = pd.DataFrame(
        {
            "customer_id": rng.integers(0, 35, n),  # some ids have no features at all
            # Whole minutes, so many labels sit exactly on a feature time (inclusive).
            "label_time": T0 + pd.to_timedelta(rng.integers(-5, 45, n), unit="min"),
            "churned": rng.integers(0, 2, n),
        }
    )
    sql_result = duckdb_run(tmp_path, labels, ["profile", "activity"])
    local = local_join(labels, {"profile": profile, "activity": activity})
    assert_same(sql_result, local)
    assert sql_result["spend"].isna().any() and sql_result["spend"].notna().any()


def test_unload_wraps_the_select_and_labels_map_to_glue_types():
    select = point_in_time_sql(
        '"db"."labels"',
        ["customer_id", "label_time"],
        {"profile": "customer_id"},
        [OfflineTable.of("profile", PROFILE, "db", "t")],
    )
    sql = unload_sql(select, "s3://artifacts/training-sets/x/data/")
    assert select in sql
    assert sql.startswith("UNLOAD (") and "TO 's3://artifacts/training-sets/x/data/'" in sql
    assert "format = 'PARQUET'" in sql
    table = labels_table(
        pd.DataFrame({"id": [1], "t": [T0], "name": ["a"], "x": [0.5], "flag": [True]}), "t"
    )
    assert [c["Type"] for c in hive_columns(table.schema)] == [
        "bigint", "timestamp", "string", "double", "boolean", "bigint", "bigint"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="labels column 'l' has type list"):
        hive_columns(pa.schema([pa.field("l", pa.list_(pa.int64()))]))
    with pytest.raises(ValueError, match="null time at row 1"):
        labels_table(pd.DataFrame({"t": [T0, None]}), "t")
    with pytest.raises(ValueError, match="event times are string or fractional"):
        bad = OfflineTable("g", "db", "t", "i", "e", "integral", ())
        point_in_time_sql('"db"."l"', ["id"], {"g": "id"}, [bad])


# --- the service calls (moto; Athena in moto runs nothing: the SQL is what is checked) -------


def create_groups(sagemaker, role: str) -> None:
    for ref, table in ((PROFILE, TABLES["profile"]), (ACTIVITY, TABLES["activity"])):
        sagemaker.create_feature_group(
            FeatureGroupName=ref.name,
            RecordIdentifierFeatureName=ref.record_identifier,
            EventTimeFeatureName=ref.event_time,
            FeatureDefinitions=[
                {"FeatureName": n, "FeatureType": k.capitalize()} for n, k in ref.features.items()
            ],
            OfflineStoreConfig={
                "S3StorageConfig": {"S3Uri": ref.offline_uri},
                "DataCatalogConfig": {
                    "Catalog": "AwsDataCatalog",
                    "Database": DATABASE,
                    "TableName": table,
                },
            },
            RoleArn=role,
        )


@pytest.fixture
def aws(aws_env):
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        s3 = session.client("s3")
        s3.create_bucket(Bucket="artifacts")
        glue = session.client("glue")
        # moto files every group under SageMaker's default catalog entry (as SageMaker does
        # when no DataCatalogConfig is given); the builder asks, so either works.
        glue.create_database(DatabaseInput={"Name": "sagemaker_featurestore"})
        sagemaker = session.client("sagemaker")
        create_groups(sagemaker, "arn:aws:iam::123456789012:role/fs")
        yield session


def test_build_uploads_labels_runs_one_unload_and_drops_the_labels_table(aws):
    athena, glue, s3 = aws.client("athena"), aws.client("glue"), aws.client("s3")
    builder = AthenaTrainingSets(
        athena=athena, glue=glue, s3=s3, sagemaker=aws.client("sagemaker"),
        artifacts="s3://artifacts", poll_s=0,
    )  # fmt: skip
    labels = pd.DataFrame({"customer_id": [1, 2], "label_time": [T0, T0], "churned": [0, 1]})
    refs = {"profile": PROFILE, "activity": ACTIVITY}
    result = builder.build(labels, refs, {g: "customer_id" for g in refs}, "label_time", "run-1")

    assert result.uri == "s3://artifacts/training-sets/run-1/data/"
    query = athena.get_query_execution(QueryExecutionId=result.query_execution_id)
    execution = query["QueryExecution"]
    assert execution["Query"] == result.sql
    catalogs = [
        aws.client("sagemaker").describe_feature_group(FeatureGroupName=ref.name)[
            "OfflineStoreConfig"
        ]["DataCatalogConfig"]
        for ref in refs.values()
    ]
    database = catalogs[0]["Database"]
    assert execution["QueryExecutionContext"]["Database"] == database
    # Athena's own result files go beside the data, never into the channel.
    assert execution["ResultConfiguration"]["OutputLocation"].startswith(
        "s3://artifacts/training-sets/run-1/athena/"
    )
    for catalog in catalogs:
        assert f'"{catalog["Database"]}"."{catalog["TableName"]}"' in result.sql
    assert f'"{database}"."mlinfra_labels_run_1"' in result.sql
    body = s3.get_object(Bucket="artifacts", Key="training-sets/run-1/labels/labels.parquet")
    uploaded = pq.read_table(io.BytesIO(body["Body"].read()))
    assert uploaded.column("customer_id").to_pylist() == [1, 2]
    assert uploaded.column(ROW).to_pylist() == [0, 1]
    with pytest.raises(glue.exceptions.EntityNotFoundException):
        glue.get_table(DatabaseName=database, Name="mlinfra_labels_run_1")

    # A name whose data prefix is taken is refused before anything is written.
    s3.put_object(Bucket="artifacts", Key="training-sets/run-2/data/x.parquet", Body=b"")
    with pytest.raises(TrainingSetError, match="already holds a training set"):
        builder.build(labels, refs, {g: "customer_id" for g in refs}, "label_time", "run-2")
    with pytest.raises(ValueError, match="training set name 'Bad_Name'"):
        builder.build(labels, refs, {g: "customer_id" for g in refs}, "label_time", "Bad_Name")


def test_a_failed_query_names_its_reason_and_still_drops_the_labels_table(aws):
    athena = boto3.client("athena", region_name="us-east-1")
    glue = aws.client("glue")
    builder = AthenaTrainingSets(
        athena=athena, glue=glue, s3=aws.client("s3"), sagemaker=aws.client("sagemaker"),
        artifacts="s3://artifacts", poll_s=0,
    )  # fmt: skip
    with Stubber(athena) as stub:
        stub.add_response("start_query_execution", {"QueryExecutionId": "q-1"})
        stub.add_response(
            "get_query_execution", {"QueryExecution": {"Status": {"State": "RUNNING"}}}
        )
        stub.add_response(
            "get_query_execution",
            {
                "QueryExecution": {
                    "Status": {"State": "FAILED", "StateChangeReason": "TABLE_NOT_FOUND: t"}
                }
            },
        )
        labels = pd.DataFrame({"customer_id": [1], "label_time": [T0]})
        with pytest.raises(TrainingSetError, match="q-1 failed: TABLE_NOT_FOUND: t"):
            builder.build(labels, {"profile": PROFILE}, {"profile": "customer_id"}, "label_time")
    assert not [
        t for t in glue.get_tables(DatabaseName="sagemaker_featurestore")["TableList"]
        if t["Name"].startswith("mlinfra_labels")
    ]  # fmt: skip


def test_the_sagemaker_store_builds_training_sets_with_athena(aws):
    builder = AthenaTrainingSets(
        athena=aws.client("athena"), glue=aws.client("glue"), s3=aws.client("s3"),
        sagemaker=aws.client("sagemaker"), artifacts="s3://artifacts", poll_s=0,
    )  # fmt: skip
    store = SageMakerFeatureStore(
        {"profile": PROFILE, "activity": ACTIVITY},
        runtime=None,
        s3=aws.client("s3"),
        training_sets=builder,
    )
    labels = pd.DataFrame({"cid": [1], "label_time": [T0]})
    result = store.training_set_uri(
        labels, ["profile", "activity"], entity_column="cid", time_column="label_time", name="t1"
    )
    assert result.uri == "s3://artifacts/training-sets/t1/data/"
    assert 'l."cid"' in result.sql
    with pytest.raises(ValueError, match="clashes with a column of the labels"):
        store.training_set_uri(labels.assign(plan="x"), ["profile"], entity_column="cid",
                               time_column="label_time")  # fmt: skip
    without = SageMakerFeatureStore({"profile": PROFILE}, runtime=None, s3=aws.client("s3"))
    with pytest.raises(ValueError, match="no Athena configuration"):
        without.training_set_uri(labels, ["profile"], entity_column="cid", time_column="label_time")


# --- the workload role allows what building a training set asks of AWS -----------------------

# What Athena itself does as the caller while it runs the UNLOAD (it acts with the caller's
# credentials): read the offline store's catalog and files, write the results and its own
# query metadata. (service, IAM action, resource kind)
ATHENA_ON_BEHALF = [
    ("glue", "glue:GetDatabase", "database"),
    ("glue", "glue:GetTable", "offline-table"),
    ("glue", "glue:GetTable", "labels-table"),
    ("glue", "glue:GetPartitions", "offline-table"),
    ("s3", "s3:GetObject", "features-object"),
    ("s3", "s3:ListBucket", "features-bucket"),
    ("s3", "s3:PutObject", "artifacts-object"),
    ("s3", "s3:AbortMultipartUpload", "artifacts-object"),
    ("s3", "s3:ListBucketMultipartUploads", "artifacts-bucket"),
    ("kms", "kms:GenerateDataKey", "key"),
    ("kms", "kms:Decrypt", "key"),
]


def _iam_action(service: str, operation: str) -> str:
    return {("s3", "ListObjectsV2"): "s3:ListBucket"}.get(
        (service, operation), f"{service}:{operation}"
    )


def test_the_workload_role_allows_every_call_of_a_training_set(aws):
    """Every API call the builder makes (recorded from a real run under moto) and every call
    Athena makes on the caller's behalf is allowed, on that resource, by the workload role of
    a rendered stack: an action or a resource missing from the policy fails here, not with
    AccessDenied in a pod."""
    import fnmatch
    import json

    from tests.stack_support import rendered_stack

    calls: list[tuple[str, str, dict]] = []

    def record(model, params, **_):
        calls.append((model.service_model.signing_name, model.name, params))

    clients = {n: aws.client(n) for n in ("athena", "glue", "s3", "sagemaker")}
    for client in clients.values():
        client.meta.events.register("provide-client-params.*.*", record)
    builder = AthenaTrainingSets(**clients, artifacts="s3://artifacts", poll_s=0)
    labels = pd.DataFrame({"customer_id": [1, 2], "label_time": [T0, T0], "churned": [0, 1]})
    refs = {"profile": PROFILE, "activity": ACTIVITY}
    builder.build(labels, refs, {g: "customer_id" for g in refs}, "label_time", "run-1")
    assert {(s, o) for s, o, _ in calls} >= {
        ("athena", "StartQueryExecution"), ("glue", "CreateTable"), ("s3", "PutObject"),
    }  # fmt: skip

    rendered = rendered_stack("vision-dev")
    (role,) = [
        r for r in rendered.by_type("aws:iam/role:Role") if r.inputs["name"].endswith("-workloads")
    ]
    (policy,) = [
        p for p in rendered.by_type("aws:iam/rolePolicy:RolePolicy")
        if p.inputs["role"] == role.outputs["name"]
    ]  # fmt: skip
    statements = json.loads(policy.inputs["policy"])["Statement"]
    buckets = {
        b.inputs["tags"]["purpose"]: b.outputs["bucket"]
        for b in rendered.by_type("aws:s3/bucket:Bucket")
    }
    (database,) = [
        d.inputs["name"] for d in rendered.by_type("aws:glue/catalogDatabase:CatalogDatabase")
    ]
    (workgroup,) = rendered.by_type("aws:athena/workgroup:Workgroup")
    results = workgroup.inputs["configuration"]["resultConfiguration"]
    assert workgroup.inputs["configuration"]["enforceWorkgroupConfiguration"] is True
    assert results["outputLocation"].startswith(f"s3://{buckets['artifacts']}/")
    assert results["encryptionConfiguration"]["encryptionOption"] == "SSE_KMS"
    key = results["encryptionConfiguration"]["kmsKeyArn"]  # the team key
    glue = "arn:aws:glue:us-east-1:123456789012"

    def table(name: str) -> list[str]:
        return [f"{glue}:catalog", f"{glue}:database/{database}", f"{glue}:table/{database}/{name}"]

    kinds = {
        "database": [f"{glue}:catalog", f"{glue}:database/{database}"],
        "offline-table": table("vision_dev_profile_1700000000"),
        "labels-table": table("mlinfra_labels_run_1"),
        "features-object": [f"arn:aws:s3:::{buckets['features']}/offline/profile/x.parquet"],
        "features-bucket": [f"arn:aws:s3:::{buckets['features']}"],
        "artifacts-object": [f"arn:aws:s3:::{buckets['artifacts']}/training-sets/run-1/data/x"],
        "artifacts-bucket": [f"arn:aws:s3:::{buckets['artifacts']}"],
        "key": [key],
    }

    def resources(service: str, operation: str, params: dict) -> list[str]:
        """The ARNs IAM checks for one recorded call, moved onto the rendered stack."""
        if service == "athena":
            return [workgroup.outputs["arn"]]
        if service == "glue":
            name = params.get("Name") or params.get("TableInput", {}).get("Name")
            return table(name) if name else kinds["database"]
        if service == "s3":
            bucket = buckets["artifacts"] if params["Bucket"] == "artifacts" else params["Bucket"]
            if "Key" in params:
                return [f"arn:aws:s3:::{bucket}/{params['Key']}"]
            return [f"arn:aws:s3:::{bucket}"]
        assert service == "sagemaker"
        return [
            g.outputs["arn"] for g in rendered.by_type("aws:sagemaker/featureGroup:FeatureGroup")
        ][:1]

    def allowed(action: str, arn: str) -> bool:
        for statement in statements:
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            targets = statement["Resource"]
            targets = [targets] if isinstance(targets, str) else targets
            if action in actions and any(fnmatch.fnmatchcase(arn, t) for t in targets):
                return True
        return False

    needed = [(_iam_action(s, o), arn) for s, o, p in calls for arn in resources(s, o, p)] + [
        (action, arn) for _, action, kind in ATHENA_ON_BEHALF for arn in kinds[kind]
    ]
    missing = sorted({(a, r) for a, r in needed if not allowed(a, r)})
    assert not missing, missing
    # And no more than that: the workloads may create and drop only labels tables.
    assert not allowed("glue:DeleteTable", table("vision_dev_profile_1700000000")[-1])
