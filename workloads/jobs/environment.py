"""The training container's environment, for every backend from one place:
`TrainingContract.to_env()`, the inverse of `resolve`, so what a job sets is exactly what
`python -m workloads.train` reads back. (SageMaker sets the `SM_*` paths itself.)

Hyperparameters are parsed here as the trainer will parse them, so a bad one fails before
a job is created; a team's own task (`package.module:factory`) lives in its image and is
checked there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workloads.jobs.base import JobError
from workloads.training.contract import (
    ContractError,
    Hyperparameters,
    TrainingContract,
    parse_hyperparameters,
)
from workloads.training.tasks import BUILTIN_TASKS, TASK_ALIASES


def check_hyperparameters(values: Mapping[str, Any]) -> Hyperparameters:
    """The hyperparameters as the trainer reads them; JobError names a bad one."""
    task = str(values.get("task") or "tabular")
    if task not in BUILTIN_TASKS and task not in TASK_ALIASES:
        # A team's task is imported inside its image, not here: passed on as given.
        return Hyperparameters(dict(values), None, None, None)  # type: ignore[arg-type]
    try:
        return parse_hyperparameters(values, "--hp")
    except ContractError as exc:
        raise JobError(str(exc)) from None


def container_env(
    *,
    channels: Mapping[str, str],
    model_dir: str,
    output_dir: str,
    checkpoint_dir: str,
    failure_file: str,
    hyperparameters: Mapping[str, Any],
    model_uri: str | None = None,
    checkpoint_uri: str | None = None,
) -> dict[str, str]:
    contract = TrainingContract(
        train=channels["train"],
        validation=channels.get("validation"),
        model_dir=Path(model_dir),
        output_dir=Path(output_dir),
        checkpoint_dir=Path(checkpoint_dir),
        failure_file=Path(failure_file),
        model_uri=model_uri,
        hyperparameters=check_hyperparameters(hyperparameters),
        checkpoint_uri=checkpoint_uri,
    )
    # Channels besides train and validation: SageMaker's naming, read by a team's task.
    extra = {
        f"SM_CHANNEL_{name.upper()}": uri
        for name, uri in channels.items()
        if name not in ("train", "validation")
    }
    return contract.to_env() | extra
