"""The Kubernetes Job of a batch scoring run, as a plain dict (no client, no calls).

One pod in the team's namespace, under the team's service account (its IRSA role reads the
team's buckets and model groups), running the serving image: an init container fetches the
model package's artifact into /opt/ml/model, then `python -m workloads.serving.batch` scores
INPUT_URI into a local file that is uploaded to OUTPUT_URI. Non-root, read-only root
filesystem, no capabilities; scratch space in emptyDir volumes.
"""

from __future__ import annotations

import re
from typing import Any

from workloads.platform import PlatformDescriptor

POOL_LABEL = "mlinfra.io/pool"
JOB_LABEL = "mlinfra.io/batch-job"
MODEL_DIR = "/opt/ml/model"
SCRATCH = "/scratch"
RUN_AS_USER = 1000  # the serving image's user
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 52

SCORE = (
    'python -m workloads.serving.batch "$INPUT_URI" "$SCRATCH/predictions$OUTPUT_SUFFIX" '
    f"--model-dir {MODEL_DIR} && "
    'python -m workloads.jobs.batch.pod upload "$SCRATCH/predictions$OUTPUT_SUFFIX" '
    '"$OUTPUT_URI"'
)


def render_batch_job(
    descriptor: PlatformDescriptor,
    *,
    name: str,
    model_group: str,
    version: int,
    package_arn: str,
    image: str,
    input_uri: str,
    output_uri: str,
    output_suffix: str,
    pool: str = "system",
    cpu: str = "1",
    memory: str = "4Gi",
    active_deadline_seconds: int = 6 * 3600,
) -> dict[str, Any]:
    cluster = descriptor.cluster
    if cluster is None:
        raise ValueError(f"stack {descriptor.stack!r} has no Kubernetes cluster")
    if not _NAME.match(name) or len(name) > MAX_NAME:
        raise ValueError(f"job name {name!r}: lowercase letters, digits and '-', at most 52")
    labels = {
        "app.kubernetes.io/name": "mlinfra-batch",
        "app.kubernetes.io/part-of": "mlinfra",
        "mlinfra.io/team": descriptor.team,
        "mlinfra.io/stack": descriptor.stack,
        "mlinfra.io/model-group": model_group,
        "mlinfra.io/model-version": str(version),
        JOB_LABEL: name,
    }
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    resources = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }
    env = [
        {"name": "AWS_REGION", "value": descriptor.region},
        {"name": "INPUT_URI", "value": input_uri},
        {"name": "OUTPUT_URI", "value": output_uri},
        {"name": "OUTPUT_SUFFIX", "value": output_suffix},
        {"name": "SCRATCH", "value": SCRATCH},
        {"name": "HOME", "value": "/tmp"},
    ]
    mounts = [
        {"name": "model", "mountPath": MODEL_DIR},
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    pod_spec = {
        "serviceAccountName": cluster.service_account,
        "restartPolicy": "Never",
        "nodeSelector": {POOL_LABEL: pool},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [
            {
                "name": "fetch-model",
                "image": image,
                "command": [
                    "python",
                    "-m",
                    "workloads.jobs.batch.pod",
                    "fetch-model",
                    package_arn,
                    MODEL_DIR,
                ],  # fmt: skip
                "env": env,
                "resources": resources,
                "securityContext": security,
                "volumeMounts": mounts,
            }
        ],
        "containers": [
            {
                "name": "batch",
                "image": image,
                "command": ["sh", "-c", SCORE],
                "env": env,
                "resources": resources,
                "securityContext": security,
                "volumeMounts": [{**mounts[0], "readOnly": True}, *mounts[1:]],
            }
        ],
        "volumes": [{"name": v["name"], "emptyDir": {}} for v in mounts],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": cluster.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": active_deadline_seconds,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
