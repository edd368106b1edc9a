"""The pod of a Kubernetes endpoint: the serving image behind an init container that
fetches the model, as SageMaker does before it starts a serving container.

The init container reads the model package ARN from the pod's `mlinfra.io/model-package`
annotation (the downward API), describes the package and unpacks its artifact into
`/opt/ml/model`; the serving container follows the SageMaker hosting contract on 8080.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.admission import FETCH_MODEL_RESOURCES
from components.spec import EndpointSpec, PlatformSpec
from workloads.monitoring.layout import CAPTURE_FOLDER, endpoint_capture_uri
from workloads.serving.capture import (
    DEFAULT_VARIANT as CAPTURE_VARIANT,
)
from workloads.serving.capture import (
    ENV_DIR,
    ENV_ENDPOINT,
    ENV_PACKAGE,
    ENV_PERCENT,
    ENV_VARIANT,
)

SERVE_PORT = 8080  # the SageMaker hosting contract
# Nodes carry this label with their pool's name ("system" for the system pool).
POOL_LABEL = "mlinfra.io/pool"
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_DIR = "/opt/ml/model"
PRESTOP_SLEEP_S = 5  # endpoint removal takes seconds to reach kube-proxy on every node
# The pod-template annotation naming the model package a Kubernetes endpoint serves: set by
# the stack for a pinned endpoint, by `mlinfra deploy` otherwise (a change rolls the pods).
MODEL_ANNOTATION = "mlinfra.io/model-package"
# A non-root user the serving image runs as (any UID works: the root filesystem is read-only).
RUN_AS_USER = 1000  # the `mlinfra` user of docker/serve.Dockerfile
# Always ask the registry: a node's cached copy of a private image is no proof that this
# pod may pull it (ECR answers a cached tag with its manifest; the layers stay cached).
IMAGE_PULL_POLICY = "Always"

# The init container that puts the model into MODEL_DIR on Kubernetes, as SageMaker does
# before it starts the serving container. Runs in the serving image (Python and boto3).
FETCH_MODEL = """\
import os, sys, tarfile, tempfile
from urllib.parse import urlparse
import boto3
arn = os.environ.get("MODEL_PACKAGE_ARN")
if not arn:
    sys.exit("no model deployed: the pod's mlinfra.io/model-package annotation is empty; "
             "run `mlinfra deploy` (or pin modelVersion in the stack config)")
pkg = boto3.client("sagemaker").describe_model_package(ModelPackageName=arn)
url = pkg["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
src = urlparse(url)
with tempfile.TemporaryFile() as f:
    boto3.client("s3").download_fileobj(src.netloc, src.path.lstrip("/"), f)
    f.seek(0)
    with tarfile.open(fileobj=f) as tar:
        tar.extractall(os.environ["MODEL_DIR"], filter="data")
print("model", arn, "from", url, "in", os.environ["MODEL_DIR"])
"""


def pod_security_context() -> dict[str, Any]:
    """Pods of the serving image: its non-root user, the runtime's seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Containers of the serving image: read-only root, no privilege, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def capture_prefixes(spec: PlatformSpec) -> list[str]:
    """The logs-bucket key prefixes the team's Kubernetes endpoints with capture on write
    to (`data-capture/<endpoint>/AllTraffic/`): what the serving pods' IRSA role may put."""
    return [
        endpoint_capture_uri(CAPTURE_FOLDER, spec.physical(ep.name), CAPTURE_VARIANT) + "/"
        for ep in spec.endpoints
        if ep.kind == "kubernetes" and ep.data_capture.enabled
    ]


def capture_env(
    ep: EndpointSpec, region: str, destination: pulumi.Input[str], endpoint_name: str
) -> list[dict[str, Any]]:
    """The serving container's data capture (`workloads.serving.capture`): sampled requests
    and answers in SageMaker's layout under `<destination>/<endpoint_name>/AllTraffic/`, one
    S3 object per file, written with the pod's IRSA role (PutObject on that prefix only)."""
    return [
        {"name": ENV_DIR, "value": destination},
        {"name": ENV_PERCENT, "value": str(ep.data_capture.sampling_percent)},
        {"name": ENV_ENDPOINT, "value": endpoint_name},
        {"name": ENV_VARIANT, "value": CAPTURE_VARIANT},
        {"name": "AWS_REGION", "value": region},
        {"name": "AWS_DEFAULT_REGION", "value": region},
    ]


def serving_pod_spec(
    ep: EndpointSpec,
    image: pulumi.Input[str],
    region: str,
    service_account: pulumi.Input[str] | None,
    *,
    capture_destination: pulumi.Input[str] | None = None,
    endpoint_name: str | None = None,
) -> dict[str, Any]:
    """The pod template's spec of endpoint `ep` running `image`; with `capture_destination`
    (`s3://<logs>/data-capture`) the server captures under `endpoint_name`."""
    package_env = {
        # Empty until a model is deployed (the init container then says so); the server
        # stamps captured records with its version.
        "name": ENV_PACKAGE,
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{MODEL_ANNOTATION}']"}},
    }
    model_env = [
        {"name": "MODEL_DIR", "value": MODEL_DIR},
        {"name": "AWS_REGION", "value": region},
        package_env,
    ]
    serve_env = [
        {"name": "SM_MODEL_DIR", "value": MODEL_DIR},
        {"name": "SAGEMAKER_BIND_TO_PORT", "value": str(SERVE_PORT)},
    ]
    if capture_destination is not None:
        if not endpoint_name:
            raise ValueError(f"endpoint {ep.name}: capture needs the endpoint's physical name")
        serve_env += [package_env, *capture_env(ep, region, capture_destination, endpoint_name)]

    resources = ep.resources  # limits equal requests (Guaranteed QoS)
    tolerations = []
    if ep.gpus:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    container_security = container_security_context()
    mounts = [
        {"name": "model", "mountPath": MODEL_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    ping = {"httpGet": {"path": "/ping", "port": "http"}, "timeoutSeconds": 2}

    pod_spec = {
        "nodeSelector": {POOL_LABEL: ep.node_pool},
        "tolerations": tolerations,
        # IRSA projects its own token; the server never talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        # The countdown starts with preStop: its sleep, then the server's drain after
        # SIGTERM (a 2 s window, a 1 s last call, in-flight requests up to 30 s).
        "terminationGracePeriodSeconds": PRESTOP_SLEEP_S + 40,
        "initContainers": [
            {
                "name": "fetch-model",
                "image": image,
                "imagePullPolicy": IMAGE_PULL_POLICY,
                "command": ["python", "-c", FETCH_MODEL],
                "env": model_env,
                "resources": FETCH_MODEL_RESOURCES,
                "securityContext": container_security,
                "volumeMounts": mounts,
            }
        ],
        "containers": [
            {
                "name": "serve",
                "image": image,
                "imagePullPolicy": IMAGE_PULL_POLICY,
                "ports": [{"name": "http", "containerPort": SERVE_PORT}],
                "env": serve_env,
                "resources": resources,
                # Loading a large model can take minutes; liveness starts after it.
                "startupProbe": {**ping, "periodSeconds": 5, "failureThreshold": 60},
                "readinessProbe": {**ping, "periodSeconds": 5, "failureThreshold": 2},
                "livenessProbe": {**ping, "periodSeconds": 10, "failureThreshold": 3},
                # Traffic keeps coming until every node has taken the terminating pod out of
                # the Service; SIGTERM only after that (the sleep action: Kubernetes 1.30+).
                "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
                "securityContext": container_security,
                "volumeMounts": [{**mounts[0], "readOnly": True}, mounts[1]],
            }
        ],
        "volumes": [{"name": "model", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    }
    if service_account is not None:
        pod_spec["serviceAccountName"] = service_account
    return pod_spec
