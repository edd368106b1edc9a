"""Every Kubernetes manifest the platform produces validates against the official OpenAPI
schemas of the cluster's Kubernetes version, in strict mode (an unknown or misspelt field
is an error, as `kubectl apply --validate=strict` and server-side field validation make it).

Sources: the objects the Pulumi program registers for each stack, and the training Jobs
`render_training_job` renders on each of the stack's node pools (tests/k8s_support.py).
Schemas: PyPI `kubernetes-validate`, which ships them per Kubernetes version.
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from tests.k8s_support import SPECS, STACKS, all_manifests


def _validate(manifest: dict, version: str) -> str:
    return kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("stack", STACKS)
def test_every_manifest_validates_strictly_against_the_cluster_version(stack):
    version = SPECS[stack].cluster.kubernetes_version
    manifests = all_manifests(stack)
    kinds = {m["kind"] for m in manifests}
    assert {"Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "Job"} <= kinds
    for manifest in manifests:
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            validated = _validate(manifest, version)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{stack}: {name} is invalid for Kubernetes {version}: {err.message}")
        assert validated == version, name  # the schema of that very version, not an older one


def test_strict_validation_refuses_unknown_and_mistyped_fields():
    """The check can fail: a misspelt field and a wrong type are both errors."""
    (job,) = [m for m in all_manifests("vision-dev") if m["kind"] == "Job"][:1]
    assert _validate(job, "1.33") == "1.33"
    typo = copy.deepcopy(job)
    typo["spec"]["template"]["spec"]["automountServiceAccountTokens"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(typo, "1.33")
    wrong = copy.deepcopy(job)
    wrong["spec"]["backoffLimit"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(wrong, "1.33")
