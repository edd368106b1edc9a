"""Endpoints: the serving image behind a SageMaker real-time endpoint or a Kubernetes service.

Who creates what, and who chooses the model version an endpoint serves:

- **Pinned** (`modelVersion` set; required in prod): the stack owns the version. `pulumi up`
  builds the Model from the model package version, the EndpointConfiguration (data capture
  into the logs bucket), the Endpoint, its Application Auto Scaling target and policy; a
  pull request that changes `modelVersion` changes what is served. Until that version is
  registered and approved the endpoint *waits* (`components.readiness`): nothing that
  references it is registered, the preview says what it waits for, and the first `up`
  after the approval creates it.
- **Unpinned** (non-prod): `mlinfra deploy` owns the version. For SageMaker the stack
  creates what needs no model (the execution role, the alarm topic and the alarms, the
  capture location; the network makes its security group) and exports the rest of the
  endpoint's definition (instance type, scaling policy, capture settings) in the platform
  descriptor; the first
  `mlinfra deploy` creates the Model, EndpointConfiguration, Endpoint and its scaling
  target and policy, which are never Pulumi resources, so `pulumi up` and the drift check
  never see them change. For Kubernetes the stack creates the Deployment at zero replicas
  without a model; `mlinfra deploy` sets the pod template's model annotation and scales it
  up, and the stack ignores both fields from then on.

Alarms (5XX errors, latency) are always the stack's: CloudWatch needs no endpoint to exist
for an alarm on its metrics. `kind: kubernetes` builds a Deployment on a named node pool, a
ClusterIP Service and a HorizontalPodAutoscaler in the team namespace; its init container
fetches the model package named by the pod's `mlinfra.io/model-package` annotation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.endpoint_iam import execution_policy
from components.iam import assume_role_policy
from components.monitoring import monitored, scheduled_monitors
from components.readiness import Readiness
from components.registry import repository_name
from components.serving_pod import MODEL_ANNOTATION, serving_pod_spec
from components.spec import EndpointSpec, PlatformSpec
from workloads.monitoring.layout import capture_destination

VARIANT = "AllTraffic"
HPA_CPU_UTILIZATION = 70
SCALE_IN_COOLDOWN_S = 300  # scale in slowly: a cold instance takes minutes to serve
SCALE_OUT_COOLDOWN_S = 60
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
ERRORS_PERIOD_S = 300  # `max5xxErrors` counts 5XX responses per 5 minutes
LATENCY_PERIOD_S = 60
LATENCY_STATISTIC = "p90"
CAPTURE_JSON_TYPES = ["application/json"]
CAPTURE_CSV_TYPES = ["text/csv"]

# SageMaker refuses a KMS key on endpoint configs whose instances have local NVMe storage
# (it is always encrypted by the hardware): g4dn, g5, g6, p4d, p5, trn1 and the "d" types.
_INSTANCE_STORE_FAMILIES = {"g5", "g6", "g6e", "p5", "p5e", "p5en", "trn1", "trn1n"}
_INSTANCE_STORE_RE = re.compile(r"^[a-z]+[0-9]+[a-z]*d[a-z]*$")


def data_capture_uri(logs_bucket: str) -> str:
    """SageMaker's DestinationS3Uri: it appends `<endpoint>/<variant>/yyyy/mm/dd/hh/` itself,
    so the endpoint's name is not part of it (`workloads.monitoring.layout`)."""
    return capture_destination(f"s3://{logs_bucket}")


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


def model_annotation_path() -> str:
    """The Deployment's model annotation as a Pulumi property path (for ignoreChanges)."""
    return f'spec.template.metadata.annotations["{MODEL_ANNOTATION}"]'


def alarm_names(physical: str) -> list[str]:
    """The CloudWatch alarms the stack keeps on a SageMaker endpoint."""
    return [f"{physical}-5xx-errors", f"{physical}-model-latency"]


def scaling_policy_name(physical: str) -> str:
    return f"{physical}-invocations-per-instance"


def scaling_resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{VARIANT}"


@dataclass
class EndpointsArgs:
    spec: PlatformSpec
    serve_repository_url: pulumi.Input[str]
    artifacts_bucket: pulumi.Input[str]
    logs_bucket: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    # The SageMaker endpoints' own group: 443 to S3 (its prefix list) and inside the VPC.
    security_group_id: pulumi.Input[str]
    model_group_names: dict[str, pulumi.Input[str]]  # spec model group -> physical name
    # Whether each pinned endpoint can be created now (components.readiness.decide).
    readiness: dict[str, Readiness]
    k8s_provider: k8s.Provider | None = None
    namespace: pulumi.Input[str] | None = None
    # The team's IRSA service account, so Kubernetes endpoints can fetch their model.
    service_account: pulumi.Input[str] | None = None


class Endpoints(pulumi.ComponentResource):
    """Every endpoint in the spec, on SageMaker or on the team's Kubernetes namespace."""

    endpoint_names: dict[str, pulumi.Output[str]]
    endpoint_urls: dict[str, pulumi.Output[str] | None]
    # Per endpoint, its `workloads.platform.EndpointRef` (values may be Outputs): what
    # `mlinfra deploy` needs to create, update or scale it.
    refs: dict[str, dict[str, Any]]
    waiting: dict[str, str]  # endpoint -> what it waits for (pinned, not yet created)

    def __init__(self, name: str, args: EndpointsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlinfra:endpoints:Endpoints", name, None, opts)
        self._args = args
        spec = args.spec
        _check(spec, args)
        invoke = pulumi.InvokeOptions(parent=self)
        self._partition = aws.get_partition_output(opts=invoke).partition
        self._account = aws.get_caller_identity_output(opts=invoke).account_id
        self._image = pulumi.Output.concat(args.serve_repository_url, ":")
        self._readiness = args.readiness

        sagemaker = [ep for ep in spec.endpoints if ep.kind == "sagemaker"]
        self._role = self._execution_role(name, sagemaker) if sagemaker else None
        # The endpoint alarms', and the monitors' dataset-drift alarms.
        alarmed = sagemaker or (args.k8s_provider is not None and monitored(spec))
        self._alarm_topic = self._alarm_topic_for(name) if alarmed else None

        self.endpoint_names, self.endpoint_urls, self.refs, self.waiting = {}, {}, {}, {}
        for ep in spec.endpoints:
            physical = spec.physical(ep.name)
            readiness = self._readiness.get(ep.name)
            if readiness is not None and not readiness.ready:
                self.waiting[ep.name] = readiness.waiting_for or ""
                pulumi.log.warn(
                    f"endpoint {physical} waits for {readiness.waiting_for}: nothing that "
                    "serves it is created now; the first `pulumi up` after that creates it",
                    resource=self,
                )
            elif ep.model_version is None:
                pulumi.log.info(
                    f"endpoint {physical} has no pinned modelVersion: `mlinfra deploy` "
                    + (
                        "creates it"
                        if ep.kind == "sagemaker"
                        else "sets its model and scales it up from zero"
                    ),
                    resource=self,
                )
            ref = self._sagemaker(ep) if ep.kind == "sagemaker" else self._kubernetes(ep)
            self.refs[ep.name] = ref
            self.endpoint_names[ep.name] = ref["name"]
            self.endpoint_urls[ep.name] = ref["url"]
        if args.k8s_provider is not None and args.namespace is not None and monitored(spec):
            assert self._alarm_topic is not None  # made for monitored endpoints
            scheduled_monitors(
                self,
                name,
                spec,
                serve_repository_url=args.serve_repository_url,
                logs_bucket=args.logs_bucket,
                model_group_names=args.model_group_names,
                namespace=args.namespace,
                provider=args.k8s_provider,
                alarm_topic_arn=self._alarm_topic.arn,
            )

        self.register_outputs(
            {
                "endpoint_names": self.endpoint_names,
                "endpoint_urls": self.endpoint_urls,
                "waiting": self.waiting,
            }
        )

    # --- shared ---------------------------------------------------------------------------

    def _package_arn(self, ep: EndpointSpec) -> pulumi.Output[str]:
        return pulumi.Output.all(
            self._partition, self._account, self._args.model_group_names[ep.model_group]
        ).apply(
            lambda a: model_package_arn(a[0], self._args.spec.region, a[1], a[2], ep.model_version)
        )

    def _stack_creates(self, ep: EndpointSpec) -> bool:
        """Whether the stack creates what serves the model now (pinned and not waiting)."""
        readiness = self._readiness.get(ep.name)
        return readiness is not None and readiness.ready

    def _ref(self, ep: EndpointSpec, name: Any, url: Any, created_by: str) -> dict[str, Any]:
        """The descriptor fields every kind shares."""
        return {
            "name": name,
            "kind": ep.kind,
            "model_group": ep.model_group,
            "url": url,
            "model_version": ep.model_version,
            "version_owner": "deploy" if ep.model_version is None else "stack",
            "created_by": created_by,
            "waiting_for": self.waiting.get(ep.name),
            "scaling": {
                "min_instances": ep.min_instances,
                "max_instances": ep.max_instances,
                "target_invocations_per_instance": (
                    ep.target_invocations_per_instance if ep.kind == "sagemaker" else None
                ),
                "policy_name": (
                    scaling_policy_name(self._args.spec.physical(ep.name))
                    if ep.kind == "sagemaker"
                    else None
                ),
                "scale_in_cooldown_s": SCALE_IN_COOLDOWN_S if ep.kind == "sagemaker" else None,
                "scale_out_cooldown_s": SCALE_OUT_COOLDOWN_S if ep.kind == "sagemaker" else None,
            },
            "sagemaker": None,
            "kubernetes": None,
        }

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

    def _capture(self, ep: EndpointSpec, physical: str) -> dict[str, Any] | None:
        """Data capture settings (the descriptor's shape): where, how much, with which key."""
        if not ep.data_capture.enabled:
            return None
        return {
            "destination": pulumi.Output.from_input(self._args.logs_bucket).apply(data_capture_uri),
            "sampling_percent": ep.data_capture.sampling_percent,
            "kms_key_arn": self._args.kms_key_arn,
            "json_content_types": CAPTURE_JSON_TYPES,
            "csv_content_types": CAPTURE_CSV_TYPES,
        }

    def _sagemaker(self, ep: EndpointSpec) -> dict[str, Any]:
        spec, args = self._args.spec, self._args
        child = pulumi.ResourceOptions(parent=self)
        physical = spec.physical(ep.name)
        assert self._role is not None and self._alarm_topic is not None
        capture = self._capture(ep, physical)
        volume_key = None if has_instance_storage(ep.instance_type) else args.kms_key_arn

        # Alarms need no endpoint: CloudWatch watches the metric names until they appear.
        self._alarms(ep, physical)
        created_by = "deploy" if ep.model_version is None else "stack"
        if self._stack_creates(ep):
            self._stack_endpoint(ep, physical, capture, volume_key, child)
        ref = self._ref(ep, pulumi.Output.from_input(physical), None, created_by)
        ref["sagemaker"] = {
            "role_arn": self._role.arn,
            "variant": VARIANT,
            "instance_type": ep.instance_type,
            "image": pulumi.Output.concat(self._image, ep.image_tag),
            "subnets": args.subnet_ids,
            "security_groups": [args.security_group_id],
            "network_isolation": True,
            "volume_kms_key_arn": volume_key,
            "data_capture": capture,
            "scaling_resource_id": scaling_resource_id(physical),
            "scalable_dimension": SCALABLE_DIMENSION,
            "scaling_metric": SCALING_METRIC,
            "alarms": alarm_names(physical),
            "alarm_topic_arn": self._alarm_topic.arn,
            "tags": dict(spec.tags),
        }
        return ref

    def _stack_endpoint(
        self,
        ep: EndpointSpec,
        physical: str,
        capture: dict[str, Any] | None,
        volume_key: Any,
        child: pulumi.ResourceOptions,
    ) -> None:
        """Model, configuration, endpoint and scaling of a pinned endpoint whose version is
        approved: the package carries its image and artifact, as registered and approved."""
        spec, args = self._args.spec, self._args
        assert self._role is not None
        # Model and config are immutable in SageMaker: no fixed name, so a change creates a
        # new one (autonamed from the logical name) before the endpoint switches over to it.
        model = aws.sagemaker.Model(
            physical,
            execution_role_arn=self._role.arn,
            primary_container=aws.sagemaker.ModelPrimaryContainerArgs(
                model_package_name=self._package_arn(ep)
            ),
            vpc_config=aws.sagemaker.ModelVpcConfigArgs(
                subnets=args.subnet_ids, security_group_ids=[args.security_group_id]
            ),
            # The server needs no network: SageMaker fetches the model and the image.
            enable_network_isolation=True,
            tags=spec.tags,
            opts=child,
        )
        capture_args = None
        if capture is not None:
            capture_args = aws.sagemaker.EndpointConfigurationDataCaptureConfigArgs(
                enable_capture=True,
                initial_sampling_percentage=capture["sampling_percent"],
                destination_s3_uri=capture["destination"],
                kms_key_id=capture["kms_key_arn"],
                capture_options=[
                    aws.sagemaker.EndpointConfigurationDataCaptureConfigCaptureOptionArgs(
                        capture_mode=mode
                    )
                    for mode in ("Input", "Output")
                ],
                capture_content_type_header=aws.sagemaker.EndpointConfigurationDataCaptureConfigCaptureContentTypeHeaderArgs(
                    json_content_types=capture["json_content_types"],
                    csv_content_types=capture["csv_content_types"],
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
            kms_key_arn=volume_key,
            data_capture_config=capture_args,
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
            scalable_dimension=SCALABLE_DIMENSION,
            resource_id=endpoint.name.apply(scaling_resource_id),
            min_capacity=ep.min_instances,
            max_capacity=ep.max_instances,
            tags=spec.tags,
            opts=child,
        )
        aws.appautoscaling.Policy(
            f"{physical}-invocations",
            name=scaling_policy_name(physical),
            policy_type="TargetTrackingScaling",
            service_namespace=target.service_namespace,
            scalable_dimension=target.scalable_dimension,
            resource_id=target.resource_id,
            target_tracking_scaling_policy_configuration=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationArgs(
                target_value=float(ep.target_invocations_per_instance),
                predefined_metric_specification=aws.appautoscaling.PolicyTargetTrackingScalingPolicyConfigurationPredefinedMetricSpecificationArgs(
                    predefined_metric_type=SCALING_METRIC
                ),
                scale_in_cooldown=SCALE_IN_COOLDOWN_S,
                scale_out_cooldown=SCALE_OUT_COOLDOWN_S,
            ),
            opts=child,
        )

    def _alarms(self, ep: EndpointSpec, physical: str) -> None:
        spec, child = self._args.spec, pulumi.ResourceOptions(parent=self)
        assert self._alarm_topic is not None
        dimensions = {"EndpointName": physical, "VariantName": VARIANT}
        errors_name, latency_name = alarm_names(physical)
        aws.cloudwatch.MetricAlarm(
            f"{physical}-5xx",
            name=errors_name,
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
            treat_missing_data="notBreaching",  # no traffic (or no endpoint yet) is no error
            alarm_actions=[self._alarm_topic.arn],
            ok_actions=[self._alarm_topic.arn],
            tags=spec.tags,
            opts=child,
        )
        aws.cloudwatch.MetricAlarm(
            f"{physical}-latency",
            name=latency_name,
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

    # --- Kubernetes -----------------------------------------------------------------------

    def _kubernetes(self, ep: EndpointSpec) -> dict[str, Any]:
        spec, args = self._args.spec, self._args
        opts = pulumi.ResourceOptions(parent=self, provider=args.k8s_provider)
        physical = spec.physical(ep.name)
        selector = {"app.kubernetes.io/name": physical, "app.kubernetes.io/component": "endpoint"}
        labels = {**spec.tags, **selector, "mlinfra.io/model-group": ep.model_group}
        image = pulumi.Output.concat(self._image, ep.image_tag)

        capture = None
        if ep.data_capture.enabled:  # into the logs bucket, where SageMaker endpoints capture
            capture = pulumi.Output.from_input(args.logs_bucket).apply(
                lambda bucket: capture_destination(f"s3://{bucket}")
            )
        pod_spec = serving_pod_spec(
            ep,
            image,
            spec.region,
            args.service_account,
            capture_destination=capture,
            endpoint_name=physical,
        )

        metadata = {"name": physical, "namespace": args.namespace, "labels": labels}
        template_annotations: dict[str, Any] = {}
        deployment_spec: dict[str, Any] = {
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
        }
        ignore: list[str] = []
        if ep.model_version is not None:
            # The stack serves the pinned version. Ready: no `replicas`, the HPA owns the
            # count. Waiting: zero replicas, so no pod pulls an image or fetches a model
            # that is not there yet (and Pulumi has no rollout to wait for).
            template_annotations[MODEL_ANNOTATION] = self._package_arn(ep)
            if not self._stack_creates(ep):
                deployment_spec["replicas"] = 0
        else:
            # `mlinfra deploy` sets the model annotation and scales up from zero; the HPA
            # keeps the count after that (it does not scale a Deployment at zero). The stack
            # never sets either field again, so `up` and the drift check leave them alone.
            deployment_spec["replicas"] = 0
            ignore = ["spec.replicas", model_annotation_path()]
        deployment_spec["template"] = {
            "metadata": {
                "labels": labels,
                **({"annotations": template_annotations} if template_annotations else {}),
            },
            "spec": pod_spec,
        }
        deployment = k8s.apps.v1.Deployment(
            physical,
            metadata={
                **metadata,
                # GPU pools scale from zero: the first rollout waits for a node.
                "annotations": {"pulumi.com/timeoutSeconds": "1200"},
            },
            spec=deployment_spec,
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=ignore)),
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
        hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
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
        ref = self._ref(ep, deployment.metadata.name, url, "stack")
        ref["kubernetes"] = {
            "namespace": args.namespace,
            "deployment": deployment.metadata.name,
            "service": service.metadata.name,
            "autoscaler": hpa.metadata.name,
            "model_annotation": MODEL_ANNOTATION,
        }
        return ref


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
        physical = spec.physical(ep.name)
        if physical != physical.lower():
            raise ValueError(
                f"mlinfra:endpoints[{i}].name: {ep.name!r} must be lowercase for a "
                "kubernetes endpoint (Kubernetes names are DNS labels)"
            )
