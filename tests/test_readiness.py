"""What a pinned endpoint waits for (components.readiness): the decision, and the boto3
lookup it rests on, against moto (and botocore Stubber for the failures moto cannot make)."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from components.readiness import (
    AccountLookupError,
    AwsAccountState,
    FakeAccount,
    Readiness,
    endpoint_readiness,
)
from components.spec import PlatformSpec, parse_spec

REGION = "us-east-1"


def _spec(endpoint: dict, environment: str = "prod") -> PlatformSpec:
    return parse_spec(
        {
            "mlinfra:team": "ml",
            "mlinfra:environment": environment,
            "mlinfra:costCenter": "cc-1",
            "mlinfra:cluster": {
                "access": {"deployRole": "arn:aws:iam::123456789012:role/mlinfra-deploy"}
            },
            "mlinfra:modelRegistry": {"modelGroups": [{"name": "churn"}]},
            "mlinfra:endpoints": [
                {"name": "api", "modelGroup": "churn", "modelVersion": 4, **endpoint}
            ],
            "mlinfra:budget": {"monthlyLimitUsd": 10, "alertEmails": ["a@example.com"]},
        },
        "test",
    )


SAGEMAKER = _spec({"dataCapture": {"enabled": True}})
KUBERNETES = _spec({"kind": "kubernetes", "imageTag": "1.2.0"})


def _decide(spec: PlatformSpec, account: FakeAccount) -> Readiness:
    return endpoint_readiness(spec, 0, spec.endpoints[0], account)


# --- the decision ---------------------------------------------------------------------------


def test_an_approved_version_is_served():
    account = FakeAccount(packages={("ml-prod-churn", 4): "Approved"})
    assert _decide(SAGEMAKER, account) == Readiness(True)
    account.images.add(("ml-prod-serve", "1.2.0"))
    assert _decide(KUBERNETES, account) == Readiness(True)


def test_a_first_up_waits_and_says_for_what():
    waiting = _decide(SAGEMAKER, FakeAccount.empty())
    assert not waiting.ready
    assert waiting.waiting_for == "model package ml-prod-churn/4 to be registered and approved"
    waiting = _decide(KUBERNETES, FakeAccount.empty())
    assert waiting.waiting_for == (
        "model package ml-prod-churn/4 to be registered and approved "
        "and image ml-prod-serve:1.2.0 to be pushed"
    )


@pytest.mark.parametrize("status", ["PendingManualApproval", "Rejected"])
def test_an_unapproved_version_fails_naming_the_field(status: str):
    account = FakeAccount(packages={("ml-prod-churn", 4): status})
    with pytest.raises(ValueError, match=r"^mlinfra:endpoints\[0\]\.modelVersion: .*" + status):
        _decide(SAGEMAKER, account)


def test_a_serving_endpoint_is_never_dropped_for_a_missing_version():
    """The endpoint exists (created earlier) but its version is gone: fail, do not delete."""
    account = FakeAccount(endpoints={"ml-prod-api"})
    with pytest.raises(ValueError, match=r"modelVersion: endpoint ml-prod-api exists"):
        _decide(SAGEMAKER, account)


def test_an_approved_version_without_its_image_fails_naming_the_tag():
    account = FakeAccount(packages={("ml-prod-churn", 4): "Approved"})
    with pytest.raises(
        ValueError, match=r"^mlinfra:endpoints\[0\]\.imageTag: .*ml-prod-serve:1.2.0"
    ):
        _decide(KUBERNETES, account)


# --- the lookup against the account ---------------------------------------------------------


@pytest.fixture
def aws(aws_env):
    with mock_aws():
        yield AwsAccountState(REGION, session=boto3.Session(region_name=REGION))


def _register(status: str) -> None:
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_model_package_group(ModelPackageGroupName="ml-prod-churn")
    sm.create_model_package(
        ModelPackageGroupName="ml-prod-churn",
        InferenceSpecification={
            "Containers": [
                {
                    "Image": f"123456789012.dkr.ecr.{REGION}.amazonaws.com/ml-prod-serve:1",
                    "ModelDataUrl": "s3://artifacts/model.tar.gz",
                }
            ],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        ModelApprovalStatus=status,
    )


def test_aws_lookup_reads_the_approval_status(aws):
    assert aws.model_package_status("ml-prod-churn", 1) is None  # no group yet: a first up
    _register("PendingManualApproval")
    assert aws.model_package_status("ml-prod-churn", 1) == "PendingManualApproval"
    assert aws.model_package_status("ml-prod-churn", 2) is None


def test_aws_lookup_of_endpoints_and_images(aws):
    assert aws.endpoint_exists("ml-prod-api") is False
    assert aws.image_exists("ml-prod-serve", "1.2.0") is False  # no repository
    ecr = boto3.client("ecr", region_name=REGION)
    ecr.create_repository(repositoryName="ml-prod-serve")
    assert aws.image_exists("ml-prod-serve", "1.2.0") is False  # no such tag
    ecr.put_image(
        repositoryName="ml-prod-serve",
        imageManifest=json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"digest": "sha256:" + "0" * 64, "size": 1, "mediaType": "x"},
                "layers": [],
            }
        ),
        imageTag="1.2.0",
    )
    assert aws.image_exists("ml-prod-serve", "1.2.0") is True


def test_a_lookup_that_fails_is_never_read_as_absent(aws_env):
    """No permission (or throttling) must fail the preview, not make a prod endpoint 'wait'
    (which would drop it): only a not-found answer means absent."""
    session = boto3.Session(region_name=REGION)
    state = AwsAccountState(REGION, session=session)
    state.__dict__["_identity"] = ("aws", "123456789012")
    sagemaker = state._clients["sagemaker"]
    with Stubber(sagemaker) as stub:
        stub.add_client_error(
            "describe_model_package",
            service_error_code="AccessDeniedException",
            http_status_code=400,
        )
        with pytest.raises(AccountLookupError, match="sagemaker:DescribeModelPackage failed"):
            state.model_package_status("ml-prod-churn", 4)
        stub.add_client_error(
            "describe_endpoint", service_error_code="ThrottlingException", http_status_code=400
        )
        with pytest.raises(AccountLookupError, match="sagemaker:DescribeEndpoint failed"):
            state.endpoint_exists("ml-prod-api")
        stub.add_client_error(
            "describe_endpoint",
            service_error_code="ValidationException",
            service_message="Endpoint name must match pattern",
            http_status_code=400,
        )
        with pytest.raises(AccountLookupError):
            state.endpoint_exists("ml-prod-api")
