"""The SageMaker training contract: where data, model, outputs and hyperparameters live.

Each path resolves as: command-line flag, else environment variable, else SageMaker's
default, so one entrypoint runs as a SageMaker job, a Kubernetes Job and a local process.
SageMaker passes every hyperparameter as a string; they are parsed and validated here.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
}
SM_VALIDATION_DEFAULT = "/opt/ml/input/data/validation"


class ContractError(ValueError):
    """A bad path or hyperparameter; the message names it."""


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1)
    task: Literal["binary", "multiclass", "regression"] | None = None
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    hidden_sizes: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    patience: int = Field(15, ge=1)  # epochs without a better validation loss before stopping
    validation_fraction: float = Field(0.2, gt=0, lt=1)  # held out when there is no channel
    checkpoint_steps: int = Field(500, ge=1)
    max_categories: int = Field(50, ge=1)  # one-hot width cap per categorical column

    @field_validator("hidden_sizes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        if isinstance(value, int):
            return [value]
        if isinstance(value, str):  # "128,64", "[128, 64]" or "128"
            text = value.strip().strip("[]")
            return [int(p) for p in text.replace(" ", ",").split(",") if p] if text else []
        return value

    @field_validator("hidden_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("hidden sizes must be positive")
        return value

    @field_validator("task", mode="before")
    @classmethod
    def _no_task(cls, value: Any) -> Any:
        return None if value in ("", "auto", "none", "null") else value


def _decode(value: Any) -> Any:
    """SageMaker hands every value over as a string, sometimes JSON-encoded ('"label"')."""
    if isinstance(value, str) and value[:1] in ('"', "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def parse_hyperparameters(values: Mapping[str, Any], source: str) -> Hyperparameters:
    # SageMaker adds its own keys (sagemaker_program, sagemaker_region, ...): not ours.
    cleaned = {k: _decode(v) for k, v in values.items() if not k.startswith("sagemaker_")}
    try:
        return Hyperparameters.model_validate(cleaned)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "(hyperparameters)"
            if err["type"] == "extra_forbidden":
                known = ", ".join(Hyperparameters.model_fields)
                problems.append(f"unknown hyperparameter {name!r} (known: {known})")
            elif err["type"] == "missing":
                problems.append(f"hyperparameter {name!r} is required")
            else:
                problems.append(f"hyperparameter {name!r}: {err['msg']} (got {err['input']!r})")
        raise ContractError(f"{source}: " + "; ".join(problems)) from None


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train",
        description="Train a tabular PyTorch model (SageMaker training contract).",
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
    parser.add_argument("--task", help="shortcut for --hp task=binary|multiclass|regression")
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
    if args.hp or args.target or args.task:
        source += " and the command line"
    return TrainingContract(
        train=str(pick("train")),
        validation=validation,
        model_dir=Path(str(pick("model_dir"))),
        output_dir=Path(str(pick("output_dir"))),
        checkpoint_dir=Path(str(pick("checkpoint_dir"))),
        failure_file=Path(failure),
        model_uri=pick("model_uri"),
        hyperparameters=parse_hyperparameters(values, source),
    )


def failure_file_hint(argv: Sequence[str] | None, env: Mapping[str, str] | None = None) -> Path:
    """Where to write the failure reason even when resolving the contract itself failed."""
    env = os.environ if env is None else env
    argv = list(argv or [])
    for i, arg in enumerate(argv):
        if arg == "--failure-file" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--failure-file="):
            return Path(arg.split("=", 1)[1])
    if env.get("MLINFRA_FAILURE_FILE"):
        return Path(env["MLINFRA_FAILURE_FILE"])
    return Path(env.get("SM_OUTPUT_DIR", "/opt/ml/output")) / "failure"


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
        return {}, "the command line"
    if not isinstance(values, dict):
        raise ContractError(f"{source}: expected a JSON object of hyperparameters")
    return dict(values), source
