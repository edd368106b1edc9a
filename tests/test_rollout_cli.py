"""`mlinfra deploy` and `mlinfra batch`: one clear message for bad input, before anything
is created."""

from __future__ import annotations

import boto3
from moto import mock_aws
from typer.testing import CliRunner

from tests.rollout_support import SERVE_REPO, aws_descriptor
from workloads.cli import app
from workloads.registry.store import registry_from_descriptor

runner = CliRunner()


def test_deploy_refuses_bad_input_with_one_message(aws_env, tmp_path, monkeypatch):
    monkeypatch.delenv("MLINFRA_PLATFORM", raising=False)
    descriptor = aws_descriptor()
    path = tmp_path / "platform.json"
    descriptor.write(path)
    with mock_aws():
        boto3.client("sagemaker", region_name="us-east-1").create_model_package_group(
            ModelPackageGroupName="team-dev-churn"
        )
        registry = registry_from_descriptor(descriptor)
        registry.register("churn", "s3://a/1.tar.gz", {"auc": 0.5}, f"{SERVE_REPO}:abc")

        def run_cli(*args: str) -> tuple[int, str]:
            result = runner.invoke(app, list(args))
            return result.exit_code, " ".join(result.output.split())

        def deploy(*args: str) -> tuple[int, str]:
            return run_cli("deploy", *args)

        base = ["--stack", "team-dev", "--platform", str(path)]
        code, out = deploy("churn", *base, "--version", "1")
        assert code == 1 and "churn v1 is PendingManualApproval, not Approved" in out
        code, out = deploy("churn", *base)
        assert code == 1 and "model group 'churn' has no approved version to deploy" in out
        code, out = deploy("nope", *base)
        assert code == 1 and "endpoint 'nope' is not declared in the platform" in out
        code, out = deploy("churn", "--stack", "other", "--platform", str(path))
        assert code == 1 and "the platform descriptor is stack 'team-dev', not 'other'" in out
        code, out = deploy("churn", "--stack", "ghost", "--state-dir", str(tmp_path / "s"))
        assert code == 1 and "no platform descriptor for stack 'ghost'" in out

        # mlinfra batch: the same checks, before any job exists.
        code, out = run_cli("batch", "s3://i/", "s3://o/", "-g", "nope", *base)
        assert code == 1 and "model group 'nope' is not declared in the platform" in out
        code, out = run_cli("batch", "s3://i/", "s3://o/", "-g", "churn", *base)
        assert code == 1 and "model group 'churn' has no approved version" in out


def _client_error() -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}},
        "CreateEndpointConfig",
    )


def _cloud_errors() -> list[tuple[Exception, str]]:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import MaxRetryError

    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = '{"message": "jobs.batch is forbidden: User cannot create"}'
    return [
        (
            _client_error(),
            "AWS refused CreateEndpointConfig: AccessDeniedException: not authorized",
        ),
        (NoCredentialsError(), "AWS: Unable to locate credentials (check the credentials"),
        (
            EndpointConnectionError(endpoint_url="https://127.0.0.1:1"),
            'AWS: Could not connect to the endpoint URL: "https://127.0.0.1:1"',
        ),
        (forbidden, "Kubernetes API: 403 Forbidden: jobs.batch is forbidden: User cannot"),
        (
            MaxRetryError(None, "/apis/batch/v1", reason=ConnectionRefusedError("refused")),
            "Kubernetes API unreachable: refused",
        ),
    ]


def test_cloud_errors_are_one_line_not_a_traceback(tmp_path, monkeypatch):
    """What AWS or the cluster answers (no credentials, access denied, unreachable) ends
    `deploy`, `batch` and the job commands with one line and exit 1."""
    from workloads.jobs import batch, rollout
    from workloads.jobs.sagemaker import SageMakerJobs

    path = tmp_path / "platform.json"
    aws_descriptor().write(path)
    base = ["--stack", "team-dev", "--platform", str(path)]
    for error, expected in _cloud_errors():

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(rollout, "deploy", fail)
        monkeypatch.setattr(batch, "batch", fail)
        monkeypatch.setattr(SageMakerJobs, "list", fail)
        for args in (
            ["deploy", "churn", *base],
            ["batch", "s3://i/", "s3://o/", "-g", "churn", *base],
            ["jobs", "list", *base, "--on", "sagemaker"],
        ):
            result = runner.invoke(app, args)
            out = " ".join(result.output.split())
            assert result.exit_code == 1, (args, out, result.exception)
            assert expected in out, (args, out)
            assert "Traceback" not in out


def test_other_errors_still_surface():
    """Only cloud answers become one line: a bug elsewhere keeps its traceback."""
    from workloads.cli import cloud_error

    assert cloud_error(KeyError("x")) is None
    assert cloud_error(_client_error()) is not None
