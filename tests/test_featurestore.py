"""The feature store: local backend on real files, SageMaker backend on Stubber and moto S3."""

from __future__ import annotations

import io
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from workloads.features.store import (
    FeatureValidationError,
    LocalFeatureStore,
    SageMakerFeatureStore,
    UnknownFeatureGroupError,
    feature_store_from_descriptor,
)
from workloads.platform import (
    Buckets,
    FeatureGroupRef,
    FeatureStore,
    LocalState,
    PlatformDescriptor,
    Registry,
)

T0 = pd.Timestamp("2024-05-01 00:00:00", tz="UTC")


def groups(features_uri: str) -> dict[str, FeatureGroupRef]:
    return {
        "profile": FeatureGroupRef(
            name="demo-dev-customer-profile",
            record_identifier="customer_id",
            event_time="event_time",
            features={
                "customer_id": "integral",
                "event_time": "string",
                "plan": "string",
                "tenure_months": "integral",
                "monthly_charges": "fractional",
            },
            online=True,
            offline=True,
            offline_uri=f"{features_uri}/demo-dev-customer-profile",
        ),
        "activity": FeatureGroupRef(
            name="demo-dev-customer-activity",
            record_identifier="customer_id",
            event_time="ts",
            features={"customer_id": "integral", "ts": "fractional", "sessions_30d": "integral"},
            online=False,
            offline=True,
            offline_uri=f"{features_uri}/demo-dev-customer-activity",
        ),
        "sessions": FeatureGroupRef(
            name="demo-dev-sessions",
            record_identifier="session",
            event_time="event_time",
            features={"session": "string", "event_time": "string", "minutes": "fractional"},
            online=True,
            offline=False,
            offline_uri=None,
        ),
    }


def descriptor(backend: str, root: Path) -> PlatformDescriptor:
    features = (root / "buckets" / "features").as_uri() if backend == "local" else "s3://feat/fs"
    return PlatformDescriptor(
        backend=backend,
        stack="demo-dev",
        team="demo",
        environment="dev",
        region="us-east-1",
        buckets=Buckets(raw="s3://r", features=features, artifacts="s3://a", logs="s3://l"),
        feature_store=FeatureStore(database=None, groups=groups(features)),
        registry=Registry(model_groups={}, repositories={}),
        endpoints={},
        cluster=None,
        local=LocalState(
            root=str(root), online_store=str(root / "online.db"), registry=str(root / "reg")
        )
        if backend == "local"
        else None,
    )


def profile_rows(**overrides) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "customer_id": [1, 2, 1],
            "event_time": [T0, T0, T0 + pd.Timedelta("1D")],
            "plan": ["basic", "pro", "pro"],
            "tenure_months": [3, 12, 4],
            "monthly_charges": [20.0, np.nan, 35.5],
        }
    )
    for key, value in overrides.items():
        df[key] = value
    return df


@pytest.fixture
def local(tmp_path) -> LocalFeatureStore:
    store = feature_store_from_descriptor(descriptor("local", tmp_path))
    assert isinstance(store, LocalFeatureStore)
    return store


# --- local: online -----------------------------------------------------------------------------


def test_online_keeps_the_newest_record_by_event_time(local):
    assert local.ingest("profile", profile_rows()) == 3
    # an older record arriving later must not replace the newer one
    late = profile_rows().iloc[[0]].assign(plan="stale", event_time=T0 - pd.Timedelta("1h"))
    local.ingest("profile", late)
    record = local.get_record("profile", 1)
    assert record == {
        "customer_id": 1,
        "event_time": datetime(2024, 5, 2, tzinfo=UTC),
        "plan": "pro",
        "tenure_months": 4,
        "monthly_charges": 35.5,
    }
    assert local.get_record("profile", "2")["monthly_charges"] is None  # ids are typed
    assert local.get_record("profile", 99) is None
    # an equal event time: the later write wins
    local.ingest("profile", profile_rows().iloc[[2]].assign(plan="enterprise"))
    assert local.get_record("profile", 1)["plan"] == "enterprise"
    got = local.get_records("profile", [2, 99, 1, 2])
    assert [r and r["customer_id"] for r in got] == [2, None, 1, 2]


def test_online_and_offline_only_groups(local):
    local.ingest(
        "sessions",
        pd.DataFrame({"session": ["s1"], "event_time": ["2024-05-01T10:00Z"]}).assign(
            minutes=[3.5]
        ),
    )
    assert local.get_record("sessions", "s1")["minutes"] == 3.5
    with pytest.raises(ValueError, match="'sessions' has no offline store"):
        local.read_offline("sessions")
    with pytest.raises(ValueError, match="'activity' has no online store"):
        local.get_record("activity", 1)
    with pytest.raises(UnknownFeatureGroupError, match="'orders' is not declared.*activity"):
        local.ingest("orders", profile_rows())


# --- local: validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (profile_rows().drop(columns="plan"), "missing column\\(s\\) 'plan'"),
        (profile_rows(churned=[0, 1, 0]), "undeclared column\\(s\\) 'churned'"),
        (profile_rows(tenure_months=["3", "12", "4"]), "'tenure_months' is integral but has dty"),
        (profile_rows(tenure_months=[3.0, 12.5, 4.0]), "'tenure_months' is integral but row 1"),
        (profile_rows(tenure_months=[True, False, True]), "'tenure_months'.*booleans"),
        (profile_rows(monthly_charges=[1.0, np.inf, 2.0]), "'monthly_charges': row 1 is not fin"),
        (profile_rows(plan=["a", 3, "b"]), "'plan' is string but row 1 holds 3"),
        (profile_rows(plan=[1, 2, 3]), "'plan' is string but has dtype int64"),
        (profile_rows(customer_id=[1, None, 3]), "'customer_id' \\(record identifier\\) is null"),
        (
            profile_rows(event_time=[T0, pd.NaT, T0]),
            "'event_time' \\(event time\\) is null at row 1",
        ),
        (profile_rows(event_time=["soon", "later", "x"]), "'event_time'.*not a time column"),
        ([{"customer_id": 1}], "expected a pandas DataFrame, got list"),
    ],
)
def test_bad_frames_are_refused_before_anything_is_written(local, tmp_path, frame, message):
    with pytest.raises(FeatureValidationError, match=message):
        local.ingest("profile", frame)
    assert local.read_offline("profile").empty
    assert local.get_record("profile", 1) is None


def test_accepted_representations(local):
    frame = profile_rows(
        # ISO strings with offsets, whole floats with a gap (NaN forces float), categories
        event_time=["2024-05-01T02:00:00+02:00", "2024-05-01T00:00:00Z", "2024-05-02T00:00:00"],
        tenure_months=[3.0, np.nan, 4.0],
        plan=pd.Categorical(["basic", None, "pro"]),
    )
    local.ingest("profile", frame)
    offline = local.read_offline("profile")
    assert list(offline["event_time"]) == [T0, T0, T0 + pd.Timedelta("1D")]
    assert offline["tenure_months"].isna().tolist() == [False, True, False]
    assert offline["plan"].isna().tolist() == [False, True, False]
    assert local.get_record("profile", 2)["tenure_months"] is None
    assert local.ingest("profile", profile_rows().iloc[:0]) == 0


# --- local: offline ------------------------------------------------------------------------


def test_offline_appends_typed_files_and_ignores_partial_ones(local, tmp_path):
    local.ingest("profile", profile_rows())
    local.ingest("profile", profile_rows().iloc[[1]].assign(event_time=T0 + pd.Timedelta("2D")))
    folder = tmp_path / "buckets" / "features" / "demo-dev-customer-profile"
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2 and all(f.startswith("part-") for f in files)
    # a writer that died mid-write leaves only a hidden temp file, which readers skip
    (folder / ".part-0000-dead.parquet.tmp").write_bytes(b"PAR1 half a file")
    offline = local.read_offline("profile")
    assert list(offline.columns) == list(groups("x")["profile"].features)
    assert len(offline) == 4
    assert str(offline["event_time"].dt.tz) == "UTC"
    assert offline["customer_id"].dtype == np.int64
    assert offline["monthly_charges"].isna().sum() == 2
    assert list(offline["customer_id"]) == [1, 2, 1, 2]  # write order


def _ingest_worker(args: tuple[str, int]) -> int:
    root, worker = args
    store = feature_store_from_descriptor(descriptor("local", Path(root)))
    written = 0
    for batch in range(4):
        ids = np.arange(20)
        frame = pd.DataFrame(
            {
                "customer_id": ids,
                # each worker writes a distinct event time per batch; worker 3, batch 3 is newest
                "event_time": T0 + pd.to_timedelta(batch * 10 + worker, unit="min"),
                "plan": f"w{worker}b{batch}",
                "tenure_months": worker,
                "monthly_charges": float(batch),
            }
        )
        written += store.ingest("profile", frame)
        assert len(store.read_offline("profile")) % 20 == 0  # never a partial file
        assert store.get_record("profile", 0) is not None
    return written


def test_concurrent_writers_and_readers_in_several_processes(local, tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        written = pool.map(_ingest_worker, [(str(tmp_path), w) for w in range(4)])
    assert sum(written) == 320
    assert len(local.read_offline("profile")) == 320
    newest = local.get_records("profile", list(range(20)))
    assert {r["plan"] for r in newest} == {"w3b3"}


# --- local: training sets ------------------------------------------------------------------


def test_training_set_is_point_in_time_across_groups(local):
    local.ingest("profile", profile_rows())
    local.ingest(
        "activity",
        pd.DataFrame(
            {
                "customer_id": [1, 1, 2],
                "ts": [
                    (T0 - pd.Timedelta("1h")).timestamp(),
                    (T0 + pd.Timedelta("1s")).timestamp(),  # after the first label: no leak
                    T0.timestamp(),
                ],
                "sessions_30d": [5, 50, 7],
            }
        ),
    )
    labels = pd.DataFrame(
        {
            "customer_id": [1, 1, 2, 3],
            "event_time": [T0, T0 + pd.Timedelta("1D"), T0 - pd.Timedelta("1s"), T0],
            "churned": [0, 1, 0, 1],
        }
    )
    out = local.training_set(labels, ["profile", "activity"])
    assert list(out.columns) == [
        "customer_id",
        "event_time",
        "churned",
        "plan",
        "tenure_months",
        "monthly_charges",
        "sessions_30d",
    ]
    assert out["plan"].tolist()[:2] == ["basic", "pro"]
    assert out["plan"].isna().tolist() == [False, False, True, True]
    assert out["sessions_30d"].tolist()[:2] == [5, 50]
    assert out["sessions_30d"].isna().tolist() == [False, False, True, True]

    renamed = labels.rename(columns={"customer_id": "cid", "event_time": "label_time"})
    again = local.training_set(renamed, ["profile"], entity_column="cid", time_column="label_time")
    assert again["plan"].tolist()[:2] == ["basic", "pro"]

    with pytest.raises(ValueError, match="'plan' of group 'profile' clashes.*the labels"):
        local.training_set(labels.assign(plan="x"), ["profile"])
    with pytest.raises(ValueError, match="no entity column 'customer_id'"):
        local.training_set(renamed, ["profile"], time_column="label_time")
    with pytest.raises(ValueError, match="no time column 'event_time'"):
        local.training_set(renamed, ["profile"], entity_column="cid")


# --- SageMaker -------------------------------------------------------------------------------


def runtime_client():
    return boto3.client(
        "sagemaker-featurestore-runtime",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )


def sm_store(runtime=None, s3=None, **kwargs) -> SageMakerFeatureStore:
    return SageMakerFeatureStore(
        groups("s3://feat/fs"), runtime=runtime or runtime_client(), s3=s3, **kwargs
    )


def test_sagemaker_ingest_puts_typed_string_records():
    runtime = runtime_client()
    store = sm_store(runtime, max_workers=1)
    frame = profile_rows().iloc[:2]
    frame.loc[1, "event_time"] = T0 + pd.Timedelta("1500ms")
    with Stubber(runtime) as stub:
        stub.add_response(
            "put_record",
            {},
            {
                "FeatureGroupName": "demo-dev-customer-profile",
                "Record": [
                    {"FeatureName": "customer_id", "ValueAsString": "1"},
                    {"FeatureName": "event_time", "ValueAsString": "2024-05-01T00:00:00Z"},
                    {"FeatureName": "plan", "ValueAsString": "basic"},
                    {"FeatureName": "tenure_months", "ValueAsString": "3"},
                    {"FeatureName": "monthly_charges", "ValueAsString": "20.0"},
                ],
                "TargetStores": ["OnlineStore", "OfflineStore"],
            },
        )
        stub.add_response(
            "put_record",
            {},
            {
                "FeatureGroupName": "demo-dev-customer-profile",
                "Record": [  # the missing charge is left out
                    {"FeatureName": "customer_id", "ValueAsString": "2"},
                    {"FeatureName": "event_time", "ValueAsString": "2024-05-01T00:00:01.500Z"},
                    {"FeatureName": "plan", "ValueAsString": "pro"},
                    {"FeatureName": "tenure_months", "ValueAsString": "12"},
                ],
                "TargetStores": ["OnlineStore", "OfflineStore"],
            },
        )
        stub.add_response(
            "put_record",
            {},
            {
                "FeatureGroupName": "demo-dev-customer-activity",
                "Record": [
                    {"FeatureName": "customer_id", "ValueAsString": "7"},
                    {"FeatureName": "ts", "ValueAsString": "1714521600.25"},
                    {"FeatureName": "sessions_30d", "ValueAsString": "4"},
                ],
                "TargetStores": ["OfflineStore"],
            },
        )
        assert store.ingest("profile", frame) == 2
        activity = pd.DataFrame({"customer_id": [7], "ts": [1714521600.25], "sessions_30d": [4]})
        assert store.ingest("activity", activity) == 1
        stub.assert_no_pending_responses()
    with pytest.raises(FeatureValidationError, match="undeclared column"):
        store.ingest("profile", profile_rows(extra=1))  # refused before any call


def test_sagemaker_get_record_and_batch_with_retries():
    runtime = runtime_client()
    store = sm_store(runtime)

    def record(cid: int, plan: str) -> list[dict[str, str]]:
        return [
            {"FeatureName": "customer_id", "ValueAsString": str(cid)},
            {"FeatureName": "event_time", "ValueAsString": "2024-05-01T00:00:00.250Z"},
            {"FeatureName": "plan", "ValueAsString": plan},
            {"FeatureName": "tenure_months", "ValueAsString": "7"},
        ]

    group = "demo-dev-customer-profile"
    with Stubber(runtime) as stub:
        stub.add_response(
            "get_record",
            {"Record": record(1, "pro")},
            {"FeatureGroupName": group, "RecordIdentifierValueAsString": "1"},
        )
        stub.add_response(
            "get_record", {}, {"FeatureGroupName": group, "RecordIdentifierValueAsString": "9"}
        )
        ids = [str(i) for i in range(1, 106)]
        first = ids[:100]
        stub.add_response(
            "batch_get_record",
            {
                "Records": [
                    {
                        "FeatureGroupName": group,
                        "RecordIdentifierValueAsString": "1",
                        "Record": record(1, "pro"),
                    }
                ],
                "Errors": [],
                "UnprocessedIdentifiers": [
                    {"FeatureGroupName": group, "RecordIdentifiersValueAsString": ["2"]}
                ],
            },
            {"Identifiers": [{"FeatureGroupName": group, "RecordIdentifiersValueAsString": first}]},
        )
        stub.add_response(
            "batch_get_record",
            {
                "Records": [
                    {
                        "FeatureGroupName": group,
                        "RecordIdentifierValueAsString": "2",
                        "Record": record(2, "basic"),
                    }
                ],
                "Errors": [],
                "UnprocessedIdentifiers": [],
            },
            {"Identifiers": [{"FeatureGroupName": group, "RecordIdentifiersValueAsString": ["2"]}]},
        )
        stub.add_response(
            "batch_get_record",
            {"Records": [], "Errors": [], "UnprocessedIdentifiers": []},
            {
                "Identifiers": [
                    {"FeatureGroupName": group, "RecordIdentifiersValueAsString": ids[100:]}
                ]
            },
        )
        got = store.get_record("profile", 1)
        assert got == {
            "customer_id": 1,
            "event_time": datetime(2024, 5, 1, 0, 0, 0, 250000, tzinfo=UTC),
            "plan": "pro",
            "tenure_months": 7,
            "monthly_charges": None,
        }
        assert store.get_record("profile", 9) is None
        many = store.get_records("profile", list(range(1, 106)))
        assert [r and r["plan"] for r in many[:3]] == ["pro", "basic", None]
        assert len(many) == 105
        stub.assert_no_pending_responses()


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue()


def test_sagemaker_offline_store_reads_the_s3_layout(aws_env, tmp_path):
    # offline_uri is the group's S3Uri; SageMaker writes below it in its own layout
    base = "fs/demo-dev-customer-profile/123456789012/sagemaker/us-east-1/offline-store"
    written = pd.Timestamp("2024-06-01", tz="UTC")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="feat")

        def put(key: str, frame: pd.DataFrame) -> None:
            s3.put_object(Bucket="feat", Key=key, Body=_parquet(frame))

        def sm_rows(cid, times, plans, offset_s):
            return pd.DataFrame(
                {
                    "customer_id": cid,
                    "event_time": times,
                    "plan": plans,
                    "tenure_months": [1] * len(cid),
                    "monthly_charges": [9.5] * len(cid),
                    "write_time": written + pd.Timedelta(seconds=offset_s),
                    "api_invocation_time": written,
                    "is_deleted": False,
                }
            )

        group_dir = f"{base}/demo-dev-customer-profile-1714521600/data"
        # written second (by write_time) but stored under an earlier key: wins the tie
        put(
            f"{group_dir}/year=2024/month=05/day=01/hour=00/a.parquet",
            sm_rows([1], ["2024-05-01T00:00:00Z"], ["newer"], 60),
        )
        put(
            f"{group_dir}/year=2024/month=05/day=01/hour=00/b.parquet",
            sm_rows([1, 2], ["2024-05-01T00:00:00Z", "2024-05-01T06:00:00.500Z"], ["old", "x"], 0),
        )
        # another group with a name that starts the same, and a non-parquet object: ignored
        put(
            f"{base}/demo-dev-customer-profile-v2-1714521600/data/x.parquet",
            sm_rows([9], ["2024-05-01T00:00:00Z"], ["no"], 0),
        )
        s3.put_object(Bucket="feat", Key=f"{group_dir}/_SUCCESS", Body=b"")
        put(  # outside the group's offline_uri
            "fs/other/123456789012/sagemaker/us-east-1/offline-store/"
            "demo-dev-customer-profile-1/data/y.parquet",
            sm_rows([8], ["2024-05-01T00:00:00Z"], ["no"], 0),
        )
        store = sm_store(s3=s3, page_size=1)  # one key per page: pagination is exercised
        offline = store.read_offline("profile")
        assert list(offline.columns) == list(groups("x")["profile"].features)
        assert offline["customer_id"].tolist() == [1, 2, 1]
        assert offline["plan"].tolist() == ["old", "x", "newer"]
        assert offline["event_time"].iloc[1] == T0 + pd.Timedelta("6h500ms")

        labels = pd.DataFrame({"customer_id": [1, 2], "event_time": [T0, T0 + pd.Timedelta("6h")]})
        out = store.training_set(labels, ["profile"])
        assert out["plan"].tolist()[0] == "newer"
        assert pd.isna(out["plan"].iloc[1])  # 06:00:00.500 is after 06:00:00


def test_factory_picks_the_aws_backend(aws_env, tmp_path):
    store = feature_store_from_descriptor(descriptor("aws", tmp_path))
    assert isinstance(store, SageMakerFeatureStore)
    assert store.runtime.meta.service_model.service_name == "sagemaker-featurestore-runtime"
