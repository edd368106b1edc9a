"""The Kubernetes endpoint's init container script (components.serving_pod.FETCH_MODEL),
run in-process against moto: it fetches the package the pod annotation names, or says that
no model is deployed yet."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from components.serving_pod import FETCH_MODEL

REGION = "us-east-1"


def _run(monkeypatch, arn: str, model_dir: Path) -> None:
    monkeypatch.setenv("MODEL_PACKAGE_ARN", arn)
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
    exec(compile(FETCH_MODEL, "fetch-model", "exec"), {"__name__": "__main__"})


def test_no_model_deployed_yet_exits_with_the_reason(monkeypatch, tmp_path):
    with pytest.raises(SystemExit, match="no model deployed.*mlinfra deploy"):
        _run(monkeypatch, "", tmp_path)


def test_the_annotated_package_is_fetched_and_unpacked(monkeypatch, tmp_path, aws_env):
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="artifacts")
        payload = io.BytesIO()
        with tarfile.open(fileobj=payload, mode="w:gz") as tar:
            data = b'{"task": "tabular"}'
            info = tarfile.TarInfo("model.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        s3.put_object(Bucket="artifacts", Key="churn/7/model.tar.gz", Body=payload.getvalue())
        sm = boto3.client("sagemaker", region_name=REGION)
        sm.create_model_package_group(ModelPackageGroupName="ml-dev-churn")
        arn = sm.create_model_package(
            ModelPackageGroupName="ml-dev-churn",
            InferenceSpecification={
                "Containers": [
                    {
                        "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ml-dev-serve:1",
                        "ModelDataUrl": "s3://artifacts/churn/7/model.tar.gz",
                    }
                ],
                "SupportedContentTypes": ["text/csv"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
        )["ModelPackageArn"]
        _run(monkeypatch, arn, tmp_path)
    assert (tmp_path / "model.json").read_text() == '{"task": "tabular"}'
