"""Change detection: which stacks a pull request or push touches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.changes import (
    destroy_refusal,
    list_stacks,
    main,
    split_prod,
    touched_stacks,
)

ROOT = Path(__file__).resolve().parents[1]
STACKS_DIR = ["--stacks-dir", str(ROOT / "stacks")]
STACKS = ["nlp-dev", "nlp-prod", "vision-dev", "vision-prod"]


def test_list_stacks_reads_the_config_files():
    assert list_stacks(ROOT / "stacks") == sorted(STACKS + ["local"])


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["stacks/Pulumi.vision-dev.yaml"], ["vision-dev"]),
        (
            ["stacks/Pulumi.vision-dev.yaml", "stacks/Pulumi.nlp-prod.yaml"],
            ["nlp-prod", "vision-dev"],
        ),
        (["components/storage.py"], STACKS),
        (["workloads/train.py"], STACKS),
        (["stacks/__main__.py"], STACKS),
        (["Pulumi.yaml"], STACKS),
        (["pyproject.toml"], STACKS),
        (["policy/mlinfra_policies.py"], STACKS),
        (["./components/spec.py"], STACKS),
        (["README.md", "docs/ops.md", "tests/test_plan.py", "benchmarks/x.py"], []),
        ([".github/workflows/deploy.yml"], []),
        (["stacks/templates/review.yaml"], []),
        # A deleted or unknown stack config touches nothing it could deploy.
        (["stacks/Pulumi.gone-dev.yaml"], []),
        # Not a stack config: a lookalike in a sub folder, a docs file about a stack.
        (["stacks/old/Pulumi.vision-dev.yaml", "docs/Pulumi.vision-dev.yaml"], []),
        ([], []),
    ],
)
def test_touched_stacks(files, expected):
    assert touched_stacks(files, STACKS) == expected


def test_local_only_stack_is_not_deployed_unless_asked(capsys):
    assert main(["--all", "--stacks-dir", str(ROOT / "stacks")]) == 0
    assert "local" not in json.loads(capsys.readouterr().out)["stacks"]
    assert main(["--all", "--include-local", "--stacks-dir", str(ROOT / "stacks")]) == 0
    assert "local" in json.loads(capsys.readouterr().out)["stacks"]


def test_prod_comes_from_the_spec_not_the_name(tmp_path: Path):
    shutil.copy(ROOT / "stacks/Pulumi.nlp-prod.yaml", tmp_path / "Pulumi.main-line.yaml")
    shutil.copy(ROOT / "stacks/Pulumi.nlp-dev.yaml", tmp_path / "Pulumi.team-b.yaml")
    assert split_prod(["main-line", "team-b"], tmp_path) == (["team-b"], ["main-line"])
    assert destroy_refusal("main-line", tmp_path) is not None
    assert destroy_refusal("team-b", tmp_path) is None


@pytest.mark.parametrize("stack", ["nlp-prod", "vision-prod", "local", "prod", "prod-eu"])
def test_destroy_refuses_prod_and_local(stack: str):
    assert destroy_refusal(stack, ROOT / "stacks")


@pytest.mark.parametrize("stack", ["nlp-dev", "vision-dev", "review-pr-12", "production-like"])
def test_destroy_allows_non_prod(stack: str):
    # "production-like" is not named prod: only a whole "prod" word counts.
    assert destroy_refusal(stack, ROOT / "stacks") is None


def test_github_output_lines(capsys):
    assert (
        main(
            [
                "stacks/Pulumi.vision-prod.yaml",
                "README.md",
                "--github",
                "--stacks-dir",
                str(ROOT / "stacks"),
            ]
        )
        == 0
    )
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert json.loads(lines["stacks"]) == ["vision-prod"]
    assert json.loads(lines["prod"]) == ["vision-prod"]
    assert json.loads(lines["nonprod"]) == []
    assert lines["any"] == "true"
    # Each stack's Pulumi jobs run on the self-hosted runner its config names.
    assert json.loads(lines["runners"]) == {
        "vision-prod": ["self-hosted", "linux", "mlinfra-deploy-production"]
    }


def test_base_ref_diffs_against_the_merge_base(tmp_path: Path):
    """A real repository: a branch that edits one stack config touches that stack only."""

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    shutil.copytree(ROOT / "stacks", tmp_path / "stacks", ignore=shutil.ignore_patterns("*.py*"))
    git("init", "-q", "-b", "main")
    git("-c", "user.email=t@e", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "base")
    git("checkout", "-qb", "feature")
    cfg = tmp_path / "stacks/Pulumi.nlp-dev.yaml"
    cfg.write_text(cfg.read_text().replace("maxSize: 2", "maxSize: 3"))
    git("-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qam", "bigger pool")
    out = subprocess.run(
        [sys.executable, "-m", "components.changes", "--base", "main"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stacks"] == ["nlp-dev"]


def test_destroyable_cli_exit_codes(capsys):
    assert main(["--destroyable", "nlp-prod", "--stacks-dir", str(ROOT / "stacks")]) == 1
    assert "refused" in capsys.readouterr().out
    assert main(["--destroyable", "nlp-dev", "--stacks-dir", str(ROOT / "stacks")]) == 0
