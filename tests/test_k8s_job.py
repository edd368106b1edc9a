"""The rendered Kubernetes manifests of a training run."""

from __future__ import annotations

import json

import pytest
import yaml

from workloads.jobs.kubernetes_manifest import render_training_job
from workloads.platform import PlatformDescriptor, load_descriptor


@pytest.fixture
def descriptor() -> PlatformDescriptor:
    return PlatformDescriptor.model_validate(
        {
            "backend": "aws",
            "stack": "vision-dev",
            "team": "vision",
            "environment": "dev",
            "region": "eu-west-1",
            "buckets": {
                "raw": "s3://vision-dev-raw",
                "features": "s3://vision-dev-features",
                "artifacts": "s3://vision-dev-artifacts",
                "logs": "s3://vision-dev-logs",
            },
            "feature_store": {"database": None, "groups": {}},
            "registry": {
                "model_groups": {},
                "repositories": {
                    "train": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/vision-train",
                    "serve": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/vision-serve",
                },
            },
            "endpoints": {},
            "cluster": {
                "name": "vision-dev",
                "namespace": "team-vision",
                "service_account": "vision-training",
                "node_pools": {
                    "gpu": {
                        "name": "gpu",
                        "node_group": "vision-dev-gpu",
                        "instance_types": ["g5.12xlarge"],
                        "gpu": "A10G",
                        "gpus_per_node": 4,
                    },
                    "cpu": {
                        "name": "cpu",
                        "node_group": "vision-dev-cpu",
                        "instance_types": ["m6i.xlarge"],
                        "gpu": None,
                        "gpus_per_node": 0,
                    },
                },
            },
        }
    )


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_single_node_job(descriptor):
    manifests = render_training_job(
        descriptor,
        name="churn-2024",
        pool="gpu",
        train_uri="s3://vision-dev-features/churn/train/",
        validation_uri="s3://vision-dev-features/churn/validation/",
        hyperparameters={"target": "churned", "epochs": 20, "hidden_sizes": [64, 32]},
        tag="2024.11.3",
        cpu="8",
        memory="32Gi",
    )
    assert [m["kind"] for m in manifests] == ["Job"]
    job = manifests[0]
    assert job["apiVersion"] == "batch/v1"
    assert job["metadata"]["namespace"] == "team-vision"
    assert "completionMode" not in job["spec"] and job["spec"]["completions"] == 1
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "vision-training"
    assert pod["nodeSelector"] == {"mlinfra.io/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    (container,) = pod["containers"]
    assert container["image"].endswith("/vision-train:2024.11.3")  # the tag, never latest
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "4"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["imagePullPolicy"] == "Always"  # a cached private image proves nothing
    assert container["command"] == [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=4",
        "-m",
        "workloads.train",
    ]
    env = env_of(container)
    assert env["SM_CHANNEL_TRAIN"] == "s3://vision-dev-features/churn/train/"
    assert env["SM_CHANNEL_VALIDATION"] == "s3://vision-dev-features/churn/validation/"
    assert env["MLINFRA_MODEL_URI"] == "s3://vision-dev-artifacts/models/churn-2024"
    assert json.loads(env["SM_HPS"]) == {
        "target": "churned",
        "epochs": 20,
        "hidden_sizes": [64, 32],
    }
    assert load_descriptor(env["MLINFRA_PLATFORM"]) == descriptor  # inline JSON round-trips
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/opt/ml/model", "/opt/ml/output", "/opt/ml/checkpoints", "/tmp"} <= mounts
    assert env["MLINFRA_CHECKPOINT_DIR"] == "/opt/ml/checkpoints"
    # Checkpoints outlive the pod: a replacement (spot) resumes from S3.
    assert env["MLINFRA_CHECKPOINT_URI"] == "s3://vision-dev-artifacts/checkpoints/churn-2024"
    assert env["MLINFRA_FAILURE_FILE"] == container["terminationMessagePath"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Spot as a non-event: a disruption is not counted, the trainer's own failure is final,
    # and SIGTERM leaves time for a checkpoint.
    assert pod["restartPolicy"] == "Never"  # what podFailurePolicy requires
    assert pod["terminationGracePeriodSeconds"] >= 60
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [1]
    assert rules[1]["onExitCodes"]["containerName"] == container["name"]
    yaml.safe_dump_all(manifests)  # plain data, serialisable as-is


def test_multi_node_indexed_job_with_headless_service(descriptor):
    manifests = render_training_job(
        descriptor,
        name="big-run",
        pool="gpu",
        train_uri="s3://vision-dev-features/big/",
        hyperparameters={"target": "y"},
        nodes=3,
        image="registry.local/train:abc123",
        checkpoint_claim="big-run-checkpoints",
    )
    service, job = manifests
    assert service["kind"] == "Service" and job["kind"] == "Job"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    template = spec["template"]
    assert template["spec"]["subdomain"] == service["metadata"]["name"]
    # the service selects exactly the job's pods
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    assert container["image"] == "registry.local/train:abc123"
    command = container["command"]
    assert command[0] == "torchrun" and command[-2:] == ["-m", "workloads.train"]
    assert "--nnodes=3" in command and "--nproc_per_node=4" in command
    assert "--node_rank=$(JOB_COMPLETION_INDEX)" in command
    # pod 0 of an Indexed Job is <job>-0, resolvable through the headless service
    assert "--rdzv_endpoint=big-run-0.big-run.team-vision.svc.cluster.local:29500" in command
    assert "--rdzv_backend=static" in command
    env = env_of(container)
    assert "job-completion-index" in env["JOB_COMPLETION_INDEX"]["fieldRef"]["fieldPath"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "big-run-checkpoints"


def test_cpu_pool_has_no_gpu_requests(descriptor):
    (job,) = render_training_job(
        descriptor,
        name="small",
        pool="cpu",
        train_uri="s3://b/k",
        tag="v1",
        hyperparameters={"target": "y"},
    )
    pod = job["spec"]["template"]["spec"]
    assert "tolerations" not in pod
    assert "nvidia.com/gpu" not in json.dumps(pod["containers"][0]["resources"])
    assert "--nproc_per_node=1" in pod["containers"][0]["command"]
    assert pod["nodeSelector"] == {"mlinfra.io/pool": "cpu"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool": "tpu"}, "unknown node pool 'tpu'; stack 'vision-dev' has: cpu, gpu"),
        ({"name": "Bad_Name"}, "job name 'Bad_Name'"),
        ({"nodes": 0}, "nodes must be at least 1"),
        ({"tag": None}, "give the image tag (tags are immutable; there is no 'latest')"),
        ({"image": "registry.local/train:abc"}, "not both"),
    ],
)
def test_bad_arguments_are_named(descriptor, kwargs, message):
    args = {"name": "ok", "pool": "gpu", "train_uri": "s3://b/k", "tag": "v1"} | kwargs
    with pytest.raises(ValueError) as err:
        render_training_job(descriptor, **args)
    assert message in str(err.value)


def test_hyperparameters_are_checked_as_the_trainer_reads_them(descriptor):
    with pytest.raises(ValueError, match="unknown hyperparameter 'epoch'"):
        render_training_job(
            descriptor,
            name="x",
            pool="gpu",
            train_uri="s3://b/k",
            tag="v1",
            hyperparameters={"target": "y", "epoch": "3"},
        )


def test_descriptor_without_cluster(descriptor):
    local = descriptor.model_copy(update={"cluster": None})
    with pytest.raises(ValueError, match="no Kubernetes cluster"):
        render_training_job(local, name="x", pool="gpu", train_uri="s3://b/k", tag="v1")
