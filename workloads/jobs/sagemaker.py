"""Training jobs on SageMaker, through the SageMaker Python SDK v3 (`ModelTrainer`).

Install with the `sagemaker` extra. The SDK is imported only here, only when a job is
submitted, and after its two network switches are set: no IAM role validation at
`ModelTrainer(...)` (the role is the one the stack exported) and telemetry opted out (a
user config file with `TelemetryOptOut: true`). The job is its own record: SageMaker keeps
its channels, hyperparameters, image, state, artifact and final metrics (from the metric
definitions), and the labels as tags. Logs are read from CloudWatch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from workloads.jobs.base import (
    GPU,
    MULTI_NODE,
    SPOT,
    JobBackend,
    JobError,
    JobRequest,
    JobStatus,
    missing_extra,
    register,
)
from workloads.jobs.ecr import check_image_tag
from workloads.jobs.sagemaker_request import (
    TrainingJobPlan,
    channels_of,
    job_state,
    plan_training_job,
    tracked_metrics,
)
from workloads.platform import PlatformDescriptor

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
LIST_LIMIT = 50
CONFIG_OVERRIDE_ENV = "SAGEMAKER_USER_CONFIG_OVERRIDE"
VALIDATE_ROLE_ENV = "SAGEMAKER_VALIDATE_ROLE"
SDK_CONFIG = """\
SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""


def sdk_switches() -> None:
    """Before the SDK is imported: no role validation, no telemetry."""
    os.environ[VALIDATE_ROLE_ENV] = "false"
    if not os.environ.get(CONFIG_OVERRIDE_ENV):
        path = Path(tempfile.gettempdir()) / f"mlinfra-sagemaker-{os.getuid()}.yaml"
        if not path.is_file() or path.read_text() != SDK_CONFIG:
            path.write_text(SDK_CONFIG)
        os.environ[CONFIG_OVERRIDE_ENV] = str(path)


def sdk_missing() -> JobError:
    return missing_extra("SageMaker", "sagemaker", "the SageMaker Python SDK")


def model_trainer(plan: TrainingJobPlan, boto_session: Any, sagemaker_client: Any) -> Any:
    """The SDK's `ModelTrainer` for a plan (nothing is sent): the one place a plan becomes
    SDK settings, for a training job (`SageMakerJobs.trainer`) and for the training jobs of
    a tuning job (`tuning.sagemaker.build_tuner`), so the two cannot drift apart."""
    sdk_switches()
    try:
        from sagemaker.core.helper.session_helper import Session
        from sagemaker.core.shapes.shapes import MetricDefinition
        from sagemaker.core.training.configs import (
            CheckpointConfig,
            Compute,
            InputData,
            Networking,
            OutputDataConfig,
            StoppingCondition,
        )
        from sagemaker.train import ModelTrainer
    except ImportError:
        raise sdk_missing() from None

    stopping: dict[str, int] = {"max_runtime_in_seconds": plan.max_run_seconds}
    if plan.max_wait_seconds is not None:
        stopping["max_wait_time_in_seconds"] = plan.max_wait_seconds
    checkpoints = plan.checkpoint_s3_uri
    trainer = ModelTrainer(
        sagemaker_session=Session(boto_session=boto_session, sagemaker_client=sagemaker_client),
        role=plan.role_arn,
        base_job_name=plan.base_job_name,
        training_image=plan.image,
        compute=Compute(
            instance_type=plan.instance_type,
            instance_count=plan.instance_count,
            volume_size_in_gb=plan.volume_size_gib,
            volume_kms_key_id=plan.volume_kms_key_arn,
            enable_managed_spot_training=plan.spot or None,
        ),
        networking=Networking(
            subnets=plan.subnet_ids or None,
            security_group_ids=plan.security_group_ids or None,
            enable_network_isolation=plan.network_isolation or None,
            enable_inter_container_traffic_encryption=plan.inter_container_encryption or None,
        ),
        stopping_condition=StoppingCondition(**stopping),
        output_data_config=OutputDataConfig(
            s3_output_path=plan.output_s3_uri, kms_key_id=plan.output_kms_key_arn
        ),
        checkpoint_config=CheckpointConfig(s3_uri=checkpoints) if checkpoints else None,
        input_data_config=[
            InputData(channel_name=name, data_source=uri) for name, uri in plan.channels.items()
        ],
        hyperparameters=dict(plan.hyperparameters),
        environment=dict(plan.environment),
        tags=[{"key": k, "value": v} for k, v in plan.tags.items()],
    )
    return trainer.with_metric_definitions(
        [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in plan.metric_definitions]
    )


@register
class SageMakerJobs(JobBackend):
    name = "sagemaker"
    supports = frozenset({MULTI_NODE, GPU, SPOT})
    poll_seconds = 15.0

    def __init__(self, descriptor: PlatformDescriptor, boto_session: Any = None):
        super().__init__(descriptor)
        import boto3

        self.boto_session = boto_session or boto3.Session(region_name=descriptor.region)

    # --- clients -------------------------------------------------------------------------

    def sagemaker_client(self) -> Any:
        """The SDK's own cached client (the one `ModelTrainer` submits through)."""
        sdk_switches()
        try:
            from sagemaker.core.utils.utils import SageMakerClient
        except ImportError:
            raise sdk_missing() from None
        # No region argument: the session has it, and `TrainingJob.create` asks the cache
        # the same way, so both get one client (the one a test's Stubber wraps).
        return SageMakerClient(session=self.boto_session).sagemaker_client

    def _logs_client(self) -> Any:
        return self.boto_session.client("logs", region_name=self.descriptor.region)

    # --- the backend ---------------------------------------------------------------------

    def _check(self, request: JobRequest) -> None:
        if request.pool is not None:
            raise JobError(
                f"--pool {request.pool} is a Kubernetes node pool: on SageMaker choose "
                "--instance-type (or run --on kubernetes)"
            )
        plan_training_job(self.descriptor, request, {})  # raises on what is missing
        assert request.image_tag is not None
        check_image_tag(self.descriptor, request.image_tag, self.boto_session)

    def trainer(self, plan: TrainingJobPlan) -> Any:
        """The SDK's `ModelTrainer` for a plan (nothing is sent)."""
        return model_trainer(plan, self.boto_session, self.sagemaker_client())

    def _submit(self, request: JobRequest, labels: dict[str, str]) -> str:
        trainer = self.trainer(plan_training_job(self.descriptor, request, labels))
        trainer.train(wait=False, logs=False)
        return str(trainer._latest_training_job.training_job_name)

    def _describe(self, job_id: str) -> dict[str, Any]:
        client = self.sagemaker_client()
        try:
            return client.describe_training_job(TrainingJobName=job_id)
        except client.exceptions.ClientError as exc:
            if "ValidationException" in str(exc) or "ResourceNotFound" in str(exc):
                raise JobError(f"no SageMaker training job {job_id!r}") from None
            raise

    def _status(self, job_id: str) -> JobStatus:
        return self._to_status(self._describe(job_id))

    def _to_status(self, d: dict[str, Any], tags: dict[str, str] | None = None) -> JobStatus:
        if tags is None:
            tags = self._tags(d["TrainingJobArn"])
        created = d.get("CreationTime")
        return JobStatus(
            backend=self.name,
            id=d["TrainingJobName"],
            state=job_state(d["TrainingJobStatus"]),  # type: ignore[arg-type]
            reason=d.get("FailureReason") or _secondary(d),
            channels=channels_of(d),
            hyperparameters=dict(d.get("HyperParameters", {})),
            image=d.get("AlgorithmSpecification", {}).get("TrainingImage"),
            artifact_uri=d.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
            metrics=tracked_metrics(d),
            labels=tags,
            created=created.isoformat() if created is not None else None,
        )

    def _tags(self, arn: str) -> dict[str, str]:
        response = self.sagemaker_client().list_tags(ResourceArn=arn)
        return {t["Key"]: t["Value"] for t in response.get("Tags", [])}

    def _read_logs(self, job_id: str, cursor: Any) -> tuple[list[str], Any]:
        """Every stream of the job (one per instance), each from where it was left."""
        logs = self._logs_client()
        tokens: dict[str, str | None] = dict(cursor or {})
        try:
            streams = logs.describe_log_streams(
                logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job_id}/"
            ).get("logStreams", [])
        except logs.exceptions.ResourceNotFoundException:
            return [], tokens  # no log yet: the job is still starting
        lines: list[str] = []
        for stream in sorted(s["logStreamName"] for s in streams):
            kwargs: dict[str, Any] = {
                "logGroupName": LOG_GROUP,
                "logStreamName": stream,
                "startFromHead": True,
            }
            if tokens.get(stream):
                kwargs["nextToken"] = tokens[stream]
            while True:
                page = logs.get_log_events(**kwargs)
                lines.extend(e["message"].rstrip("\n") for e in page.get("events", []))
                token = page.get("nextForwardToken")
                if not page.get("events") or token == kwargs.get("nextToken"):
                    tokens[stream] = token
                    break
                kwargs["nextToken"] = token
        return lines, tokens

    def _cancel(self, job_id: str) -> None:
        if not self._status(job_id).terminal:
            self.sagemaker_client().stop_training_job(TrainingJobName=job_id)

    def _list(self) -> list[JobStatus]:
        client = self.sagemaker_client()
        summaries = client.list_training_jobs(
            SortBy="CreationTime", SortOrder="Descending", MaxResults=LIST_LIMIT
        ).get("TrainingJobSummaries", [])
        out = []
        for summary in summaries:
            tags = self._tags(summary["TrainingJobArn"])
            if tags.get("mlinfra.io/stack") == self.descriptor.stack:
                out.append(self._to_status(self._describe(summary["TrainingJobName"]), tags))
        return out


def _secondary(describe: dict[str, Any]) -> str | None:
    """While running: SageMaker's secondary status (Starting, Downloading, Training...)."""
    if describe.get("TrainingJobStatus") != "InProgress":
        return None
    return describe.get("SecondaryStatus")
