"""`mlinfra tune`: search, then register the best trial's artifact and put it through the
gate (and, with `deploy`, roll it out like `mlinfra deploy`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workloads.local import env as localenv
from workloads.platform import NotDeclaredError, PlatformDescriptor, load_descriptor
from workloads.training.artifact import publish_model
from workloads.tuning.local import LocalTuner
from workloads.tuning.report import save_report, summary_lines
from workloads.tuning.space import SearchSpace, load_space
from workloads.tuning.study import TrialView, TuneResult, TuningError


@dataclass
class TuneOutcome:
    space: SearchSpace
    result: TuneResult
    report: Path
    version: int | None = None
    status: str = ""
    gate: str = ""
    messages: list[str] = field(default_factory=list)


def study_name(space: SearchSpace, space_path: Path, group: str, given: str | None) -> str:
    return given or space.study or f"{group}-{space_path.stem}"


def pick_group(descriptor: PlatformDescriptor, group: str | None) -> str:
    groups = descriptor.registry.model_groups
    if group is None:
        if len(groups) != 1:
            raise TuningError(
                f"the stack declares model groups {sorted(groups)}: name one with --group"
            )
        return next(iter(groups))
    NotDeclaredError.lookup(groups, group)
    return group


def tune_local(
    space_path: Path,
    *,
    train: str,
    validation: str | None = None,
    stack: str = "local",
    state: str | Path | None = None,
    group: str | None = None,
    study: str | None = None,
    deploy: bool = False,
    stacks_dir: str | Path = "stacks",
    on_start: Callable[[SearchSpace, str], None] | None = None,
    on_update: Callable[[TrialView], None] | None = None,
) -> TuneOutcome:
    space = load_space(space_path)  # a bad space fails here, before any trial
    paths = localenv.StackPaths.of(stack, state)
    if not paths.descriptor.is_file():
        raise TuningError(f"stack {stack!r} is not up: run `mlinfra up --stack {stack}` first")
    descriptor = load_descriptor(paths.descriptor)
    group = pick_group(descriptor, group)
    name = study_name(space, space_path, group, study)
    folder = paths.root / "tuning" / name
    env = dict(os.environ) | {"MLINFRA_PLATFORM": str(paths.descriptor)}
    tuner = LocalTuner(
        space, folder, study=name, train=train, validation=validation, env=env, on_update=on_update
    )
    if on_start:
        on_start(space, name)
    result = tuner.run()
    report = save_report(tuner.study, result, space.objective.metric, folder / "report.html")
    outcome = TuneOutcome(space, result, report)
    if result.best is None:
        outcome.messages.append("no trial completed: nothing to register")
        return outcome
    if result.best_model_dir is None:
        outcome.messages.append(
            f"the best trial ({result.best.number}) ran on another backend: its artifact is "
            "registered from there"
        )
        return outcome
    register_best(outcome, descriptor, group)
    if deploy:
        if outcome.status == "Approved":
            outcome.messages += localenv.rollout(stack, state, stacks_dir=stacks_dir).messages
        else:
            outcome.messages.append(f"not deployed: version {outcome.version} is {outcome.status}")
    return outcome


def register_best(outcome: TuneOutcome, descriptor: PlatformDescriptor, group: str) -> None:
    """Publish the best trial's artifact to the artifacts bucket and register it once (a
    rerun of a finished search finds its version), with its metrics and the search's
    summary; then the gate."""
    from workloads.jobs.run import apply_gate
    from workloads.registry.store import registry_from_descriptor

    result, metric = outcome.result, outcome.space.objective.metric
    assert result.best is not None and result.best_model_dir is not None
    name = f"tune-{result.study}-trial-{result.best.number:04d}"
    uri = f"{descriptor.buckets.artifacts.rstrip('/')}/models/{group}/{name}"
    registry = registry_from_descriptor(descriptor)
    existing = [v for v in registry.list_versions(group) if v.model_uri == uri]
    if existing:
        version = existing[0]
    else:
        publish_model(result.best_model_dir, uri)
        lines = summary_lines(result, metric)
        summary = "; ".join(line for line in lines if not line.startswith("journal:"))
        version = registry.register(
            group,
            uri,
            result.best_metrics,
            image=f"{descriptor.registry.repositories.get('serve', 'local')}:local",
            description=f"tuned: {summary}",
        )
    outcome.version = version.version
    outcome.status, outcome.gate = apply_gate(
        registry, descriptor, group, version.version, dict(version.metrics)
    )
    outcome.messages.append(
        f"registered: {group} v{version.version} ({outcome.status}) at {uri}: {outcome.gate}"
    )
