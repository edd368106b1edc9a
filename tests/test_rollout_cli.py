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
