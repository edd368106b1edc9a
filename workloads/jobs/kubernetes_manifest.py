"""Render the Kubernetes manifests of a training run on one of the team's node pools.

One node: a plain Job running `torchrun --standalone`. More nodes: an Indexed Job (one pod
per node, `completions = parallelism = nodes`) plus a headless Service, so pod 0 has a stable
DNS name (`<job>-0.<service>.<namespace>.svc`) that every pod's torchrun uses as the static
rendezvous endpoint, with `--node_rank` taken from the pod's completion index.

The container runs the training image's `workloads.train` under the SageMaker contract: the
data channels are passed as `s3://` URIs (the entrypoint downloads them), the model is copied
to `MLINFRA_MODEL_URI` when done, and the failure reason goes to the pod's termination log.
The manifests are plain dicts: `kubectl apply`-able as YAML/JSON, or fed to pulumi-kubernetes.

Spot is a non-event: a drained node sends SIGTERM, the trainer checkpoints within the grace
period and exits 143; checkpoints are synced to `MLINFRA_CHECKPOINT_URI` (S3) or live on a
claim, and the `podFailurePolicy` does not count a disrupted pod against the retries, so the
replacement pod resumes. A failure the trainer reported (exit 1: bad data or configuration)
fails the Job at once instead of retrying it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from components.admission import fmt_quantity, quantity
from workloads.jobs.environment import container_env
from workloads.platform import NodePoolRef, PlatformDescriptor

POOL_LABEL = "mlinfra.io/pool"  # the node label the cluster component puts on each pool
JOB_LABEL = "mlinfra.io/training-job"
GPU_RESOURCE = "nvidia.com/gpu"
RENDEZVOUS_PORT = 29500
GRACE_SECONDS = 120  # SIGTERM to SIGKILL: longer than a checkpoint write (as on SageMaker)
TERMINATION_LOG = "/dev/termination-log"
EXIT_FAILED = 1  # the trainer's own failure (reason in the failure file): no retry
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 52  # leaves room for Kubernetes' pod-name suffixes under the 63-char limit
# Without cpu/memory arguments a pod asks for this much per GPU: what the smallest GPU
# node of every supported family (4 vCPUs and 16 GiB per GPU, as g4dn/g5/g6.xlarge)
# still has allocatable after the kubelet's reserve and the node's DaemonSets.
CPU_PER_GPU = "3"
MEMORY_PER_GPU = "12Gi"
# On a CPU pool: one CPU and 2 GiB, the namespace's LimitRange defaults.
CPU_DEFAULT = "1"
MEMORY_DEFAULT = "2Gi"
# /dev/shm is memory-backed: what the DataLoader workers and NCCL put there counts against
# the container's memory limit. It gets this share of the limit by default.
SHM_FRACTION = 4
# Always ask the registry: a node's cached copy of a private image is no proof that this
# pod may pull it. With ECR a cached tag costs one manifest request; layers stay cached.
IMAGE_PULL_POLICY = "Always"


def render_training_job(
    descriptor: PlatformDescriptor,
    *,
    name: str,
    pool: str,
    train_uri: str,
    validation_uri: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    tag: str | None = None,
    image: str | None = None,
    nodes: int = 1,
    model_uri: str | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    shm: str | None = None,
    checkpoint_claim: str | None = None,
    backoff_limit: int = 3,
    active_deadline_seconds: int | None = None,
    channels: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Manifests (Service first when there is one, then the Job) for a training run.

    The image is `tag` of the descriptor's train repository, or `image` (a full reference):
    one is required, since tags are immutable and there is no `latest`. `model_uri`
    defaults to `<artifacts bucket>/models/<name>`. Checkpoints sync to `<artifacts
    bucket>/checkpoints/<name>`, or live on `checkpoint_claim` (a PersistentVolumeClaim),
    so a rescheduled pod resumes. `channels` adds channels besides train and validation;
    `labels` and `annotations` are stamped on the Job and its pods.

    Every pod sets requests and equal limits for CPU, memory and GPUs (Guaranteed QoS),
    so the namespace's LimitRange never lowers them and the quota counts what runs:
    `cpu`/`memory` default to a per-GPU share that fits the pool's smallest node (one CPU
    and 2Gi on a CPU pool). `shm` sizes the memory-backed /dev/shm (default: a quarter of
    `memory`, which it counts against).
    """
    cluster = descriptor.cluster
    if cluster is None:
        raise ValueError(f"stack {descriptor.stack!r} has no Kubernetes cluster in its descriptor")
    if pool not in cluster.node_pools:
        known = ", ".join(sorted(cluster.node_pools)) or "none"
        raise ValueError(f"unknown node pool {pool!r}; stack {descriptor.stack!r} has: {known}")
    if not _NAME.match(name) or len(name) > MAX_NAME:
        raise ValueError(
            f"job name {name!r} must be lowercase letters, digits and '-', start with a letter, "
            f"at most {MAX_NAME} characters"
        )
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, got {nodes}")
    if (tag is None) == (image is None):
        raise ValueError(
            "give the image tag (tags are immutable; there is no 'latest') or a full image, "
            "not both"
        )
    if image is None:
        repository = descriptor.registry.repositories.get("train")
        if not repository:
            raise ValueError("no image given and the descriptor has no 'train' repository")
        image = f"{repository}:{tag}"
    node_pool = cluster.node_pools[pool]
    namespace = cluster.namespace
    labels = {
        **(labels or {}),
        "app.kubernetes.io/name": "mlinfra-training",
        "app.kubernetes.io/part-of": "mlinfra",
        "mlinfra.io/team": descriptor.team,
        "mlinfra.io/stack": descriptor.stack,
        JOB_LABEL: name,
    }
    metadata_extra = {"annotations": dict(annotations)} if annotations else {}
    all_channels = {"train": train_uri, **(channels or {})}
    if validation_uri:
        all_channels["validation"] = validation_uri
    master = f"{name}-0.{name}.{namespace}.svc.cluster.local"
    resources, shm_size = _resources(node_pool, cpu, memory, shm)
    container = _container(
        image=image,
        command=_torchrun(name, nodes, max(1, node_pool.gpus_per_node), master),
        env=_env(
            descriptor, name, all_channels, hyperparameters, model_uri, checkpoint_claim, nodes
        ),
        resources=resources,
    )
    pod_spec: dict[str, Any] = {
        "serviceAccountName": cluster.service_account,
        "automountServiceAccountToken": False,  # IRSA injects its own token; no API access
        # A failed pod is replaced (podFailurePolicy needs Never); the new pod resumes from
        # the synced checkpoints.
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "nodeSelector": {POOL_LABEL: pool},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": _volumes(checkpoint_claim, shm_size),
    }
    if node_pool.gpus_per_node > 0:
        pod_spec["tolerations"] = [
            {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        ]
    job_spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "completions": nodes,
        "parallelism": nodes,
        "ttlSecondsAfterFinished": 7 * 24 * 3600,
        "podFailurePolicy": {
            "rules": [
                # Spot reclaim, node drain, preemption: not the job's fault, not counted.
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
                # The trainer said why it failed (data, configuration): retrying won't help.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "train",
                        "operator": "In",
                        "values": [EXIT_FAILED],
                    },
                },
            ]
        },
        "template": {"metadata": {"labels": labels, **metadata_extra}, "spec": pod_spec},
    }
    if active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = active_deadline_seconds
    manifests: list[dict[str, Any]] = []
    if nodes > 1:
        job_spec["completionMode"] = "Indexed"
        pod_spec["subdomain"] = name  # with the Service: stable DNS per pod
        manifests.append(_headless_service(name, namespace, labels))
    manifests.append(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                **metadata_extra,
            },
            "spec": job_spec,
        }
    )
    return manifests


def _torchrun(name: str, nodes: int, procs: int, master: str) -> list[str]:
    if nodes == 1:
        head = ["torchrun", "--standalone", "--nnodes=1", f"--nproc_per_node={procs}"]
    else:
        head = [
            "torchrun",
            f"--nnodes={nodes}",
            f"--nproc_per_node={procs}",
            "--node_rank=$(JOB_COMPLETION_INDEX)",  # Kubernetes expands it from the env
            "--rdzv_backend=static",
            f"--rdzv_endpoint={master}:{RENDEZVOUS_PORT}",
            f"--rdzv_id={name}",
        ]
    return [*head, "-m", "workloads.train"]


def _env(
    descriptor: PlatformDescriptor,
    name: str,
    channels: Mapping[str, str],
    hyperparameters: Mapping[str, Any] | None,
    model_uri: str | None,
    checkpoint_claim: str | None,
    nodes: int,
) -> list[dict[str, Any]]:
    artifacts = descriptor.buckets.artifacts.rstrip("/")
    values = {
        "MLINFRA_PLATFORM": descriptor.model_dump_json(),
        "AWS_REGION": descriptor.region,
        **container_env(
            channels=channels,
            model_dir="/opt/ml/model",
            output_dir="/opt/ml/output/data",
            checkpoint_dir="/opt/ml/checkpoints",
            failure_file=TERMINATION_LOG,  # shows up in the pod's status
            hyperparameters=dict(hyperparameters or {}),
            model_uri=model_uri or f"{artifacts}/models/{name}",
            # On a claim the checkpoints survive the pod; else they are synced to S3.
            checkpoint_uri=None if checkpoint_claim else f"{artifacts}/checkpoints/{name}",
        ),
        "HOME": "/tmp",  # the root filesystem is read-only
        "MPLCONFIGDIR": "/tmp/matplotlib",
    }
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
    if nodes > 1:
        index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        env.append(
            {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": index}}}
        )
    return env


def _resources(
    pool: NodePoolRef, cpu: str | None, memory: str | None, shm: str | None
) -> tuple[dict[str, Any], str]:
    """Requests equal to limits for CPU, memory and GPUs, and the /dev/shm size."""
    gpus = pool.gpus_per_node
    values = {
        "cpu": cpu or (_times(CPU_PER_GPU, gpus, "cpu") if gpus else CPU_DEFAULT),
        "memory": memory or (_times(MEMORY_PER_GPU, gpus, "memory") if gpus else MEMORY_DEFAULT),
    }
    for key, value in values.items():
        try:
            if quantity(value) <= 0:
                raise ValueError(f"{value!r} is not above zero")
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    mem = quantity(values["memory"])
    shm_size = shm or fmt_quantity(mem / SHM_FRACTION // 2**20 * 2**20, "memory")
    try:
        shm_bytes = quantity(shm_size)
    except ValueError as exc:
        raise ValueError(f"shm: {exc}") from None
    if not 0 < shm_bytes < mem:
        raise ValueError(
            f"shm: {shm_size} must be above zero and below memory ({values['memory']}): "
            "/dev/shm counts against the container's memory limit"
        )
    limits: dict[str, Any] = dict(values)
    if gpus > 0:  # extended resources: the request is the limit
        limits[GPU_RESOURCE] = str(gpus)  # a quantity: the client wants a string
    return {"requests": dict(limits), "limits": limits}, shm_size


def _times(per_gpu: str, gpus: int, resource: str) -> str:
    return fmt_quantity(quantity(per_gpu) * gpus, resource)


def _container(
    *,
    image: str,
    command: list[str],
    env: list[dict[str, Any]],
    resources: dict[str, Any],
) -> dict[str, Any]:
    return {
        "name": "train",
        "image": image,
        "imagePullPolicy": IMAGE_PULL_POLICY,
        "command": command,
        "env": env,
        "resources": resources,
        "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "model", "mountPath": "/opt/ml/model"},
            {"name": "output", "mountPath": "/opt/ml/output"},
            {"name": "checkpoints", "mountPath": "/opt/ml/checkpoints"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},  # NCCL and DataLoader shared memory
        ],
    }


def _volumes(checkpoint_claim: str | None, shm_size: str) -> list[dict[str, Any]]:
    checkpoints: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": checkpoint_claim}}
        if checkpoint_claim
        else {"emptyDir": {}}
    )
    return [
        {"name": "model", "emptyDir": {}},
        {"name": "output", "emptyDir": {}},
        {"name": "checkpoints", **checkpoints},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
    ]


def _headless_service(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_LABEL: name},
            # pod 0 must resolve before it is Ready: the rendezvous happens at start-up
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }
