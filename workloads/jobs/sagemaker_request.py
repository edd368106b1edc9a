"""What a SageMaker training job of the team is made of: a pure plan, no SDK, no network.

`plan_training_job(descriptor, request, labels)` decides every field (image at an
immutable tag, the training role, private subnets and security group, the team key on
volume and output, spot with a checkpoint URI and a max wait, output into the artifacts
bucket, metric definitions from the metric line); `workloads.jobs.sagemaker` hands the
plan to the SDK's `ModelTrainer`. Tests read the plan and the request the SDK sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from workloads.jobs.base import JobError, JobRequest, image_uri
from workloads.platform import PlatformDescriptor
from workloads.training.metric_line import sagemaker_metric_definitions

DEFAULT_INSTANCE_TYPE = "ml.m5.xlarge"
DEFAULT_VOLUME_GIB = 50
# The metrics the harness reports (per epoch and final); the gate's metric is added.
TRACKED_METRICS = (
    "train_loss",
    "validation_loss",
    "accuracy",
    "log_loss",
    "auc",
    "r2",
    "rmse",
    "mae",
)
MAX_RUN_SECONDS = 28 * 24 * 3600  # SageMaker's MaxRuntimeInSeconds cap
CHANNELS_ROOT = "/opt/ml/input/data"
ENVIRONMENT_VALUE_LIMIT = 512  # CreateTrainingJob: each Environment value


@dataclass(frozen=True)
class TrainingJobPlan:
    base_job_name: str
    image: str
    role_arn: str
    instance_type: str
    instance_count: int
    volume_size_gib: int
    volume_kms_key_arn: str
    spot: bool
    max_run_seconds: int
    max_wait_seconds: int | None
    checkpoint_s3_uri: str | None  # None: no CheckpointConfig (a tuning job's trials)
    output_s3_uri: str
    output_kms_key_arn: str
    subnet_ids: list[str]
    security_group_ids: list[str]
    channels: dict[str, str]
    hyperparameters: dict[str, str]
    metric_definitions: list[dict[str, str]]
    tags: dict[str, str]
    environment: dict[str, str] = field(default_factory=dict)
    network_isolation: bool = False  # EnableNetworkIsolation (no stack asks for it yet)

    @property
    def inter_container_encryption(self) -> bool:
        """Encrypt traffic between the instances of a job that has more than one."""
        return self.instance_count > 1


def metric_names(descriptor: PlatformDescriptor, model_group: str | None) -> list[str]:
    names: list[str] = list(TRACKED_METRICS)
    if model_group:
        gate = descriptor.registry.model_groups[model_group].gate
        if gate is not None:
            names.append(gate.metric)
    return names


def sagemaker_tags(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels as SageMaker tags (keys and values as they are: '/' and '.' are allowed)."""
    return dict(labels)


def plan_training_job(
    descriptor: PlatformDescriptor,
    request: JobRequest,
    labels: Mapping[str, str],
    *,
    extra_metrics: Iterable[str] = (),
) -> TrainingJobPlan:
    training = descriptor.training
    if training is None:
        raise JobError(
            f"stack {descriptor.stack!r} exports no SageMaker training settings (role, "
            "subnets, security group, key): run `pulumi up` with this version first"
        )
    if request.image_tag is None:
        raise JobError(
            "--image TAG is required on SageMaker: a tag of the team's training repository "
            "(tags are immutable; there is no 'latest')"
        )
    max_run = request.max_run_seconds
    if not 1 <= max_run <= MAX_RUN_SECONDS:
        raise JobError(f"max run {max_run} s: allowed 1..{MAX_RUN_SECONDS}")
    max_wait = None
    if request.spot:
        # Spot: MaxWaitTimeInSeconds >= MaxRuntimeInSeconds, both in one cap.
        max_wait = request.max_wait_seconds or min(2 * max_run, MAX_RUN_SECONDS)
        if max_wait < max_run:
            raise JobError(f"max wait {max_wait} s is shorter than the max run {max_run} s")
    artifacts = descriptor.buckets.artifacts.rstrip("/")
    return TrainingJobPlan(
        base_job_name=request.name,
        image=image_uri(descriptor, request.image_tag),
        role_arn=training.role_arn,
        instance_type=request.instance_type or DEFAULT_INSTANCE_TYPE,
        instance_count=request.nodes,
        volume_size_gib=DEFAULT_VOLUME_GIB,
        volume_kms_key_arn=training.kms_key_arn,
        spot=request.spot,
        max_run_seconds=max_run,
        max_wait_seconds=max_wait,
        # One prefix per job name: a restarted spot job of the same name resumes from it.
        checkpoint_s3_uri=f"{artifacts}/checkpoints/{request.name}",
        output_s3_uri=f"{artifacts}/jobs",
        output_kms_key_arn=training.kms_key_arn,
        subnet_ids=list(training.subnet_ids),
        security_group_ids=list(training.security_group_ids),
        channels=dict(request.channels),
        hyperparameters={k: str(v) for k, v in request.hyperparameters.items()},
        metric_definitions=sagemaker_metric_definitions(
            [*metric_names(descriptor, request.model_group), *extra_metrics]
        ),
        tags=sagemaker_tags(labels),
    )


def job_state(status: str) -> str:
    """SageMaker's TrainingJobStatus as the job API's state."""
    return {
        "InProgress": "Running",
        "Completed": "Completed",
        "Failed": "Failed",
        "Stopping": "Running",
        "Stopped": "Stopped",
    }.get(status, "Pending")


def final_metrics(describe: Mapping) -> dict[str, float]:
    return {m["MetricName"]: float(m["Value"]) for m in describe.get("FinalMetricDataList", [])}


def tracked_metrics(describe: Mapping) -> dict[str, float]:
    """The final values of our metric definitions (not SageMaker's own `train:progress`...)."""
    spec = describe.get("AlgorithmSpecification", {})
    names = {m["Name"] for m in spec.get("MetricDefinitions", [])}
    return {k: v for k, v in final_metrics(describe).items() if k in names}


def channels_of(describe: Mapping) -> dict[str, str]:
    out = {}
    for channel in describe.get("InputDataConfig", []):
        source = channel.get("DataSource", {}).get("S3DataSource", {})
        if "S3Uri" in source:
            out[channel["ChannelName"]] = source["S3Uri"]
    return out
