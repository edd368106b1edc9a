"""Every pod the platform renders is admitted by the team namespace.

The namespace's LimitRange defaulting, the request <= limit rule and the ResourceQuota
arithmetic (components/admission.py) are applied to every pod template: the endpoints'
Deployments from the Pulumi render of each stack, and training Jobs on every node pool of
each stack's descriptor. The `restricted` Pod Security Standard is checked on the same
pods. The checks themselves are tested on pods they must refuse, so they can fail.
"""

from __future__ import annotations

import copy
import json

import pytest

from components.admission import (
    DEFAULT_LIMIT,
    PodUsage,
    admit,
    limit_range_spec,
    over_quota,
    quantity,
    restricted_violations,
)
from components.tenancy import IMDS_CIDR
from tests.k8s_support import (
    SPECS,
    STACKS,
    all_manifests,
    descriptor,
    job_manifests,
    pod_template,
    pulumi_manifests,
)
from tests.stack_support import rendered_stack
from workloads.jobs.kubernetes_manifest import render_training_job

LIMIT_RANGE = limit_range_spec()
HP = {"target": "label"}


def _hard(stack: str) -> dict[str, str]:
    rendered = rendered_stack(stack)
    (quota,) = [m for m in pulumi_manifests(rendered) if m["kind"] == "ResourceQuota"]
    return quota["spec"]["hard"]


def _limit_range(stack: str) -> dict:
    (lr,) = [m for m in pulumi_manifests(rendered_stack(stack)) if m["kind"] == "LimitRange"]
    return lr["spec"]


def _team_pods(stack: str) -> list[tuple[dict, dict]]:
    """(manifest, pod spec) of every pod template in the team namespace."""
    namespace = SPECS[stack].team
    out = []
    for manifest in all_manifests(stack):
        pod = pod_template(manifest)
        if pod is not None and manifest["metadata"]["namespace"] == namespace:
            out.append((manifest, pod))
    return out


# --- the admission arithmetic, on pods it must refuse ------------------------------------------


def test_a_cpu_request_without_a_limit_is_refused_by_the_limit_range():
    """The reported bug: `cpu="4"` with no limit gets the range's 1-CPU default limit."""
    pod = {"containers": [{"name": "train", "resources": {"requests": {"cpu": "4"}}}]}
    verdict = admit(pod, LIMIT_RANGE, {})
    assert not verdict.admitted
    assert "cpu request 4 is above its limit 1" in verdict.problems[0]
    assert DEFAULT_LIMIT["cpu"] == "1"


def test_limit_range_defaults_fill_what_a_container_leaves_out():
    pod = {"containers": [{"name": "c", "resources": {"limits": {"memory": "4Gi"}}}]}
    verdict = admit(pod, LIMIT_RANGE, {"requests.memory": "8Gi", "limits.cpu": "2"})
    assert verdict.admitted, verdict.problems
    assert verdict.usage.requests["memory"] == quantity("4Gi")  # copied from the limit
    assert verdict.usage.requests["cpu"] == quantity("250m")  # the range's defaultRequest
    assert verdict.usage.limits["cpu"] == quantity("1")  # the range's default


def test_quota_counts_init_containers_as_the_larger_and_refuses_missing_limits():
    pod = {
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}],
        "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}] * 2,
    }
    verdict = admit(pod, {}, {"requests.cpu": "10"})
    assert verdict.usage.requests["cpu"] == 3
    assert not admit(pod, {}, {"requests.cpu": "8"}, replicas=3).admitted
    refused = admit(pod, {}, {"limits.cpu": "10"})
    assert any("must have a cpu limit" in p for p in refused.problems)
    used = PodUsage({"cpu": quantity("8")}, {})
    assert not admit(pod, {}, {"requests.cpu": "10"}, used=used).admitted
    assert not admit(pod, {}, {"pods": "1"}, replicas=2).admitted


def test_extended_resources_need_requests_equal_to_limits():
    container = {"name": "g", "resources": {"requests": {"nvidia.com/gpu": 1}}}
    container["resources"]["limits"] = {"nvidia.com/gpu": 2}
    assert not admit({"containers": [container]}, {}, {}).admitted


def test_restricted_check_refuses_what_the_standard_refuses():
    good = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    assert restricted_violations(good) == []
    breaks = {
        "hostNetwork": lambda p: p.update(hostNetwork=True),
        "hostPath": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "root": lambda p: p["securityContext"].pop("runAsNonRoot"),
        "seccomp": lambda p: p["securityContext"].pop("seccompProfile"),
        "escalation": lambda p: p["containers"][0]["securityContext"].pop(
            "allowPrivilegeEscalation"
        ),
        "capabilities": lambda p: p["containers"][0]["securityContext"].update(
            capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}
        ),
        "privileged": lambda p: p["containers"][0]["securityContext"].update(privileged=True),
        "hostPort": lambda p: p["containers"][0].update(
            ports=[{"containerPort": 1, "hostPort": 1}]
        ),
    }
    for name, change in breaks.items():
        pod = copy.deepcopy(good)
        change(pod)
        assert restricted_violations(pod), name


# --- every rendered pod ---------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_rendered_pod_is_admitted_by_the_limit_range_and_the_quota(stack):
    hard, limit_range = _hard(stack), _limit_range(stack)
    spec = SPECS[stack]
    pods = _team_pods(stack)
    assert any(m["kind"] == "Job" for m, _ in pods)
    total = PodUsage({}, {})
    for manifest, pod in pods:
        replicas = manifest["spec"].get("parallelism", 1)
        if manifest["kind"] == "Deployment":
            ep = next(
                e for e in spec.endpoints if spec.physical(e.name) == manifest["metadata"]["name"]
            )
            replicas = ep.max_instances
        verdict = admit(pod, limit_range, hard, replicas=replicas)
        assert verdict.admitted, (manifest["metadata"]["name"], verdict.problems)
        # Nothing the LimitRange would add: every container states all it needs.
        for container in pod["containers"] + pod.get("initContainers", []):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) <= set(resources["limits"])
        if manifest["kind"] == "Deployment":
            ep = next(
                e for e in spec.endpoints if spec.physical(e.name) == manifest["metadata"]["name"]
            )
            total = total + verdict.usage.scaled(ep.min_instances + 1)
    # All the endpoints at their minimum, each with a rollout surge pod, fit at once.
    assert over_quota(total, hard) == []


def test_a_gpu_training_pod_gets_its_share_of_the_node_not_the_limit_range_default():
    desc = descriptor("vision-dev")
    (job,) = render_training_job(
        desc, name="defaults", pool="train-a10g", train_uri="s3://b/k", tag="1", hyperparameters=HP
    )
    pod = pod_template(job)
    (train,) = pod["containers"]
    assert train["resources"]["limits"] == {"cpu": "3", "memory": "12Gi", "nvidia.com/gpu": "1"}
    assert train["resources"]["requests"] == train["resources"]["limits"]
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "3Gi"}
    assert quantity(shm["emptyDir"]["sizeLimit"]) < quantity(train["resources"]["limits"]["memory"])
    (job,) = render_training_job(
        desc,
        name="four",
        pool="train-a10g",
        train_uri="s3://b/k",
        cpu="4",
        tag="1",
        hyperparameters=HP,
    )
    verdict = admit(pod_template(job), LIMIT_RANGE, _hard("vision-dev"))
    assert verdict.admitted, verdict.problems
    assert verdict.usage.limits["cpu"] == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu": "lots"}, "cpu: 'lots' is not a Kubernetes quantity"),
        ({"memory": "0"}, "memory: '0' is not above zero"),
        ({"memory": "4Gi", "shm": "4Gi"}, "shm: 4Gi must be above zero and below memory"),
    ],
)
def test_bad_resources_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_training_job(
            descriptor("vision-dev"),
            name="x",
            pool="train-a10g",
            train_uri="s3://b/k",
            tag="1",
            hyperparameters=HP,
            **kwargs,
        )


# --- Pod Security and tenancy ------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_team_pod_meets_the_restricted_pod_security_standard(stack):
    namespace = next(m for m in all_manifests(stack) if m["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = _team_pods(stack)
    assert pods
    for manifest, pod in pods:
        assert restricted_violations(pod) == [], manifest["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, manifest["metadata"]["name"]
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["imagePullPolicy"] == "Always", manifest["metadata"]["name"]


@pytest.mark.parametrize("stack", STACKS)
def test_the_device_plugin_keeps_only_the_privilege_it_needs(stack):
    """It runs in kube-system, outside `restricted`: only the kubelet socket hostPath and
    root (to write into that root-owned directory) stay; README says why."""
    (plugin,) = [m for m in all_manifests(stack) if m["kind"] == "DaemonSet"]
    assert plugin["metadata"]["namespace"] == "kube-system"
    pod = pod_template(plugin)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert restricted_violations(pod) == [
        "volume device-plugin is of type ['hostPath']",
        "container nvidia-device-plugin must run as non-root (runAsNonRoot: true)",
    ]


@pytest.mark.parametrize("stack", STACKS)
def test_network_policies_fence_the_namespace_and_are_enforced(stack):
    spec, rendered = SPECS[stack], rendered_stack(stack)
    policies = {
        m["metadata"]["name"]: m["spec"]
        for m in pulumi_manifests(rendered)
        if m["kind"] == "NetworkPolicy"
    }
    for policy in policies.values():
        assert policy["podSelector"] == {}  # every pod of the namespace
    deny = policies["default-deny-ingress"]
    assert deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    # The only ingress allowed is from pods of the same namespace (no namespaceSelector).
    ingress_rules = [r for p in policies.values() for r in p.get("ingress", [])]
    assert ingress_rules == [{"from": [{"podSelector": {}}]}]
    egress = [r for p in policies.values() for r in p.get("egress", [])]
    assert all(IMDS_CIDR in peer["ipBlock"]["except"] for r in egress for peer in r["to"])
    for m in pulumi_manifests(rendered):
        if m["kind"] == "NetworkPolicy":
            assert m["metadata"]["namespace"] == spec.team
    (addon,) = [
        a for a in rendered.by_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "vpc-cni"
    ]
    assert json.loads(addon.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    cluster = rendered.one("aws:eks/cluster:Cluster")
    assert addon.inputs["clusterName"] == cluster.outputs["name"]


@pytest.mark.parametrize("stack", STACKS)
def test_workload_service_account_mounts_no_api_token(stack):
    team = SPECS[stack].team
    (sa,) = [
        m
        for m in all_manifests(stack)
        if m["kind"] == "ServiceAccount"
        and m["metadata"].get("namespace") == team
        and m["metadata"]["name"].endswith("-workloads")
    ]
    assert sa["automountServiceAccountToken"] is False


def test_jobs_cover_every_pool():
    for stack in STACKS:
        pools = set(descriptor(stack).cluster.node_pools)
        rendered_pools = {
            pod_template(m)["nodeSelector"]["mlinfra.io/pool"]
            for m in job_manifests(stack)
            if m["kind"] == "Job"
        }
        assert rendered_pools == pools


def test_quantities_parse_exactly_and_within_kubernetes_bounds():
    assert quantity("500m") * 2 == 1
    assert quantity("16Gi") == 16 * 2**30 and quantity("2k") == 2000 and quantity(4) == 4
    assert quantity("9223372036854775807") == 2**63 - 1
    for bad in ("9223372036854775808", "1x", "-1", "", True):
        with pytest.raises(ValueError):
            quantity(bad)
