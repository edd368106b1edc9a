"""Kubernetes endpoints capture to S3: with `dataCapture` on, the serving container writes
SageMaker-layout capture files into the logs bucket under its IRSA role, which may put
objects under exactly that endpoint's prefix; the monitor's CronJob reads the same place.
The render (every stack under Pulumi's mocks) and the writer's uploads (moto) are checked
against each other."""

from __future__ import annotations

import fnmatch
import json
import time
from datetime import UTC, datetime

import boto3
import pytest
from moto import mock_aws

from components.serving_pod import capture_prefixes, serving_pod_spec
from components.spec import load_stack_file
from policy.mlinfra_policies import _statement_problems
from tests.stack_support import STACK_FILES, rendered_stack, stack_name
from workloads.monitoring.reader import ReadStats, read_events
from workloads.serving.capture import Capturer, from_env, version_of_package

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CRONJOB = "kubernetes:batch/v1:CronJob"
REGION = "us-east-1"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/vision-dev-defect-detector/3"


def _serve_container(deployment) -> dict:
    pod = deployment.inputs["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "serve"]
    return container


def _env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _workload_policy(rendered, spec) -> dict:
    (policy,) = [
        p
        for p in rendered.by_type("aws:iam/rolePolicy:RolePolicy")
        if p.inputs["role"] == f"{spec.prefix}-workloads"
    ]
    return json.loads(policy.inputs["policy"])


def _logs_bucket(rendered) -> tuple[str, str]:
    (logs,) = [b for b in rendered.by_type("aws:s3/bucket:Bucket") if b.name == "datalake-logs"]
    return logs.inputs["bucket"], logs.outputs["arn"]


CAPTURING = [
    p
    for p in STACK_FILES
    if any(e.kind == "kubernetes" and e.data_capture.enabled for e in load_stack_file(p).endpoints)
]


def test_some_stack_has_a_capturing_kubernetes_endpoint():
    assert CAPTURING  # else the render tests below would check nothing


@pytest.mark.parametrize("path", STACK_FILES, ids=stack_name)
def test_capturing_kubernetes_endpoints_write_where_the_monitor_reads(path):
    spec = load_stack_file(path)
    rendered = rendered_stack(stack_name(path))
    bucket, logs_arn = _logs_bucket(rendered)
    deployments = {d.inputs["metadata"]["name"]: d for d in rendered.by_type(DEPLOYMENT)}
    jobs = {j.inputs["metadata"]["name"]: j for j in rendered.by_type(CRONJOB)}
    statements = {s["Sid"]: s for s in _workload_policy(rendered, spec)["Statement"]}
    granted = []
    for ep in (e for e in spec.endpoints if e.kind == "kubernetes"):
        physical = spec.physical(ep.name)
        env = _env(_serve_container(deployments[physical]))
        if not ep.data_capture.enabled:
            assert "MLINFRA_CAPTURE_DIR" not in env and f"{physical}-monitor" not in jobs
            continue
        assert env["MLINFRA_CAPTURE_DIR"] == f"s3://{bucket}/data-capture"
        assert env["MLINFRA_ENDPOINT_NAME"] == physical
        assert env["MLINFRA_VARIANT_NAME"] == "AllTraffic"
        assert env["MLINFRA_CAPTURE_PERCENT"] == str(ep.data_capture.sampling_percent)
        assert env["AWS_REGION"] == spec.region
        # the server stamps records with the served version (the pod's model annotation)
        assert env["MODEL_PACKAGE_ARN"] == {
            "fieldRef": {"fieldPath": "metadata.annotations['mlinfra.io/model-package']"}
        }
        container = jobs[f"{physical}-monitor"].inputs["spec"]["jobTemplate"]["spec"]["template"]
        args = container["spec"]["containers"][0]["command"]
        read = args[args.index("--capture") + 1]
        assert read == f"s3://{bucket}/data-capture/{physical}/AllTraffic"
        granted.append(f"{logs_arn}/data-capture/{physical}/AllTraffic/*")
    if not granted:
        assert "WriteEndpointCaptures" not in statements
        return
    write = statements["WriteEndpointCaptures"]
    assert write["Action"] == ["s3:PutObject"] and sorted(write["Resource"]) == sorted(granted)
    assert _statement_problems(write) == []
    # A PutObject into an SSE-KMS bucket needs kms:GenerateDataKey on the bucket's key.
    (sse,) = [
        r
        for r in rendered.by_type(
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
        )
        if r.name == "datalake-logs-encryption"
    ]
    key = sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"]
    assert "kms:GenerateDataKey" in statements["UseTeamKey"]["Action"]
    assert key in statements["UseTeamKey"]["Resource"]
    # nothing else the workloads may do reaches the logs bucket (captures are read only by
    # the monitoring identity)
    for sid, statement in statements.items():
        resources = statement["Resource"]
        resources = resources if isinstance(resources, list) else [resources]
        if sid != "WriteEndpointCaptures":
            assert not any(r.startswith(logs_arn) for r in resources), sid


def test_capture_off_renders_no_capture_and_no_grant():
    spec = load_stack_file(CAPTURING[0])
    ep = next(e for e in spec.endpoints if e.kind == "kubernetes" and e.data_capture.enabled)
    off = ep.model_copy(
        update={"data_capture": ep.data_capture.model_copy(update={"enabled": False})}
    )
    pod = serving_pod_spec(off, "img:1", REGION, "sa")
    names = {e["name"] for c in pod["containers"] for e in c["env"]}
    assert not any(n.startswith("MLINFRA_CAPTURE") for n in names)
    assert capture_prefixes(spec.model_copy(update={"endpoints": [off]})) == []
    with pytest.raises(ValueError, match="capture needs the endpoint's physical name"):
        serving_pod_spec(ep, "img:1", REGION, "sa", capture_destination="s3://logs/data-capture")


# --- the writer's uploads (moto) ----------------------------------------------------------


def _offer(cap: Capturer, n: int) -> None:
    for i in range(n):
        assert cap.offer("text/csv", f"{i},2,pro".encode(), b'{"predictions": ["yes"]}')


def test_the_rendered_pod_env_uploads_into_the_granted_prefix(aws_env):
    path = CAPTURING[0]
    spec = load_stack_file(path)
    rendered = rendered_stack(stack_name(path))
    bucket, logs_arn = _logs_bucket(rendered)
    ep = next(e for e in spec.endpoints if e.kind == "kubernetes" and e.data_capture.enabled)
    physical = spec.physical(ep.name)
    deployment = next(
        d for d in rendered.by_type(DEPLOYMENT) if d.inputs["metadata"]["name"] == physical
    )
    env = {k: v for k, v in _env(_serve_container(deployment)).items() if isinstance(v, str)}
    env |= {"MODEL_PACKAGE_ARN": ARN, "MLINFRA_CAPTURE_PERCENT": "100"}  # as the pod resolves
    grants = _workload_policy(rendered, spec)
    (write,) = [s for s in grants["Statement"] if s["Sid"] == "WriteEndpointCaptures"]
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=bucket)
        cap = from_env(env)
        assert cap is not None and cap.model_version == "3"
        cap.start()
        _offer(cap, 3)
        cap.stop()
        assert cap.stats()["written"] == 3 and cap.stats()["write_errors"] == 0
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        events = list(
            read_events(
                f"s3://{bucket}/data-capture/{physical}/AllTraffic", None, None, ReadStats()
            )
        )
    (key,) = keys
    # the IAM grant covers the object the writer put
    assert any(fnmatch.fnmatchcase(f"{logs_arn}/{key}", r) for r in write["Resource"])
    now = datetime.now(UTC)
    assert key.startswith(f"data-capture/{physical}/AllTraffic/{now:%Y/%m/%d}/")
    assert key.endswith(".jsonl")
    assert [e.inputs for e in events] == [
        [["0", "2", "pro"]],
        [["1", "2", "pro"]],
        [["2", "2", "pro"]],
    ]
    assert {e.model_version for e in events} == {"3"}


def test_each_flush_is_one_object_in_the_sagemaker_layout(aws_env):
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="team-logs")
        cap = Capturer("s3://team-logs/data-capture/", "ep", flush_records=2, s3_client=s3).start()
        _offer(cap, 5)
        cap.stop()
        objects = s3.list_objects_v2(Bucket="team-logs")["Contents"]
        bodies = [s3.get_object(Bucket="team-logs", Key=o["Key"])["Body"].read() for o in objects]
    assert sorted(len(b.splitlines()) for b in bodies) == [1, 2, 2]
    assert all(o["Key"].startswith("data-capture/ep/AllTraffic/") for o in objects)
    record = json.loads(bodies[0].splitlines()[0])
    assert record["captureData"]["endpointInput"]["encoding"] == "CSV"
    assert cap.stats()["files"] == 3


def test_a_refused_upload_is_counted_and_never_reaches_the_request(aws_env):
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)  # no bucket: every PutObject fails
        cap = Capturer("s3://missing/data-capture", "ep", flush_seconds=0.05, s3_client=s3)
        cap.start()
        _offer(cap, 2)
        deadline = time.monotonic() + 20
        while cap.stats()["write_errors"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        _offer(cap, 1)  # the writer survived: still accepting
        cap.stop()
    stats = cap.stats()
    assert stats["write_errors"] >= 1 and stats["written"] == 0 and stats["captured"] == 3


def test_destinations_and_versions_are_checked():
    with pytest.raises(ValueError, match="expected s3://bucket/prefix"):
        Capturer("s3:///data-capture", "ep")
    assert version_of_package(ARN) == "3"
    assert version_of_package("") is None and version_of_package("not-an-arn") is None
    assert (
        from_env({"MLINFRA_CAPTURE_DIR": "/tmp/x", "MODEL_PACKAGE_ARN": ""}).model_version is None
    )
    pinned = {
        "MLINFRA_CAPTURE_DIR": "/tmp/x",
        "MODEL_PACKAGE_ARN": ARN,
        "MLINFRA_MODEL_VERSION": "9",
    }
    assert from_env(pinned).model_version == "9"
