"""CI pushes both images to every team stack's repositories, tagged with the commit SHA."""

from __future__ import annotations

from pathlib import Path

import yaml

from components.images import push_targets
from components.registry import repository_name
from components.spec import load_stack

ROOT = Path(__file__).resolve().parents[1]


def test_every_team_stack_gets_its_own_repositories_in_its_region_and_environment():
    targets = {t["stack"]: t for t in push_targets(ROOT / "stacks")}
    stacks = [p.name.split(".")[1] for p in (ROOT / "stacks").glob("Pulumi.*.yaml")]
    assert set(targets) == set(stacks) - {"local"}
    for stack, target in targets.items():
        spec = load_stack(stack, ROOT / "stacks")
        assert target["train"] == repository_name(spec, "train")
        assert target["serve"] == repository_name(spec, "serve")
        assert target["region"] == spec.region
        assert target["environment"] == ("production" if spec.is_prod else "nonprod")


def test_the_workflow_builds_both_images_on_main_tagged_with_the_sha():
    workflow = yaml.safe_load((ROOT / ".github/workflows/images.yml").read_text())
    assert workflow[True]["push"]["branches"] == ["main"]  # YAML reads `on` as True
    push = workflow["jobs"]["push"]
    assert push["permissions"]["id-token"] == "write"
    assert push["environment"] == "${{ matrix.target.environment }}"
    assert "targets" in push["strategy"]["matrix"]["target"]
    (build,) = [s for s in push["steps"] if "docker buildx build" in s.get("run", "")]
    assert build["env"]["TAG"] == "${{ github.sha }}"
    assert "for kind in train serve" in build["run"]
    assert "docker/$kind.Dockerfile" in build["run"] and "--push" in build["run"]
    assert "describe-images" in build["run"]  # an existing (immutable) tag is not rebuilt
    for kind in ("train", "serve"):
        assert (ROOT / f"docker/{kind}.Dockerfile").is_file()
    assert "components.images --github" in yaml.safe_dump(workflow["jobs"]["targets"])
