"""The SageMaker training contract: where data, model, outputs and hyperparameters live.

Each path resolves as: command-line flag, else environment variable, else SageMaker's
default, so one entrypoint runs as a SageMaker job, a Kubernetes Job and a local process.
SageMaker passes every hyperparameter as a string; they are parsed and validated here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# name: (command-line flag, environment variables in priority order, SageMaker default, help)
PATHS: dict[str, tuple[str, tuple[str, ...], str | None, str]] = {
    "train": (
        "--train",
        ("SM_CHANNEL_TRAIN",),
        "/opt/ml/input/data/train",
        "training data: a CSV/Parquet file or folder, file:// or s3:// URI",
    ),
    "validation": (
        "--validation",
        ("SM_CHANNEL_VALIDATION",),
        None,
        "validation data (default /opt/ml/input/data/validation if present, else a held-out "
        "share of the train channel)",
    ),
    "model_dir": ("--model-dir", ("SM_MODEL_DIR",), "/opt/ml/model", "the model artifact"),
    "output_dir": (
        "--output-data-dir",
        ("SM_OUTPUT_DATA_DIR",),
        "/opt/ml/output/data",
        "metrics.json and loss_curve.png",
    ),
    "checkpoint_dir": (
        "--checkpoint-dir",
        ("MLINFRA_CHECKPOINT_DIR", "SM_CHECKPOINT_DIR"),
        "/opt/ml/checkpoints",
        "checkpoints, resumed from on restart",
    ),
    "failure_file": (
        "--failure-file",
        ("MLINFRA_FAILURE_FILE",),
        None,
        "where the failure reason goes (default $SM_OUTPUT_DIR/failure, /opt/ml/output/failure)",
    ),
    "hyperparameters_file": (
        "--hyperparameters-file",
        ("MLINFRA_HYPERPARAMETERS_FILE",),
        None,
        "used when SM_HPS is unset (default $SM_INPUT_CONFIG_DIR/hyperparameters.json, "
        "/opt/ml/input/config/hyperparameters.json)",
    ),
    # Optional: where to copy the finished artifact (s3:// or file://), for Kubernetes Jobs.
    "model_uri": (
        "--model-uri",
        ("MLINFRA_MODEL_URI",),
        None,
        "copy the finished artifact here (s3:// or file://)",
    ),
    # Optional: where checkpoints are synced, so a pod rescheduled elsewhere resumes.
    "checkpoint_uri": (
        "--checkpoint-uri",
        ("MLINFRA_CHECKPOINT_URI",),
        None,
        "sync checkpoints to and from here (s3:// or file://)",
    ),
}
SM_VALIDATION_DEFAULT = "/opt/ml/input/data/validation"


class ContractError(ValueError):
    """A bad path or hyperparameter; the message names it."""


class HarnessSettings(BaseModel):
    """What the harness itself reads from the hyperparameters; a task adds its own."""

    model_config = ConfigDict(extra="forbid")

    task: str = "tabular"  # a built-in task name, or "package.module:factory"
    epochs: int = Field(200, ge=1, le=1_000_000)
    # None: from the training rows (about 10 steps an epoch, 32 to 128; see harness)
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=10)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    patience: int = Field(15, ge=1)  # epochs without a better validation loss before stopping
    validation_fraction: float = Field(0.2, gt=0, lt=1)  # held out when there is no channel
    checkpoint_steps: int = Field(500, ge=1)
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16)
    data_workers: int | None = Field(None, ge=0, le=64)  # DataLoader workers; None: the task's

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, value: Any) -> Any:
        return "tabular" if value in (None, "", "auto", "none", "null") else value


def _decode(value: Any) -> Any:
    """SageMaker hands every value over as a string, sometimes JSON-encoded ('"label"')."""
    if isinstance(value, str) and value[:1] in ('"', "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _validate(model: type[BaseModel], values: Mapping[str, Any], source: str, known: list[str]):
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "(hyperparameters)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown hyperparameter {name!r} (known: {', '.join(known)})")
            elif err["type"] == "missing":
                problems.append(f"hyperparameter {name!r} is required")
            else:
                problems.append(f"hyperparameter {name!r}: {err['msg']} (got {err['input']!r})")
        raise ContractError(f"{source}: " + "; ".join(problems)) from None


@dataclass(frozen=True)
class Hyperparameters:
    """The hyperparameters, parsed: the harness settings, the task and its own params.

    `values` keeps them as given (decoded), so a contract can be handed on unchanged
    (`TrainingContract.to_env`).
    """

    values: dict[str, Any]
    settings: HarnessSettings
    task: Any  # the task class (see workloads.training.tasks.base.Task)
    params: BaseModel  # the task's own hyperparameters, validated by its `Params`

    def __getattr__(self, name: str) -> Any:  # hp.epochs, hp.target: whichever part has it
        for part in ("settings", "params"):
            model = self.__dict__.get(part)
            if model is not None and name in type(model).model_fields:
                return getattr(model, name)
        raise AttributeError(name)

    def dump(self) -> dict[str, Any]:
        """Every hyperparameter in effect (defaults included), as JSON values."""
        return self.settings.model_dump(mode="json") | self.params.model_dump(mode="json")


def parse_hyperparameters(values: Mapping[str, Any], source: str) -> Hyperparameters:
    """Validate the harness settings, load the task they name, validate the task's params.

    A task may set its own defaults for harness settings the user left unset
    (`Task.harness_defaults`, e.g. a lower learning rate for a Transformer).
    """
    from workloads.training.tasks import TaskLoadError, load_task

    # SageMaker adds its own keys (sagemaker_program, sagemaker_region, ...): not ours.
    cleaned = {k: _decode(v) for k, v in values.items() if not k.startswith("sagemaker_")}
    harness_keys = set(HarnessSettings.model_fields)
    given = {k: v for k, v in cleaned.items() if k in harness_keys}
    try:
        task, implied = load_task(str(given.get("task") or "tabular"))
    except TaskLoadError as exc:
        raise ContractError(f"{source}: hyperparameter 'task': {exc}") from None
    given["task"] = task.name if implied else (given.get("task") or task.name)
    settings_in = dict(getattr(task, "harness_defaults", {})) | given
    known = sorted(harness_keys | set(task.Params.model_fields))
    settings = _validate(HarnessSettings, settings_in, source, known)
    params_in = implied | {k: v for k, v in cleaned.items() if k not in harness_keys}
    params = _validate(task.Params, params_in, source, known)
    return Hyperparameters(dict(cleaned), settings, task, params)


@dataclass(frozen=True)
class TrainingContract:
    train: str
    validation: str | None
    model_dir: Path
    output_dir: Path
    checkpoint_dir: Path
    failure_file: Path
    model_uri: str | None
    hyperparameters: Hyperparameters
    checkpoint_uri: str | None = None

    def to_env(self) -> dict[str, str]:
        """The environment that makes `resolve` give back this contract: the inverse of
        `resolve`, used by every job backend to start the training container."""
        env = {
            "SM_CHANNEL_TRAIN": self.train,
            "SM_MODEL_DIR": str(self.model_dir),
            "SM_OUTPUT_DATA_DIR": str(self.output_dir),
            "MLINFRA_CHECKPOINT_DIR": str(self.checkpoint_dir),
            "MLINFRA_FAILURE_FILE": str(self.failure_file),
            "SM_HPS": json.dumps(self.hyperparameters.values, sort_keys=True),
        }
        optional = {
            "SM_CHANNEL_VALIDATION": self.validation,
            "MLINFRA_MODEL_URI": self.model_uri,
            "MLINFRA_CHECKPOINT_URI": self.checkpoint_uri,
        }
        return env | {k: v for k, v in optional.items() if v}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train",
        description="Train a PyTorch model (SageMaker training contract): a built-in task "
        "(tabular, ...) or a team's own (--hp task=package.module:factory).",
    )
    for name, (flag, envs, default, text) in PATHS.items():
        where = f"env {' / '.join(envs)}" + (f", default {default}" if default else "")
        parser.add_argument(flag, dest=name, default=None, help=f"{text} ({where})")
    parser.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter, overriding SM_HPS / hyperparameters.json (repeatable)",
    )
    parser.add_argument("--target", help="shortcut for --hp target=NAME")
    parser.add_argument(
        "--task", help="shortcut for --hp task=NAME (tabular, binary, multiclass, regression, ...)"
    )
    return parser


def resolve(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None):
    """Resolve paths and hyperparameters from flags, environment and SageMaker defaults."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)

    def pick(name: str) -> str | None:
        _, envs, default, _ = PATHS[name]
        value = getattr(args, name)
        if value:
            return value
        for var in envs:
            if env.get(var):
                return env[var]
        return default

    validation = pick("validation")
    if validation is None and Path(SM_VALIDATION_DEFAULT).exists():
        validation = SM_VALIDATION_DEFAULT
    failure = pick("failure_file") or str(
        Path(env.get("SM_OUTPUT_DIR", "/opt/ml/output")) / "failure"
    )
    hp_file = pick("hyperparameters_file") or str(
        Path(env.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config")) / "hyperparameters.json"
    )
    values, source = _hyperparameter_source(env, Path(hp_file))
    for item in args.hp:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ContractError(f"--hp {item!r}: expected KEY=VALUE")
        values[key.strip()] = value
    if args.target:
        values["target"] = args.target
    if args.task:
        values["task"] = args.task
    if (args.hp or args.target or args.task) and source != COMMAND_LINE:
        source += f" and {COMMAND_LINE}"
    return TrainingContract(
        train=str(pick("train")),
        validation=validation,
        model_dir=Path(str(pick("model_dir"))),
        output_dir=Path(str(pick("output_dir"))),
        checkpoint_dir=Path(str(pick("checkpoint_dir"))),
        failure_file=Path(failure),
        model_uri=pick("model_uri"),
        hyperparameters=parse_hyperparameters(values, source),
        checkpoint_uri=pick("checkpoint_uri"),
    )


def failure_file_hint(argv: Sequence[str] | None, env: Mapping[str, str] | None = None) -> Path:
    """Where to write the failure reason even when resolving the contract itself failed.
    `argv` None is the command line, as for `resolve` (argparse reads `sys.argv[1:]`)."""
    env = os.environ if env is None else env
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg == "--failure-file" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--failure-file="):
            return Path(arg.split("=", 1)[1])
    if env.get("MLINFRA_FAILURE_FILE"):
        return Path(env["MLINFRA_FAILURE_FILE"])
    return Path(env.get("SM_OUTPUT_DIR", "/opt/ml/output")) / "failure"


COMMAND_LINE = "the command line"  # where hyperparameters come from without SM_HPS or a file


def _hyperparameter_source(env: Mapping[str, str], hp_file: Path) -> tuple[dict, str]:
    if env.get("SM_HPS"):
        try:
            values = json.loads(env["SM_HPS"])
        except json.JSONDecodeError as exc:
            raise ContractError(f"SM_HPS is not valid JSON: {exc}") from None
        source = "SM_HPS"
    elif hp_file.is_file():
        try:
            values = json.loads(hp_file.read_text())
        except json.JSONDecodeError as exc:
            raise ContractError(f"{hp_file} is not valid JSON: {exc}") from None
        source = str(hp_file)
    else:
        return {}, COMMAND_LINE
    if not isinstance(values, dict):
        raise ContractError(f"{source}: expected a JSON object of hyperparameters")
    return dict(values), source
