"""Endpoints: the serving image behind a SageMaker real-time endpoint or a Kubernetes service.

`kind: sagemaker` builds a Model, an EndpointConfiguration (with data capture into the logs
bucket) and an Endpoint, an Application Auto Scaling target with a target-tracking policy on
invocations per instance, and alarms on 5XX errors and latency. `kind: kubernetes` builds a
Deployment on a named node pool, a ClusterIP Service and a HorizontalPodAutoscaler in the
team namespace. Both run `<serve repository>:<imageTag>` and load the model the same way:
a pinned model package version when `modelVersion` is set, otherwise the artifact the
rollout step puts at `s3://<artifacts>/models/<model group>/current/model.tar.gz`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.iam import assume_role_policy
from components.registry import repository_name
from components.spec import EndpointSpec, PlatformSpec

VARIANT = "AllTraffic"
SERVE_PORT = 8080  # the SageMaker hosting contract
# Nodes carry this label with their pool's name ("system" for the system pool).
POOL_LABEL = "mlinfra.io/pool"
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_DIR = "/opt/ml/model"
# A non-root user the serving image runs as (any UID works: the root filesystem is read-only).
RUN_AS_USER = 1000  # the `mlinfra` user of docker/serve.Dockerfile
HPA_CPU_UTILIZATION = 70
SCALE_IN_COOLDOWN_S = 300  # scale in slowly: a cold instance takes minutes to serve
SCALE_OUT_COOLDOWN_S = 60
ERRORS_PERIOD_S = 300  # `max5xxErrors` counts 5XX responses per 5 minutes
LATENCY_PERIOD_S = 60
LATENCY_STATISTIC = "p90"

# SageMaker refuses a KMS key on endpoint configs whose instances have local NVMe storage
# (it is always encrypted by the hardware): g4dn, g5, g6, p4d, p5, trn1 and the "d" types.
_INSTANCE_STORE_FAMILIES = {"g5", "g6", "g6e", "p5", "p5e", "p5en", "trn1", "trn1n"}
_INSTANCE_STORE_RE = re.compile(r"^[a-z]+[0-9]+[a-z]*d[a-z]*$")

# The init container that puts the model into MODEL_DIR on Kubernetes, as SageMaker does
# before it starts the serving container. Runs in the serving image (Python and boto3).
FETCH_MODEL = """\
import os, tarfile, tempfile
from urllib.parse import urlparse
import boto3
url = os.environ.get("MODEL_DATA_URL")
if os.environ.get("MODEL_PACKAGE_ARN"):
    pkg = boto3.client("sagemaker").describe_model_package(
        ModelPackageName=os.environ["MODEL_PACKAGE_ARN"])
    url = pkg["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
src = urlparse(url)
with tempfile.TemporaryFile() as f:
    boto3.client("s3").download_fileobj(src.netloc, src.path.lstrip("/"), f)
    f.seek(0)
    with tarfile.open(fileobj=f) as tar:
        tar.extractall(os.environ["MODEL_DIR"], filter="data")
print("model from", url, "in", os.environ["MODEL_DIR"])
"""


def current_model_key(model_group: str) -> str:
    """Where the rollout step puts the approved model of a group in the artifacts bucket."""
    return f"models/{model_group}/current/model.tar.gz"


def data_capture_uri(logs_bucket: str, endpoint_name: str) -> str:
    return f"s3://{logs_bucket}/data-capture/{endpoint_name}"


def has_instance_storage(instance_type: str) -> bool:
    """True for SageMaker instance types with local NVMe volumes (ml.g5.xlarge, ml.m5d.large)."""
    family = instance_type.split(".")[1]
    return family in _INSTANCE_STORE_FAMILIES or bool(_INSTANCE_STORE_RE.match(family))


def model_package_arn(
    partition: str, region: str, account: str, group_name: str, version: int
) -> str:
    # SageMaker ARNs carry resource names in lowercase.
    return (
        f"arn:{partition}:sagemaker:{region}:{account}:model-package/{group_name.lower()}/{version}"
    )


@dataclass
class EndpointsArgs:
    spec: PlatformSpec
    serve_repository_url: pulumi.Input[str]
    artifacts_bucket: pulumi.Input[str]
    logs_bucket: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    security_group_id: pulumi.Input[str]
    model_group_names: dict[str, pulumi.Input[str]]  # spec model group -> physical name
    k8s_provider: k8s.Provider | None = None
    namespace: pulumi.Input[str] | None = None
    # The team's IRSA service account, so Kubernetes endpoints can fetch their model.
    service_account: pulumi.Input[str] | None = None


class Endpoints(pulumi.ComponentResource):
    """Every endpoint in the spec, on SageMaker or on the team's Kubernetes namespace."""

    endpoint_names: dict[str, pulumi.Output[str]]
    endpoint_urls: dict[str, pulumi.Output[str] | None]

    def __init__(self, name: str, args: EndpointsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:endpoints:Endpoints", name, None, opts)
        self._args = args
        spec = args.spec
        _check(spec, args)
        invoke = pulumi.InvokeOptions(parent=self)
        self._partition = aws.get_partition_output(opts=invoke).partition
        self._account = aws.get_caller_identity_output(opts=invoke).account_id
        self._image = pulumi.Output.concat(args.serve_repository_url, ":")

        sagemaker = [ep for ep in spec.endpoints if ep.kind == "sagemaker"]
        self._role = self._execution_role(name, sagemaker) if sagemaker else None
        self._alarm_topic = self._alarm_topic_for(name) if sagemaker else None

        self.endpoint_names = {}
        self.endpoint_urls = {}
        for ep in spec.endpoints:
            if ep.kind == "sagemaker":
                self.endpoint_names[ep.name] = self._sagemaker(ep)
                self.endpoint_urls[ep.name] = None
            else:
                self.endpoint_names[ep.name], self.endpoint_urls[ep.name] = self._kubernetes(ep)

        self.register_outputs(
            {"endpoint_names": self.endpoint_names, "endpoint_urls": self.endpoint_urls}
        )

    # --- shared ---------------------------------------------------------------------------

    def _package_arn(self, ep: EndpointSpec) -> pulumi.Output[str]:
        return pulumi.Output.all(
            self._partition, self._account, self._args.model_group_names[ep.model_group]
        ).apply(
            lambda a: model_package_arn(a[0], self._args.spec.region, a[1], a[2], ep.model_version)
        )

    def _model_data_url(self, ep: EndpointSpec) -> pulumi.Output[str]:
        return pulumi.Output.concat(
            "s3://", self._args.artifacts_bucket, "/", current_model_key(ep.model_group)
        )

    # --- SageMaker ------------------------------------------------------------------------

    def _alarm_topic_for(self, name: str) -> aws.sns.Topic:
        """Where endpoint alarms go: an encrypted topic mailing the team's alert recipients.

        CloudWatch may publish to it only for this account's alarms, and may use the team key
        for that (the data lake's key policy lets it).
        """
        spec, child = self._args.spec, pulumi.ResourceOptions(parent=self)
        topic = aws.sns.Topic(
            f"{name}-alarms",
            name=f"{spec.prefix}-endpoint-alarms",
            kms_master_key_id=self._args.kms_key_arn,
            tags=spec.tags,
            opts=child,
        )
        aws.sns.TopicPolicy(
            f"{name}-alarms-policy",
            arn=topic.arn,
            policy=pulumi.Output.all(topic.arn, self._account).apply(
                lambda a: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "CloudWatchAlarmsOfThisAccount",
                                "Effect": "Allow",
                                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                                "Action": "sns:Publish",
                                "Resource": a[0],
                                "Condition": {"StringEquals": {"aws:SourceAccount": a[1]}},
                            }
                        ],
                    }
                )
            ),
            opts=child,
        )
        for i, email in enumerate(spec.budget.alert_emails):
            aws.sns.TopicSubscription(
                f"{name}-alarms-{i}",
                topic=topic.arn,
                protocol="email",
                endpoint=email,
                opts=child,
            )
        return topic

    def _execution_role(self, name: str, endpoints: list[EndpointSpec]) -> aws.iam.Role:
        spec, args = self._args.spec, self._args
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-sagemaker-role",
            name=f"{spec.prefix}-endpoints",
            description="Assumed by the team's SageMaker endpoints",
            assume_role_policy=assume_role_policy("sagemaker.amazonaws.com"),
            tags=spec.tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-sagemaker-role-policy",
            role=role.id,
            policy=pulumi.Output.all(
                partition=self._partition,
                account=self._account,
                region=spec.region,
                prefix=spec.prefix,
                artifacts_bucket=args.artifacts_bucket,
                logs_bucket=args.logs_bucket,
                kms_key_arn=args.kms_key_arn,
                repository=repository_name(spec, "serve"),
            ).apply(lambda a: json.dumps(execution_policy(**a))),
            opts=child,
        )
        return role

    def _sagemaker(self, ep: EndpointSpec) -> pulumi.Output[str]:
        spec, args = self._args.spec, self._args
        child = pulumi.ResourceOptions(parent=self)
        physical = f"{spec.prefix}-{ep.name}"
        assert self._role is not None

        if ep.model_version is not None:
            # The package carries its image and artifact, as registered and approved.
            container = aws.sagemaker.ModelPrimaryContainerArgs(
                model_package_name=self._package_arn(ep)
            )
        else:
            container = aws.sagemaker.ModelPrimaryContainerArgs(
                image=pulumi.Output.concat(self._image, ep.image_tag),
                model_data_url=self._model_data_url(ep),
                mode="SingleModel",
            )
        # Model and config are immutable in SageMaker: no fixed name, so a change creates a
        # new one (autonamed from the logical name) before the endpoint switches over to it.
        model = aws.sagemaker.Model(
            physical,
            execution_role_arn=self._role.arn,
            primary_container=container,
            vpc_config=aws.sagemaker.ModelVpcConfigArgs(
                subnets=args.subnet_ids, security_group_ids=[args.security_group_id]
            ),
            # The server needs no network: SageMaker fetches the model and the image.
            enable_network_isolation=True,
            tags=spec.tags,
            opts=child,
        )

        capture = None
        if ep.data_capture.enabled:
            capture = aws.sagemaker.EndpointConfigurationDataCaptureConfigArgs(
                enable_capture=True,
                initial_sampling_percentage=ep.data_capture.sampling_percent,
                destination_s3_uri=pulumi.Output.from_input(args.logs_bucket).apply(
                    lambda b: data_capture_uri(b, physical)
                ),
                kms_key_id=args.kms_key_arn,
                capture_options=[
                    aws.sagemaker.EndpointConfigurationDataCaptureConfigCaptureOptionArgs(
                        capture_mode=mode
                    )
                    for mode in ("Input", "Output")
                ],
                capture_content_type_header=aws.sagemaker.EndpointConfigurationDataCaptureConfigCaptureContentTypeHeaderArgs(
                    json_content_types=["application/json"], csv_content_types=["text/csv"]
                ),
            )
        config = aws.sagemaker.EndpointConfiguration(
            physical,
            production_variants=[
                aws.sagemaker.EndpointConfigurationProductionVariantArgs(
                    variant_name=VARIANT,
                    model_name=model.name,
                    instance_type=ep.instance_type,
                    initial_instance_count=ep.min_instances,
                )
            ],
            kms_key_arn=None if has_instance_storage(ep.instance_type) else args.kms_key_arn,
            data_capture_config=capture,
            tags=spec.tags,
            opts=child,
        )
        endpoint = aws.sagemaker.Endpoint(
            physical,
            name=physical,
            endpoint_config_name=config.name,
            tags=spec.tags,
            opts=child,
        )

        target = aws.appautoscaling.Target(
            f"{physical}-scaling",
            service_namespace="sagemaker",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            resource_id=endpoint.name.apply(lambda n: f"endpoint/{n}/variant/{VARIANT}"),
            min_capacity=ep.min_instances,
            max_capacity=ep.max_instances,
            tags=spec.tags,
            opts=child,
        )
        aws.appautoscaling.Policy(
            f"{physical}-invocations",
            name=f"{physical}-invocations-per-instance",
            policy_type="TargetTrackingScaling",
            service_namespace=target.service_namespace,
            scalable_dimension=target.scalable_dimension,
            resource_id=target.resource_id,
            target_tracking_scaling_policy_configuration=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                target_value=float(ep.target_invocations_per_instance),
                predefined_metric_specification=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs(
                    predefined_metric_type="SageMakerVariantInvocationsPerInstance"
                ),
                scale_in_cooldown=SCALE_IN_COOLDOWN_S,
                scale_out_cooldown=SCALE_OUT_COOLDOWN_S,
            ),
            opts=child,
        )

        dimensions = {"EndpointName": endpoint.name, "VariantName": VARIANT}
        aws.cloudwatch.MetricAlarm(
            f"{physical}-5xx",
            name=f"{physical}-5xx-errors",
            alarm_description=(
                f"More than {ep.max_5xx_errors} 5XX responses from {physical} in 5 minutes"
            ),
            namespace="AWS/SageMaker",
            metric_name="Invocation5XXErrors",
            dimensions=dimensions,
            statistic="Sum",
            period=ERRORS_PERIOD_S,
            evaluation_periods=1,
            threshold=float(ep.max_5xx_errors),
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",  # no traffic is no error
            alarm_actions=[self._alarm_topic.arn],
            ok_actions=[self._alarm_topic.arn],
            tags=spec.tags,
            opts=child,
        )
        aws.cloudwatch.MetricAlarm(
            f"{physical}-latency",
            name=f"{physical}-model-latency",
            alarm_description=(
                f"{LATENCY_STATISTIC} model latency of {physical} above {ep.latency_alarm_ms} ms"
            ),
            namespace="AWS/SageMaker",
            metric_name="ModelLatency",
            dimensions=dimensions,
            extended_statistic=LATENCY_STATISTIC,
            period=LATENCY_PERIOD_S,
            # 3 of 5 minutes: a sustained slowdown, not one slow request.
            evaluation_periods=5,
            datapoints_to_alarm=3,
            threshold=float(ep.latency_alarm_ms * 1000),  # ModelLatency is in microseconds
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=[self._alarm_topic.arn],
            ok_actions=[self._alarm_topic.arn],
            tags=spec.tags,
            opts=child,
        )
        return endpoint.name

    # --- Kubernetes -----------------------------------------------------------------------

    def _kubernetes(self, ep: EndpointSpec) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        spec, args = self._args.spec, self._args
        opts = pulumi.ResourceOptions(parent=self, provider=args.k8s_provider)
        physical = f"{spec.prefix}-{ep.name}"
        selector = {"app.kubernetes.io/name": physical, "app.kubernetes.io/component": "endpoint"}
        labels = {**spec.tags, **selector, "mlinfra.io/model-group": ep.model_group}
        image = pulumi.Output.concat(self._image, ep.image_tag)

        model_env = [
            {"name": "MODEL_DIR", "value": MODEL_DIR},
            {"name": "AWS_REGION", "value": spec.region},
        ]
        if ep.model_version is not None:
            model_env.append({"name": "MODEL_PACKAGE_ARN", "value": self._package_arn(ep)})
        else:
            model_env.append({"name": "MODEL_DATA_URL", "value": self._model_data_url(ep)})

        resources = {
            "requests": {"cpu": ep.cpu, "memory": ep.memory},
            # Limits equal requests: Guaranteed QoS, steady latency, nothing evicted first.
            "limits": {"cpu": ep.cpu, "memory": ep.memory},
        }
        tolerations = []
        if ep.gpus:
            resources["limits"][GPU_RESOURCE] = str(ep.gpus)
            tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        container_security = {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = [
            {"name": "model", "mountPath": MODEL_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ]
        ping = {"httpGet": {"path": "/ping", "port": "http"}, "timeoutSeconds": 2}

        pod_spec = {
            "nodeSelector": {POOL_LABEL: ep.node_pool},
            "tolerations": tolerations,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_USER,
                "runAsGroup": RUN_AS_USER,
                "fsGroup": RUN_AS_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            # The server drains within 30 s of SIGTERM.
            "terminationGracePeriodSeconds": 40,
            "initContainers": [
                {
                    "name": "fetch-model",
                    "image": image,
                    "command": ["python", "-c", FETCH_MODEL],
                    "env": model_env,
                    "resources": {
                        "requests": {"cpu": "250m", "memory": "512Mi"},
                        "limits": {"cpu": "1", "memory": "1Gi"},
                    },
                    "securityContext": container_security,
                    "volumeMounts": mounts,
                }
            ],
            "containers": [
                {
                    "name": "serve",
                    "image": image,
                    "ports": [{"name": "http", "containerPort": SERVE_PORT}],
                    "env": [
                        {"name": "SM_MODEL_DIR", "value": MODEL_DIR},
                        {"name": "SAGEMAKER_BIND_TO_PORT", "value": str(SERVE_PORT)},
                    ],
                    "resources": resources,
                    # Loading a large model can take minutes; liveness starts after it.
                    "startupProbe": {**ping, "periodSeconds": 5, "failureThreshold": 60},
                    "readinessProbe": {**ping, "periodSeconds": 5, "failureThreshold": 2},
                    "livenessProbe": {**ping, "periodSeconds": 10, "failureThreshold": 3},
                    "securityContext": container_security,
                    "volumeMounts": [{**mounts[0], "readOnly": True}, mounts[1]],
                }
            ],
            "volumes": [{"name": "model", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        }
        if args.service_account is not None:
            pod_spec["serviceAccountName"] = args.service_account

        metadata = {"name": physical, "namespace": args.namespace, "labels": labels}
        deployment = k8s.apps.v1.Deployment(
            physical,
            metadata={
                **metadata,
                # GPU pools scale from zero: the first rollout waits for a node.
                "annotations": {"pulumi.com/timeoutSeconds": "1200"},
            },
            spec={
                # No `replicas`: the HorizontalPodAutoscaler owns the count.
                "selector": {"matchLabels": selector},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
            opts=opts,
        )
        service = k8s.core.v1.Service(
            physical,
            metadata=metadata,
            spec={
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
            opts=opts,
        )
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            physical,
            metadata=metadata,
            spec={
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": deployment.metadata.name,
                },
                "minReplicas": ep.min_instances,
                "maxReplicas": ep.max_instances,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {
                                "type": "Utilization",
                                "averageUtilization": HPA_CPU_UTILIZATION,
                            },
                        },
                    }
                ],
            },
            opts=opts,
        )
        url = pulumi.Output.concat(
            "http://", service.metadata.name, ".", service.metadata.namespace, ".svc.cluster.local"
        )
        return deployment.metadata.name, url


def _check(spec: PlatformSpec, args: EndpointsArgs) -> None:
    """Inputs the spec cannot check: each problem names the endpoint's field."""
    for i, ep in enumerate(spec.endpoints):
        if ep.model_group not in args.model_group_names:
            raise ValueError(
                f"mlinfra:endpoints[{i}].modelGroup: no model package group {ep.model_group!r} "
                f"was built; built: {sorted(args.model_group_names)}"
            )
        if ep.kind != "kubernetes":
            continue
        if args.k8s_provider is None or args.namespace is None:
            raise ValueError(
                f"mlinfra:endpoints[{i}].kind: {ep.name!r} is a kubernetes endpoint but no "
                "cluster provider and namespace were given"
            )
        physical = f"{spec.prefix}-{ep.name}"
        if physical != physical.lower():
            raise ValueError(
                f"mlinfra:endpoints[{i}].name: {ep.name!r} must be lowercase for a "
                "kubernetes endpoint (Kubernetes names are DNS labels)"
            )


def execution_policy(
    partition: str,
    account: str,
    region: str,
    prefix: str,
    artifacts_bucket: str,
    logs_bucket: str,
    kms_key_arn: str,
    repository: str,
) -> dict:
    """What the team's SageMaker endpoints may do: read models, write captures and logs."""
    s3 = f"arn:{partition}:s3:::"
    log_group = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadModels",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": f"{s3}{artifacts_bucket}/*",
            },
            {
                "Sid": "ListModels",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": f"{s3}{artifacts_bucket}",
            },
            {
                "Sid": "WriteDataCapture",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": f"{s3}{logs_bucket}/data-capture/*",
            },
            {
                "Sid": "TeamKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
                "Resource": kms_key_arn,
            },
            {
                "Sid": "TeamKeyGrantsForVolumes",
                "Effect": "Allow",
                "Action": ["kms:CreateGrant"],
                "Resource": kms_key_arn,
                "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
            },
            {
                "Sid": "PullServeImage",
                "Effect": "Allow",
                "Action": [
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchCheckLayerAvailability",
                ],
                "Resource": f"arn:{partition}:ecr:{region}:{account}:repository/{repository}",
            },
            {
                # Not resource-scoped in IAM.
                "Sid": "EcrLogin",
                "Effect": "Allow",
                "Action": ["ecr:GetAuthorizationToken"],
                "Resource": "*",
            },
            {
                "Sid": "EndpointLogs",
                "Effect": "Allow",
                "Action": [
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                "Resource": [f"{log_group}{prefix}-*", f"{log_group}{prefix}-*:*"],
            },
            {
                "Sid": "Metrics",
                "Effect": "Allow",
                "Action": ["cloudwatch:PutMetricData"],
                "Resource": "*",
            },
            {
                # Endpoints run in the team's private subnets (not resource-scoped in IAM).
                "Sid": "VpcNetworkInterfaces",
                "Effect": "Allow",
                "Action": [
                    "ec2:CreateNetworkInterface",
                    "ec2:CreateNetworkInterfacePermission",
                    "ec2:DeleteNetworkInterface",
                    "ec2:DeleteNetworkInterfacePermission",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeVpcs",
                    "ec2:DescribeDhcpOptions",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeSecurityGroups",
                ],
                "Resource": "*",
            },
        ],
    }
