"""The model artifact: how it is written atomically, published, and loaded through its task.

A model dir holds plain files: `model.pt` (a state_dict, loaded with `weights_only=True`),
`meta.json` (the task that made it, and what that task needs to rebuild the model),
`metrics.json` (validation metrics, read by the registry) and the task's own files (the
tabular task's `preprocess.json`, ...). It is written into a temporary folder next to the
target and renamed into place, so a reader never sees half of it. `load_model` builds the
predictor through the task recorded in meta.json: every task gets serving for free.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workloads.storage import atomic_write, no_space_named

__all__ = ["FORMAT", "load_model", "publish_model", "save_artifact"]

FORMAT = 2  # 1: tabular only, the problem type recorded as "task"
BASE_FILES = ("model.pt", "metrics.json", "meta.json")


class ArtifactError(FileNotFoundError, ValueError):
    """A folder that is not a usable model artifact; the message says what is missing or
    damaged. (A ValueError too: a damaged file is bad input, not only a missing one.)"""


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    missing = [f for f in BASE_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ArtifactError(f"{model_dir} is not a model artifact: missing {missing}")
    try:
        meta = json.loads((model_dir / "meta.json").read_text())
        metrics = json.loads((model_dir / "metrics.json").read_text())
    except ValueError as exc:
        raise ArtifactError(
            f"{model_dir}: meta.json or metrics.json is not valid JSON: {exc}"
        ) from None
    except OSError as exc:  # unreadable (permissions, a broken disk)
        where = exc.filename or model_dir
        raise ArtifactError(f"{where}: cannot be read: {exc.strerror}") from None
    if not isinstance(meta, dict) or not isinstance(metrics, dict):
        raise ArtifactError(f"{model_dir}: meta.json and metrics.json must each be an object")
    meta["metrics"] = metrics
    if "task" not in meta:
        raise ArtifactError(f"{model_dir}/meta.json does not name the task that made the model")
    version = meta.get("format", 1)
    if type(version) is not int or not 1 <= version <= FORMAT:
        raise ArtifactError(
            f"{model_dir}/meta.json: format {version!r} is not one this version reads "
            f"(1 to {FORMAT}): a newer mlinfra wrote it, or it is damaged"
        )
    return meta


def load_model(model_dir: str | Path) -> Any:
    """The predictor of an artifact, built by the task that made it."""
    from workloads.training.tasks import TaskLoadError, load_task

    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    try:
        task, implied = load_task(str(meta["task"]))
    except TaskLoadError as exc:
        raise ArtifactError(f"{model_dir}: {exc}") from None
    missing = [f for f in getattr(task, "artifact_files", ()) if not (model_dir / f).exists()]
    if missing:
        raise ArtifactError(f"{model_dir} is not a model artifact: missing {missing}")
    try:
        return task.load_predictor(model_dir, implied | meta)
    except ArtifactError:
        raise
    except Exception as exc:  # a damaged or truncated file, meta.json fields of another shape
        detail = " ".join(str(exc).split())  # torch's messages span lines
        raise ArtifactError(
            f"{model_dir}: the {meta['task']} task cannot load this artifact (a damaged, "
            f"truncated or mismatched file): {type(exc).__name__}: {detail}"
        ) from exc


def save_artifact(
    model_dir: str | Path,
    task: Any,
    model: nn.Module,
    meta: dict[str, Any],
    metrics: dict[str, float],
    extra: dict[str, str] | None = None,
) -> Path:
    """Write the artifact atomically: a temp dir next to `model_dir`, then a rename.

    `meta` is what the harness records (the task reference, hyperparameters...); the task
    adds its own files and meta through `task.save`; `extra` is more files (name: text),
    e.g. the monitoring baseline.
    """
    model_dir = Path(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_dir.parent / f".{model_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with no_space_named(model_dir):
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_tensors(state, tmp / "model.pt")
            full_meta = {"format": FORMAT, **meta, **task.save(tmp, model)}
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text)
            (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2))
            _swap_in(tmp, model_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def save_tensors(state: Any, path: Path) -> None:
    """`torch.save` through a Python file: a full disk is then an OSError (ENOSPC) naming
    the cause, where torch's own writer says "basic_ios::clear: iostream error"."""
    with open(path, "wb") as handle:
        torch.save(state, handle)


def _files(model_dir: Path) -> list[str]:
    """The artifact's files, meta.json last: its presence marks a complete artifact."""
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != "meta.json")
    return [*names, "meta.json"]


def _swap_in(tmp: Path, model_dir: Path) -> None:
    if model_dir.exists() and not any(model_dir.iterdir()):
        try:
            model_dir.rmdir()
        except OSError:  # a mount point (SageMaker's /opt/ml/model): fill it file by file
            _replace_files(tmp, model_dir)
            return
    if model_dir.exists():
        old = model_dir.parent / f".{model_dir.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(model_dir, old)
        except OSError:
            _replace_files(tmp, model_dir)
            return
        os.rename(tmp, model_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, model_dir)


def _replace_files(tmp: Path, model_dir: Path) -> None:
    # Each file is renamed atomically; meta.json goes last, and load_model needs it,
    # so a reader sees either the old artifact or the complete new one's files.
    (model_dir / "meta.json").unlink(missing_ok=True)
    for name in _files(tmp):  # copied: the mount may be another filesystem
        atomic_write(model_dir / name, lambda p, n=name: shutil.copyfile(tmp / n, p))


def publish_model(model_dir: str | Path, uri: str) -> str:
    """Copy a finished artifact to `file:///path` or `s3://bucket/prefix` (meta.json last)."""
    from urllib.parse import urlparse

    model_dir = Path(model_dir)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        dest = Path(parsed.path)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:  # a full disk midway leaves nothing behind, not a partial copy
            with no_space_named(dest):
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(model_dir, tmp)
                _swap_in(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif parsed.scheme == "s3":
        import boto3  # only needed when publishing to S3

        client = boto3.client("s3")
        prefix = parsed.path.strip("/")
        for name in _files(model_dir):  # meta.json is last: its presence marks a whole artifact
            key = f"{prefix}/{name}" if prefix else name
            client.upload_file(str(model_dir / name), parsed.netloc, key)
    else:
        raise ValueError(f"unsupported model URI {uri!r}: use file:// or s3://")
    return uri
