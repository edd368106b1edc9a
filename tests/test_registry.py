"""The model registry: the local backend on real files, the SageMaker backend on moto/Stubber."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from workloads.platform import (
    ApprovalGate,
    Buckets,
    FeatureStore,
    LocalState,
    ModelGroupRef,
    PlatformDescriptor,
    Registry,
)
from workloads.registry.store import (
    LocalModelRegistry,
    RegistryError,
    SageMakerModelRegistry,
    UnknownGroupError,
    gate_passes,
    registry_from_descriptor,
)
from workloads.storage import CorruptStoreError

GROUPS = {
    "churn": ModelGroupRef(
        name="demo-dev-churn", gate=ApprovalGate(metric="accuracy", threshold=0.7, mode="max")
    ),
    "price": ModelGroupRef(
        name="demo-dev-price", gate=ApprovalGate(metric="rmse", threshold=2.0, mode="min")
    ),
    "manual": ModelGroupRef(name="demo-dev-manual", gate=None),
}
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/demo-dev-serve:0.1.0"


def descriptor(backend: str, root: Path | None = None) -> PlatformDescriptor:
    local = None
    if root is not None:
        local = LocalState(
            root=str(root), online_store=str(root / "online.db"), registry=str(root / "registry")
        )
    return PlatformDescriptor(
        backend=backend,
        stack="demo-dev",
        team="demo",
        environment="dev",
        region="us-east-1",
        buckets=Buckets(raw="s3://r", features="s3://f", artifacts="s3://a", logs="s3://l"),
        feature_store=FeatureStore(database=None, groups={}),
        registry=Registry(model_groups=GROUPS, repositories={"serve": IMAGE.split(":")[0]}),
        endpoints={},
        cluster=None,
        local=local,
    )


@pytest.fixture
def local(tmp_path) -> LocalModelRegistry:
    registry = registry_from_descriptor(descriptor("local", tmp_path))
    assert isinstance(registry, LocalModelRegistry)
    return registry


@pytest.fixture
def sagemaker(aws_env):
    with mock_aws():
        client = boto3.client("sagemaker", region_name="us-east-1")
        for ref in GROUPS.values():
            client.create_model_package_group(ModelPackageGroupName=ref.name)
        registry = registry_from_descriptor(
            descriptor("aws"), session=boto3.Session(region_name="us-east-1")
        )
        assert isinstance(registry, SageMakerModelRegistry)
        yield registry


# --- the behaviour both backends share ------------------------------------------------------


@pytest.fixture(params=["local", "sagemaker"])
def registry(request):
    return request.getfixturevalue(request.param)


def test_versions_number_from_one_per_group_and_transition(registry):
    v1 = registry.register("churn", "file:///m/1", {"accuracy": 0.81}, IMAGE, "first")
    v2 = registry.register("churn", "file:///m/2", {"accuracy": 0.84, "f1": 0.5}, IMAGE)
    other = registry.register("price", "file:///p/1", {"rmse": 1.5}, IMAGE)
    assert (v1.version, v2.version, other.version) == (1, 2, 1)
    assert v1.status == "PendingManualApproval" and v1.description == "first"
    assert v1.model_uri == "file:///m/1" and v1.image == IMAGE
    assert v2.metrics == {"accuracy": 0.84, "f1": 0.5}
    assert v1.created_at.tzinfo is not None
    assert registry.latest_approved("churn") is None

    approved = registry.approve("churn", 1, reason="passed the gate")
    assert approved.status == "Approved"
    assert approved.metrics == {"accuracy": 0.81}  # kept across the status change
    assert registry.latest_approved("churn").version == 1
    registry.approve("churn", 2)
    assert registry.latest_approved("churn").version == 2
    assert registry.reject("churn", 2, reason="rolled back").status == "Rejected"
    assert registry.latest_approved("churn").version == 1
    assert [(v.version, v.status) for v in registry.list_versions("churn")] == [
        (1, "Approved"),
        (2, "Rejected"),
    ]
    assert registry.get("churn", 2).model_uri == "file:///m/2"
    assert registry.latest_approved("price") is None


def test_bad_requests_are_refused_with_clear_errors(registry):
    registry.register("churn", "file:///m/1", {"accuracy": 0.9}, IMAGE)
    with pytest.raises(RegistryError, match="'churn' has no version 7 \\(versions 1-1\\)"):
        registry.approve("churn", 7)
    with pytest.raises(RegistryError, match="has no version 1 \\(no versions yet\\)"):
        registry.get("price", 1)
    with pytest.raises(RegistryError, match="positive integer"):
        registry.get("churn", 0)
    with pytest.raises(RegistryError, match="status 'Deployed' is not one of"):
        registry.set_status("churn", 1, "Deployed")
    with pytest.raises(RegistryError, match="metric 'accuracy': 'high' is not a number"):
        registry.register("churn", "file:///m/2", {"accuracy": "high"}, IMAGE)
    with pytest.raises(UnknownGroupError) as err:
        registry.register("fraud", "file:///m/1", {}, IMAGE)
    assert "'fraud' is not declared" in str(err.value) and "churn, manual, price" in str(err.value)
    assert isinstance(err.value, KeyError)
    # nothing half-registered by the refused calls
    assert [v.version for v in registry.list_versions("churn")] == [1]


def test_gate():
    gate = ApprovalGate(metric="accuracy", threshold=0.7, mode="max")
    assert gate_passes(gate, {"accuracy": 0.7})
    assert not gate_passes(gate, {"accuracy": 0.69})
    assert not gate_passes(gate, {"r2": 0.99})  # the metric is missing
    assert not gate_passes(gate, {"accuracy": float("nan")})
    assert gate_passes(ApprovalGate(metric="rmse", threshold=2, mode="min"), {"rmse": 1.9})
    assert not gate_passes(None, {"accuracy": 1.0})  # no gate: a person approves


def test_passes_gate_uses_the_descriptor(local):
    assert local.passes_gate("churn", {"accuracy": 0.75})
    assert not local.passes_gate("price", {"rmse": 2.5})
    assert not local.passes_gate("manual", {"accuracy": 1.0})
    with pytest.raises(UnknownGroupError):
        local.passes_gate("nope", {})


# --- local: persistence, concurrency, crashes -----------------------------------------------


def test_local_state_survives_a_new_client(local, tmp_path):
    local.register("churn", "file:///m/1", {"accuracy": 0.9})
    local.approve("churn", 1)
    again = registry_from_descriptor(descriptor("local", tmp_path))
    assert again.latest_approved("churn").version == 1
    assert again.register("churn", "file:///m/2", {}).version == 2


def _register_many(args: tuple[str, int, str]) -> list[int]:
    root, count, artifact = args
    registry = LocalModelRegistry(root, GROUPS)
    return [
        registry.register("churn", artifact.format(i=i), {"accuracy": 0.5}).version
        for i in range(count)
    ]


def test_local_versions_are_unique_under_concurrent_registration(tmp_path):
    root = str(tmp_path / "registry")
    LocalModelRegistry(root, GROUPS)  # create the schema once, as `mlinfra up` does
    jobs = [(root, 15, f"file:///m/{worker}-{{i}}") for worker in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_register_many, jobs)
    versions = sorted(v for chunk in results for v in chunk)
    assert versions == list(range(1, 61))
    for chunk in results:
        assert chunk == sorted(chunk)  # each process sees its own versions increase
    listed = LocalModelRegistry(root, GROUPS).list_versions("churn")
    assert [v.version for v in listed] == list(range(1, 61))


def test_an_artifact_is_registered_once_per_group_even_by_concurrent_processes(tmp_path):
    root = str(tmp_path / "registry")
    registry = LocalModelRegistry(root, GROUPS)
    # Four processes register the same two artifacts at once (two pipelines in `register`).
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_register_many, [(root, 2, "file:///m/run-{i}")] * 4)
    assert results == [[1, 2]] * 4
    listed = registry.list_versions("churn")
    assert [(v.version, v.model_uri) for v in listed] == [
        (1, "file:///m/run-0"),
        (2, "file:///m/run-1"),
    ]
    # The same artifact in another group is that group's own version.
    assert registry.register("manual", "file:///m/run-0", {}).version == 1
    again = registry.register("churn", "file:///m/run-1", {"accuracy": 0.99})
    assert (again.version, again.metrics) == (2, {"accuracy": 0.5})  # the first registration


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(b"", "is empty (0 bytes"), (b"garbage, not SQLite" * 500, "cannot be read")],
)
def test_a_damaged_registry_is_an_error_never_an_empty_registry(tmp_path, damage, reason):
    root = tmp_path / "registry"
    LocalModelRegistry(root, GROUPS).register("churn", "file:///m/1", {"accuracy": 0.9})
    (root / "registry.db").write_bytes(damage)
    with pytest.raises(CorruptStoreError) as caught:
        registry_from_descriptor(descriptor("local", tmp_path)).list_versions("churn")
    message = str(caught.value)
    assert str(root / "registry.db") in message and reason in message
    assert "restore it from a backup" in message
    assert (root / "registry.db").read_bytes() == damage  # not recreated as an empty store


def test_local_crash_before_commit_leaves_no_half_registered_version(tmp_path):
    root = tmp_path / "registry"
    LocalModelRegistry(root, GROUPS).register("churn", "file:///m/1", {"accuracy": 0.9})
    # A process that dies (no cleanup, no rollback) just before its COMMIT.
    code = textwrap.dedent(
        f"""
        import os
        from workloads.registry.store import LocalModelRegistry
        from tests.test_registry import GROUPS

        class Dying:
            def __init__(self, con):
                self.con = con
            def execute(self, sql, *args):
                if sql == "COMMIT":
                    os._exit(3)
                return self.con.execute(sql, *args)
            def __getattr__(self, name):
                return getattr(self.con, name)

        registry = LocalModelRegistry({str(root)!r}, GROUPS)
        connect = registry._connect
        registry._connect = lambda: Dying(connect())
        registry.register("churn", "file:///m/2", {{"accuracy": 0.1}})
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1])
    assert done.returncode == 3
    registry = LocalModelRegistry(root, GROUPS)
    assert [v.version for v in registry.list_versions("churn")] == [1]
    assert registry.register("churn", "file:///m/3", {}).version == 2


# --- SageMaker specifics ----------------------------------------------------------------------


def test_sagemaker_package_carries_image_artifact_and_metrics(sagemaker):
    version = sagemaker.register(
        "churn", "s3://a/models/churn/model.tar.gz", {"accuracy": 0.8}, image=IMAGE
    )
    package = sagemaker.client.describe_model_package(ModelPackageName=version.arn)
    assert package["ModelPackageGroupName"] == "demo-dev-churn"
    container = package["InferenceSpecification"]["Containers"][0]
    assert container == {"Image": IMAGE, "ModelDataUrl": version.model_uri}
    assert package["CustomerMetadataProperties"] == {"metric:accuracy": "0.8"}
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert version.arn.endswith("/demo-dev-churn/1")


def test_sagemaker_image_comes_from_the_serve_repository_at_a_named_tag(aws_env):
    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        session.client("sagemaker").create_model_package_group(
            ModelPackageGroupName=GROUPS["churn"].name
        )
        untagged = registry_from_descriptor(descriptor("aws"), session=session)
        # Immutable tags: no `latest` to guess, so an image must be named.
        with pytest.raises(RegistryError, match="image"):
            untagged.register("churn", "s3://a/model.tar.gz", {"accuracy": 0.8})
        tagged = registry_from_descriptor(descriptor("aws"), session=session, serve_image_tag="2.0")
        version = tagged.register("churn", "s3://a/model.tar.gz", {"accuracy": 0.8})
        assert version.image == IMAGE.replace("0.1.0", "2.0")


def test_sagemaker_status_change_always_sends_the_status():
    client = boto3.client(
        "sagemaker",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    registry = SageMakerModelRegistry(GROUPS, client=client, default_image=IMAGE)
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/demo-dev-churn/2"
    package = {
        "ModelPackageName": "demo-dev-churn",
        "ModelPackageArn": arn,
        "ModelPackageVersion": 2,
        "ModelPackageDescription": "",
        "CreationTime": datetime(2026, 1, 1, tzinfo=UTC),
        "ModelPackageStatus": "Completed",
        "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
        "InferenceSpecification": {
            "Containers": [{"Image": IMAGE, "ModelDataUrl": "s3://a/m.tar.gz"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "CustomerMetadataProperties": {"metric:accuracy": "0.9"},
        "ModelApprovalStatus": "PendingManualApproval",
    }
    summary = {
        "ModelPackageName": "demo-dev-churn",
        "ModelPackageArn": arn,
        "ModelPackageVersion": 2,
        "CreationTime": package["CreationTime"],
        "ModelPackageStatus": "Completed",
    }
    first = {**summary, "ModelPackageArn": arn[:-1] + "1", "ModelPackageVersion": 1}
    with Stubber(client) as stub:
        # Two pages: the version is found on the second.
        stub.add_response(
            "list_model_packages",
            {"ModelPackageSummaryList": [first], "NextToken": "page2"},
            {
                "ModelPackageGroupName": "demo-dev-churn",
                "SortBy": "CreationTime",
                "SortOrder": "Descending",
            },
        )
        stub.add_response(
            "list_model_packages",
            {"ModelPackageSummaryList": [summary]},
            {
                "ModelPackageGroupName": "demo-dev-churn",
                "SortBy": "CreationTime",
                "SortOrder": "Descending",
                "NextToken": "page2",
            },
        )
        stub.add_response("describe_model_package", package, {"ModelPackageName": arn})
        stub.add_response(
            "update_model_package",
            {"ModelPackageArn": arn},
            {
                "ModelPackageArn": arn,
                "ModelApprovalStatus": "Rejected",
                "ApprovalDescription": "bad drift",
                "CustomerMetadataProperties": {"metric:accuracy": "0.9"},
            },
        )
        stub.add_response(
            "describe_model_package",
            {**package, "ModelApprovalStatus": "Rejected"},
            {"ModelPackageName": arn},
        )
        rejected = registry.reject("churn", 2, reason="bad drift")
        stub.assert_no_pending_responses()
    assert rejected.status == "Rejected" and rejected.version == 2
    assert rejected.metrics == {"accuracy": 0.9}


def test_sagemaker_needs_an_image(aws_env):
    with mock_aws():
        client = boto3.client("sagemaker", region_name="us-east-1")
        registry = SageMakerModelRegistry(GROUPS, client=client)
        with pytest.raises(RegistryError, match="serving image"):
            registry.register("churn", "s3://a/m.tar.gz", {})
