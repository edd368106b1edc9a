"""`mlinfra tune`: search, then register the best trial's artifact and put it through the
gate (and, with `deploy`, roll it out like `mlinfra deploy`)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna

from workloads.local import env as localenv
from workloads.platform import NotDeclaredError, PlatformDescriptor, load_descriptor
from workloads.training.artifact import publish_model
from workloads.tuning.local import LocalTuner
from workloads.tuning.report import save_report, summary_lines
from workloads.tuning.space import STUDY_NAME, SearchSpace, load_space
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
    """`--study`, else the space's `study:`, else GROUP-SPACE. A study is a folder under
    the stack's state: `--study` is held to the space file's rule (no '/', no '..')."""
    if given is not None and not re.fullmatch(STUDY_NAME, given):
        raise TuningError(
            f"--study {given!r}: a study name is 1 to 63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return given or space.study or f"{group}-{space_path.stem}"


def check_data(channels: dict[str, str | None]) -> None:
    """Local data must be there before any trial starts (each trial would fail on it);
    an `s3://` location is the trials' to read."""
    from urllib.parse import urlparse

    from workloads.training.data import DataError, data_files, local_channel

    for option, location in channels.items():
        if location is None or urlparse(location).scheme == "s3":
            continue
        try:
            data_files(local_channel(location))
        except DataError as exc:
            raise TuningError(f"--{option} {location}: {exc}") from None


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
    check_data({"train": train, "validation": validation})
    folder = paths.root / "tuning" / name
    env = dict(os.environ) | {"MLINFRA_PLATFORM": str(paths.descriptor)}
    tuner = LocalTuner(
        space, folder, study=name, train=train, validation=validation, env=env, on_update=on_update
    )
    if on_start:
        on_start(space, name)

    def rollout(outcome: TuneOutcome) -> list[str]:
        return localenv.rollout(stack, state, stacks_dir=stacks_dir).messages

    return conclude(
        tuner.study,
        tuner.run(),
        space,
        folder,
        descriptor,
        group,
        deploy=rollout if deploy else None,
    )


def conclude(
    study: optuna.Study,
    result: TuneResult,
    space: SearchSpace,
    folder: Path,
    descriptor: PlatformDescriptor,
    group: str,
    serve_image_tag: str | None = None,
    deploy: Callable[[TuneOutcome], list[str]] | None = None,
) -> TuneOutcome:
    """What every driver does once the search ends: the report, then the best trial
    registered and gated, then (`--deploy`) rolled out by `deploy` if approved."""
    report = save_report(study, result, space.objective.metric, folder / "report.html")
    outcome = TuneOutcome(space, result, report)
    if result.best is None:
        outcome.messages.append("no trial completed: nothing to register")
    elif result.best_model_dir is None and result.best_model_uri is None:
        outcome.messages.append(
            f"the best trial ({result.best.number}) ran on another backend: its artifact is "
            "registered from there"
        )
    else:
        register_best(outcome, descriptor, group, serve_image_tag or "local")
    if deploy is not None and outcome.version is not None:
        if outcome.status == "Approved":
            outcome.messages += deploy(outcome)
        else:
            outcome.messages.append(f"not deployed: version {outcome.version} is {outcome.status}")
    return outcome


def tune_stack(
    space_path: Path,
    *,
    stack: str = "local",
    state: str | Path | None = None,
    platform: str | Path | None = None,
    image: str | None = None,
    pool: str | None = None,
    instance_type: str | None = None,
    serve_image: str | None = None,
    stacks_dir: str | Path = "stacks",
    on_note: Callable[[str], None] | None = None,
    **common: Any,
) -> TuneOutcome:
    """`mlinfra tune --stack S`: the driver of the stack's training backend (local
    processes, Jobs on the stack's GPU pool, or SageMaker's tuner)."""
    from workloads.jobs.base import JobError, default_backend
    from workloads.jobs.run import stack_descriptor

    try:
        descriptor = stack_descriptor(stack, state, platform)
    except JobError as exc:
        raise TuningError(str(exc)) from None
    backend = default_backend(descriptor)
    if backend == "local":
        cloud_only = (
            ("image", image),
            ("pool", pool),
            ("instance-type", instance_type),
            ("serve-image", serve_image),  # a local trial registers with the local image
        )
        given = [f"--{n}" for n, v in cloud_only if v is not None]
        if given:
            raise TuningError(
                f"{' and '.join(given)}: for stacks that train on Kubernetes or SageMaker; "
                f"stack {stack!r} runs its trials as local processes"
            )
        return tune_local(space_path, stack=stack, state=state, stacks_dir=stacks_dir, **common)
    if backend == "kubernetes":
        if instance_type is not None:
            raise TuningError(
                f"--instance-type {instance_type}: a SageMaker instance type; stack {stack!r} "
                "runs its trials on Kubernetes (the instance types are its node pools': --pool)"
            )
        return tune_kubernetes(
            space_path,
            stack=stack,
            state=state,
            platform=platform,
            image=image,
            pool=pool,
            serve_image=serve_image,
            on_note=on_note,
            **common,
        )
    if pool is not None:
        raise TuningError(
            f"--pool {pool}: a Kubernetes node pool; stack {stack!r} tunes with SageMaker's "
            "tuner (its training jobs run on SageMaker instances)"
        )
    return tune_sagemaker(
        space_path,
        stack=stack,
        state=state,
        platform=platform,
        image=image,
        instance_type=instance_type,
        serve_image=serve_image,
        on_note=on_note,
        **common,
    )


def tune_kubernetes(
    space_path: Path,
    *,
    train: str,
    stack: str,
    image: str | None,
    validation: str | None = None,
    pool: str | None = None,
    serve_image: str | None = None,
    platform: str | Path | None = None,
    state: str | Path | None = None,
    group: str | None = None,
    study: str | None = None,
    deploy: bool = False,
    jobs: Any = None,
    on_start: Callable[[SearchSpace, str], None] | None = None,
    on_update: Callable[[TrialView], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> TuneOutcome:
    """Tune on the stack's GPU pool: each trial a Kubernetes Job (`tuning.kubernetes`), the
    study kept under the stack's state dir, the best trial's S3 artifact registered."""
    from workloads.jobs.base import JobError, gpu_pools
    from workloads.jobs.kubernetes import KubernetesJobs
    from workloads.jobs.run import stack_descriptor
    from workloads.tuning.kubernetes import KubernetesTuner, TrialJobs

    space = load_space(space_path)  # a bad space fails here, before any trial
    try:
        descriptor = stack_descriptor(stack, state, platform)
        jobs = jobs or KubernetesJobs(descriptor)
    except JobError as exc:
        raise TuningError(str(exc)) from None
    group = pick_group(descriptor, group)
    if pool is None:
        pools = gpu_pools(descriptor)
        if len(pools) != 1:
            raise TuningError(
                f"stack {stack!r} has GPU pools {pools}: name the trials' pool with --pool"
            )
        pool = pools[0]
    name = study_name(space, space_path, group, study)
    folder = localenv.StackPaths.of(stack, state).root / "tuning" / name
    channels = {"train": train} | ({"validation": validation} if validation else {})
    tuner = KubernetesTuner(
        space,
        folder,
        study=name,
        jobs=jobs,
        trial_jobs=TrialJobs(channels, image, pool, group),
        on_update=on_update,
        sleep=sleep,
    )
    tuner.plan()  # what every trial shares is checked, the quota read: before any trial
    if on_start:
        on_start(space, name)
    for line in tuner.notes:
        (on_note or (lambda text: None))(line)
    return conclude(
        tuner.study, tuner.run(), space, folder, descriptor, group, serve_image or image,
        deploy=partial(deploy_endpoints, descriptor=descriptor, group=group) if deploy else None,
    )  # fmt: skip


def tune_sagemaker(
    space_path: Path,
    *,
    train: str,
    stack: str,
    image: str | None,
    validation: str | None = None,
    instance_type: str | None = None,
    serve_image: str | None = None,
    platform: str | Path | None = None,
    state: str | Path | None = None,
    group: str | None = None,
    study: str | None = None,
    deploy: bool = False,
    boto_session: Any = None,
    client: Any = None,
    on_start: Callable[[SearchSpace, str], None] | None = None,
    on_update: Callable[[TrialView], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> TuneOutcome:
    """Tune with SageMaker's tuner (`tuning.sagemaker_search`): one tuning job per study,
    its training jobs made as `mlinfra train --on sagemaker` makes its job, their results
    copied into the study under the stack's state dir, SageMaker's best job registered."""
    from workloads.jobs.base import JobError
    from workloads.jobs.run import stack_descriptor
    from workloads.jobs.sagemaker import SageMakerJobs
    from workloads.tuning.sagemaker_request import UnsupportedSpace, tuning_config
    from workloads.tuning.sagemaker_search import SageMakerSearch, job_name, training_plan

    space = load_space(space_path)  # a bad space fails here, before any call
    try:
        tuning_config(space)  # and one SageMaker's tuner cannot run
    except UnsupportedSpace as exc:
        raise TuningError(str(exc)) from None
    try:
        descriptor = stack_descriptor(stack, state, platform)
        jobs = SageMakerJobs(descriptor, boto_session=boto_session)
    except JobError as exc:
        raise TuningError(str(exc)) from None
    group = pick_group(descriptor, group)
    name = study_name(space, space_path, group, study)
    job = job_name(stack, name, space)
    channels = {"train": train} | ({"validation": validation} if validation else {})
    plan = training_plan(
        jobs, space, name=job, channels=channels, image_tag=image, group=group,
        instance_type=instance_type,
    )  # fmt: skip
    folder = localenv.StackPaths.of(stack, state).root / "tuning" / name
    search = SageMakerSearch(
        space,
        folder,
        study=name,
        job=job,
        plan=plan,
        boto_session=jobs.boto_session,
        client=client,
        on_update=on_update,
        on_note=on_note,
        sleep=sleep,
    )
    if on_start:
        on_start(space, name)
    return conclude(
        search.study, search.run(), space, folder, descriptor, group, serve_image or image,
        deploy=partial(deploy_endpoints, descriptor=descriptor, group=group) if deploy else None,
    )  # fmt: skip


def deploy_endpoints(outcome: TuneOutcome, descriptor: PlatformDescriptor, group: str) -> list[str]:
    """`--deploy` on a cloud stack: the approved version to each endpoint serving `group`
    whose version the stack does not pin, as `mlinfra deploy` does."""
    from workloads.jobs import rollout

    names = [
        n
        for n, ref in descriptor.endpoints.items()
        if ref.model_group == group and ref.model_version is None
    ]
    if not names:
        return [f"not deployed: no endpoint of stack {descriptor.stack!r} serves {group} unpinned"]
    messages = []
    for endpoint in names:
        done = rollout.deploy(descriptor, endpoint, outcome.version)
        messages += done.messages
        messages.append(f"{endpoint}: v{done.version} {done.outcome}")
    return messages


def register_best(
    outcome: TuneOutcome, descriptor: PlatformDescriptor, group: str, serve_image_tag: str = "local"
) -> None:
    """Register the best trial's artifact once (a rerun of a finished search finds its
    version), with its metrics and the search's summary; then the gate. A local trial's
    artifact is published to the artifacts bucket first; a cloud trial's is there already."""
    from workloads.jobs.run import apply_gate
    from workloads.registry.store import registry_from_descriptor

    result, metric = outcome.result, outcome.space.objective.metric
    assert result.best is not None
    name = f"tune-{result.study}-trial-{result.best.number:04d}"
    uri = (
        result.best_model_uri or f"{descriptor.buckets.artifacts.rstrip('/')}/models/{group}/{name}"
    )
    registry = registry_from_descriptor(descriptor)
    existing = [v for v in registry.list_versions(group) if v.model_uri == uri]
    if existing:
        version = existing[0]
    else:
        if result.best_model_dir is not None:
            publish_model(result.best_model_dir, uri)
        lines = summary_lines(result, metric)
        summary = "; ".join(line for line in lines if not line.startswith("journal:"))
        version = registry.register(
            group,
            uri,
            result.best_metrics,
            image=f"{descriptor.registry.repositories.get('serve', 'local')}:{serve_image_tag}",
            description=f"tuned: {summary}",
        )
    outcome.version = version.version
    outcome.status, outcome.gate = apply_gate(
        registry, descriptor, group, version.version, dict(version.metrics)
    )
    outcome.messages.append(
        f"registered: {group} v{version.version} ({outcome.status}) at {uri}: {outcome.gate}"
    )
