"""A Kubernetes security scanner (checkov's kubernetes framework) over every manifest the
platform produces, with an explicit allow-list of what is accepted and why.

Every failed check must be on the allow-list, and every allow-list entry must still be
needed (a fixed finding leaves no stale exception behind).

checkov lives in its own virtual environment (`make scan-venv`, .venv-scan/): it pins
boto3==1.35.49, packaging<24 and networkx<2.7, which would downgrade the project's own.
`make test` sets MLINFRA_CHECKOV, and then a missing scanner fails the test; a plain
`pytest` without .venv-scan skips it with that hint. No network: the scanner is told not
to check for updates or download anything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s_support import STACKS, all_manifests

ROOT = Path(__file__).resolve().parents[1]

# (check, resource pattern "Kind.namespace.name", why it is accepted)
ALLOWED: list[tuple[str, str, str]] = [
    # Team images: ECR repositories have IMMUTABLE tags, so a tag names one image for good
    # (as a digest does); jobs also take a digest (image_tag="sha256:..."). The monitoring
    # CronJobs run the team's serving image, also by immutable tag.
    ("CKV_K8S_43", r"(Deployment|Job|CronJob)\.[a-z0-9-]+\..*", "immutable ECR tags pin the image"),
    # The platform's images run as uid 1000 (the `mlinfra` user of docker/*.Dockerfile),
    # non-root, no capabilities, read-only root filesystem, no hostPath that a host uid
    # could share; a uid above 10000 adds nothing here.
    (
        "CKV_K8S_40",
        r"(Deployment|Job|CronJob)\.[a-z0-9-]+\..*",
        "uid 1000, restricted, no hostPath",
    ),
    # The NVIDIA device plugin (kube-system): it writes its socket into the kubelet's
    # root-owned /var/lib/kubelet/device-plugins (a hostPath), so it runs as root with no
    # capabilities, no privilege escalation, RuntimeDefault seccomp and a read-only root.
    ("CKV_K8S_23", r"DaemonSet\.kube-system\.nvidia-device-plugin", "root for the socket dir"),
    ("CKV_K8S_40", r"DaemonSet\.kube-system\.nvidia-device-plugin", "root for the socket dir"),
    # A public, versioned NVIDIA image; a GPU node must advertise its GPUs even while the
    # registry is unreachable, so the node's copy is used (IfNotPresent).
    ("CKV_K8S_15", r"DaemonSet\.kube-system\.nvidia-device-plugin", "node-critical, public"),
    ("CKV_K8S_43", r"DaemonSet\.kube-system\.nvidia-device-plugin", "NVIDIA's versioned tag"),
    # The device plugin serves the kubelet over a unix socket and has no health endpoint;
    # the kubelet re-registers it when it restarts.
    # cluster-autoscaler watches pods and nodes and resizes groups: it needs its API token.
    ("CKV_K8S_38", r"Deployment\.kube-system\.cluster-autoscaler", "talks to the API"),
    ("CKV_K8S_8", r"DaemonSet\.kube-system\.nvidia-device-plugin", "no health endpoint"),
    ("CKV_K8S_9", r"DaemonSet\.kube-system\.nvidia-device-plugin", "no health endpoint"),
]


def _checkov() -> str | None:
    path = os.environ.get("MLINFRA_CHECKOV") or str(ROOT / ".venv-scan" / "bin" / "checkov")
    if Path(path).is_file():
        return path
    if os.environ.get("MLINFRA_CHECKOV"):
        pytest.fail(f"MLINFRA_CHECKOV={path} does not exist; run `make scan-venv`")
    return None


def _scan(checkov: str, folder: Path) -> list[dict]:
    env = {
        **os.environ,
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",  # no call to PyPI
        "BC_SKIP_MAPPING": "true",
        "LOG_LEVEL": "ERROR",
    }
    run = subprocess.run(
        [checkov, "-d", str(folder), "--framework", "kubernetes", "-o", "json"]
        + ["--skip-download", "--quiet", "--compact"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode in (0, 1), run.stderr[-2000:]  # 1: findings
    reports = json.loads(run.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    (report,) = [r for r in reports if r.get("check_type") == "kubernetes"]
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] > 0
    return report["results"]["failed_checks"]


def _allowed(check: str, resource: str) -> int | None:
    for i, (check_id, pattern, _) in enumerate(ALLOWED):
        if check == check_id and re.fullmatch(pattern, resource):
            return i
    return None


@pytest.fixture(scope="module")
def checkov() -> str:
    path = _checkov()
    if path is None:
        pytest.skip("checkov is not installed: run `make scan-venv` (make test does)")
    return path


def test_scanner_findings_are_all_on_the_allow_list(checkov, tmp_path):
    for stack in STACKS:
        (tmp_path / f"{stack}.yaml").write_text(yaml.safe_dump_all(all_manifests(stack)))
    failed = _scan(checkov, tmp_path)
    used = set()
    unexpected = []
    for finding in failed:
        index = _allowed(finding["check_id"], finding["resource"])
        if index is None:
            unexpected.append(
                f"{finding['check_id']} {finding['check_name']}: {finding['resource']}"
            )
        else:
            used.add(index)
    assert unexpected == [], "\n".join(sorted(set(unexpected)))
    stale = [ALLOWED[i] for i in range(len(ALLOWED)) if i not in used]
    assert stale == [], f"allow-list entries no finding needs any more: {stale}"


def test_the_scanner_catches_a_bad_pod(checkov, tmp_path):
    """The scan can fail: a privileged, root, host-network pod is reported."""
    (job,) = [m for m in all_manifests("vision-dev") if m["kind"] == "Job"][:1]
    bad = yaml.safe_load(yaml.safe_dump(job))
    pod = bad["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["containers"][0]["securityContext"] = {"privileged": True}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    found = {f["check_id"] for f in _scan(checkov, tmp_path)}
    assert {"CKV_K8S_16", "CKV_K8S_19"} <= found  # privileged, host network
