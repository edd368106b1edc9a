"""Training jobs as Kubernetes Jobs on the team's node pools (the official `kubernetes` client).

Install with the `kubernetes` extra; the client is imported only here. The cluster's
endpoint and CA come from the descriptor, the token the way `aws eks get-token` makes it
(a presigned STS GetCallerIdentity, signed locally). What `render_training_job` renders
is applied as is; the Job is the record: labels (team, stack, job, model group) and
annotations (channels, hyperparameters, image, artifact URI). Status is read from the Job
and its pods; a failed pod's exit code and termination message (the trainer's failure
file) become the reason. `stop` deletes the Job and its pods.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

from workloads.jobs.base import (
    GPU,
    LABEL_KIND,
    LABEL_STACK,
    MULTI_NODE,
    SPOT,
    JobBackend,
    JobError,
    JobRequest,
    JobStatus,
    State,
    exit_reason,
    gpu_pools,
    missing_extra,
    register,
)
from workloads.jobs.ecr import check_image_tag
from workloads.jobs.kubernetes_manifest import JOB_LABEL, render_training_job
from workloads.platform import PlatformDescriptor
from workloads.training.metric_line import parse_metric_lines

ANNOTATION = "mlinfra.io/"
TOKEN_PREFIX = "k8s-aws-v1."


def eks_token(boto_session: Any, cluster: str) -> str:
    """What `aws eks get-token --cluster-name CLUSTER` prints as the token (no network)."""
    from botocore.signers import RequestSigner

    sts = boto_session.client("sts")
    signer = RequestSigner(
        sts.meta.service_model.service_id,
        sts.meta.region_name,
        "sts",
        "v4",
        boto_session.get_credentials(),
        boto_session.events,
    )
    url = signer.generate_presigned_url(
        {
            "method": "GET",
            "url": f"https://sts.{sts.meta.region_name}.amazonaws.com/"
            "?Action=GetCallerIdentity&Version=2011-06-15",
            "body": {},
            "headers": {"x-k8s-aws-id": cluster},
            "context": {},
        },
        region_name=sts.meta.region_name,
        expires_in=60,
        operation_name="",
    )
    return TOKEN_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def client_missing() -> JobError:
    return missing_extra("Kubernetes", "kubernetes", "the official kubernetes client")


def eks_api_client(descriptor: PlatformDescriptor, boto_session: Any = None) -> Any:
    """A Kubernetes ApiClient for the stack's EKS cluster, from what the descriptor exports
    (endpoint, CA) and a token made from the AWS credentials before each request: no
    kubeconfig needed. Every mlinfra command that talks to the cluster uses it."""
    try:
        from kubernetes import client
    except ImportError:
        raise client_missing() from None
    cluster = descriptor.cluster
    if cluster is None:
        raise JobError(f"stack {descriptor.stack!r} has no Kubernetes cluster")
    if not cluster.endpoint or not cluster.certificate_authority:
        raise JobError(
            f"stack {descriptor.stack!r} exports no cluster endpoint/CA: run "
            "`pulumi up` with this version first"
        )
    if boto_session is None:
        import boto3

        boto_session = boto3.Session(region_name=descriptor.region)
    config = client.Configuration()
    config.host = cluster.endpoint
    ca = Path(tempfile.mkdtemp(prefix="mlinfra-eks-")) / "ca.crt"
    ca.write_bytes(base64.b64decode(cluster.certificate_authority))
    config.ssl_ca_cert = str(ca)
    config.api_key_prefix = {"authorization": "Bearer"}
    name = cluster.name

    def fresh_token(c: Any) -> None:  # before each request: a token lives 15 min
        c.api_key["authorization"] = eks_token(boto_session, name)

    config.refresh_api_key_hook = fresh_token
    return client.ApiClient(config)


@register
class KubernetesJobs(JobBackend):
    name = "kubernetes"
    supports = frozenset({MULTI_NODE, GPU, SPOT})
    poll_seconds = 5.0

    def __init__(
        self,
        descriptor: PlatformDescriptor,
        api_client: Any = None,
        boto_session: Any = None,
    ):
        super().__init__(descriptor)
        if descriptor.cluster is None:
            raise JobError(
                f"stack {descriptor.stack!r} has no Kubernetes cluster: run --on sagemaker"
            )
        self.cluster = descriptor.cluster
        self.namespace = descriptor.cluster.namespace
        self._api_client = api_client
        self._boto_session = boto_session

    # --- clients -------------------------------------------------------------------------

    @property
    def boto_session(self) -> Any:
        if self._boto_session is None:
            import boto3

            self._boto_session = boto3.Session(region_name=self.descriptor.region)
        return self._boto_session

    def api_client(self) -> Any:
        if self._api_client is None:
            self._api_client = eks_api_client(self.descriptor, self.boto_session)
        return self._api_client

    def _apis(self) -> tuple[Any, Any]:
        try:
            from kubernetes import client
        except ImportError:
            raise client_missing() from None
        api = self.api_client()
        return client.BatchV1Api(api), client.CoreV1Api(api)

    # --- the backend ---------------------------------------------------------------------

    def _check(self, request: JobRequest) -> None:
        if request.pool is None:
            pools = gpu_pools(self.descriptor) or sorted(self.cluster.node_pools)
            raise JobError(
                f"--pool is required on Kubernetes; stack {self.descriptor.stack!r} has: "
                f"{', '.join(pools)}"
            )
        if request.instance_type is not None:
            types = ", ".join(self.cluster.node_pools[request.pool].instance_types)
            raise JobError(
                "--instance-type is for SageMaker; on Kubernetes the pool decides "
                f"(pool {request.pool}: {types})"
            )
        if request.image_tag is None:
            raise JobError(
                "--image TAG is required on Kubernetes: a tag of the team's training "
                "repository (tags are immutable; there is no 'latest')"
            )
        check_image_tag(self.descriptor, request.image_tag, self.boto_session)

    def manifests(self, request: JobRequest, labels: dict[str, str]) -> list[dict[str, Any]]:
        artifacts = self.descriptor.buckets.artifacts.rstrip("/")
        model_uri = f"{artifacts}/models/{request.name}"
        channels = {k: v for k, v in request.channels.items() if k not in ("train", "validation")}
        annotations = {
            f"{ANNOTATION}channels": json.dumps(dict(request.channels), sort_keys=True),
            f"{ANNOTATION}hyperparameters": json.dumps(
                dict(request.hyperparameters), sort_keys=True
            ),
            f"{ANNOTATION}image-tag": str(request.image_tag),
            f"{ANNOTATION}artifact-uri": model_uri,
        }
        return render_training_job(
            self.descriptor,
            name=request.name,
            pool=str(request.pool),
            train_uri=request.channels["train"],
            validation_uri=request.channels.get("validation"),
            channels=channels,
            hyperparameters=dict(request.hyperparameters),
            tag=request.image_tag,
            nodes=request.nodes,
            model_uri=model_uri,
            active_deadline_seconds=request.max_run_seconds,
            labels=labels,
            annotations=annotations,
        )

    def _submit(self, request: JobRequest, labels: dict[str, str]) -> str:
        from kubernetes.client.exceptions import ApiException

        batch, core = self._apis()
        try:
            for manifest in self.manifests(request, labels):
                if manifest["kind"] == "Service":
                    core.create_namespaced_service(self.namespace, manifest)
                else:
                    batch.create_namespaced_job(self.namespace, manifest)
        except ApiException as exc:
            if exc.status == 409:
                raise JobError(
                    f"a job named {request.name!r} already exists in namespace "
                    f"{self.namespace}: stop it (mlinfra jobs stop) or pick another name"
                ) from None
            raise
        return request.name

    def _job(self, job_id: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        batch, _ = self._apis()
        try:
            return batch.read_namespaced_job(job_id, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise JobError(
                    f"no Kubernetes job {job_id!r} in namespace {self.namespace} "
                    "(stopped jobs are deleted)"
                ) from None
            raise

    def _pods(self, job_id: str) -> list[Any]:
        _, core = self._apis()
        pods = core.list_namespaced_pod(self.namespace, label_selector=f"{JOB_LABEL}={job_id}")
        return sorted(pods.items, key=lambda p: p.metadata.name)

    def _status(self, job_id: str) -> JobStatus:
        return self._to_status(self._job(job_id), with_pods=True)

    def _to_status(self, job: Any, with_pods: bool) -> JobStatus:
        meta = job.metadata
        annotations = meta.annotations or {}
        status = job.status
        conditions = (
            {c.type: c for c in (status.conditions or []) if c.status == "True"}
            if status is not None
            else {}
        )
        state: State
        reason = None
        if "Complete" in conditions:
            state = "Completed"
        elif "Failed" in conditions:
            state = "Failed"
            cond = conditions["Failed"]
            reason = f"{cond.reason}: {cond.message}" if cond.message else cond.reason
        elif status is not None and (status.active or 0) > 0:
            state = "Running"
        else:
            state = "Pending"
        exit_code = None
        pods = self._pods(meta.name) if with_pods else []
        if pods:
            exit_code, detail = _pod_failure(pods)
            if state == "Failed" and detail:
                reason = detail if not reason else f"{detail} ({reason})"
            if state == "Running" and all(p.status and p.status.phase == "Pending" for p in pods):
                state = "Pending"
        metrics: dict[str, float] = {}
        if state == "Completed" and with_pods:
            lines, _ = self._read_logs(meta.name, None)
            metrics = {m.name: m.value for m in parse_metric_lines(lines) if m.epoch is None}
        created = meta.creation_timestamp
        return JobStatus(
            backend=self.name,
            id=meta.name,
            state=state,
            reason=reason,
            exit_code=exit_code,
            channels=json.loads(annotations.get(f"{ANNOTATION}channels", "{}")),
            hyperparameters=json.loads(annotations.get(f"{ANNOTATION}hyperparameters", "{}")),
            image=_image(job),
            artifact_uri=annotations.get(f"{ANNOTATION}artifact-uri")
            if state == "Completed"
            else None,
            metrics=metrics,
            labels=dict(meta.labels or {}),
            created=created.isoformat() if hasattr(created, "isoformat") else created,
        )

    def _read_logs(self, job_id: str, cursor: Any) -> tuple[list[str], Any]:
        """Each pod's log from the line where the last read stopped."""
        from kubernetes.client.exceptions import ApiException

        _, core = self._apis()
        seen: dict[str, int] = dict(cursor or {})
        lines: list[str] = []
        for pod in self._pods(job_id):
            name = pod.metadata.name
            try:
                text = core.read_namespaced_pod_log(name, self.namespace, container="train")
            except ApiException as exc:
                if exc.status in (400, 404):  # not started yet, or gone
                    continue
                raise
            pod_lines = text.splitlines()
            lines.extend(pod_lines[seen.get(name, 0) :])
            seen[name] = len(pod_lines)
        return lines, seen

    def _cancel(self, job_id: str) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        batch, core = self._apis()
        self._job(job_id)  # a clear error when there is none
        body = client.V1DeleteOptions(propagation_policy="Foreground")
        batch.delete_namespaced_job(job_id, self.namespace, body=body)
        try:  # the headless Service of a multi-node job
            core.delete_namespaced_service(job_id, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _list(self) -> list[JobStatus]:
        batch, _ = self._apis()
        selector = f"{LABEL_STACK}={self.descriptor.stack},{LABEL_KIND}=training"
        jobs = batch.list_namespaced_job(self.namespace, label_selector=selector).items
        return [self._to_status(job, with_pods=False) for job in jobs]


def _image(job: Any) -> str | None:
    try:
        return job.spec.template.spec.containers[0].image
    except (AttributeError, IndexError, TypeError):
        return None


def _pod_failure(pods: list[Any]) -> tuple[int | None, str | None]:
    """The newest failed container's exit code and reason, if a pod failed."""
    for pod in reversed(pods):
        for cs in (pod.status.container_statuses or []) if pod.status else []:
            terminated = cs.state.terminated if cs.state else None
            if terminated is not None and terminated.exit_code:
                message = (terminated.message or "").strip() or terminated.reason
                return terminated.exit_code, exit_reason(terminated.exit_code, message)
    return None, None
