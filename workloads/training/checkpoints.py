"""Checkpoints: one store that writes them atomically, keeps the newest few, and mirrors
them to an `s3://` or `file://` URI when given one, so a pod rescheduled on another node
(a spot interruption) resumes where the last one stopped.

A checkpoint is one `torch.save` file holding the model, optimizer and grad-scaler state,
the harness's `TrainState` (as a dict), the best weights so far and the task's own state.
Only tensors and plain containers go in: they load with `weights_only=True`.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from workloads.storage import atomic_write
from workloads.training.artifact import save_tensors

log = logging.getLogger("workloads.train")
KEEP = 2
_NAME = re.compile(r"^ckpt-\d{10}\.pt$")


class CheckpointStore:
    def __init__(self, directory: Path, uri: str | None = None, keep: int = KEEP) -> None:
        self.directory = Path(directory)
        self.uri = uri.rstrip("/") if uri else None
        self.keep = keep
        if self.uri:
            scheme = urlparse(self.uri).scheme
            if scheme not in ("s3", "file"):
                raise ValueError(f"checkpoint URI {uri!r}: use s3:// or file://")

    def paths(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if _NAME.match(p.name))

    def save(self, step: int, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"ckpt-{step:010d}.pt"
        # A reader sees the old file set or the complete new one.
        atomic_write(path, lambda p: save_tensors(state, p))
        old = self.paths()[: -self.keep]
        for stale in old:
            stale.unlink(missing_ok=True)
        if self.uri:
            self._upload(path, [p.name for p in old])
        return path

    def load_latest(self, fingerprint: str) -> dict[str, Any] | None:
        """The newest readable checkpoint of this run (fetched from the URI first), or None."""
        if self.uri:
            self._download()
        for path in reversed(self.paths()):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a torn or foreign file: try the previous one
                log.warning("skipping unreadable checkpoint %s: %s", path, exc)
                continue
            if state.get("fingerprint") != fingerprint:
                log.warning(
                    "ignoring checkpoint %s: it is from a different run configuration", path
                )
                return None
            return state
        return None

    # -- the mirror -----------------------------------------------------------------------

    def _upload(self, path: Path, removed: list[str]) -> None:
        assert self.uri
        parsed = urlparse(self.uri)
        try:
            if parsed.scheme == "file":
                dest = Path(parsed.path)
                atomic_write(dest / path.name, lambda p: shutil.copyfile(path, p))
                for name in removed:
                    (dest / name).unlink(missing_ok=True)
            else:
                client, bucket, prefix = _s3(parsed)
                client.upload_file(str(path), bucket, f"{prefix}{path.name}")
                for name in removed:
                    client.delete_object(Bucket=bucket, Key=f"{prefix}{name}")
        except Exception as exc:  # the local checkpoint is written; the mirror catches up
            log.warning("could not copy checkpoint %s to %s: %s", path.name, self.uri, exc)

    def _download(self) -> None:
        assert self.uri
        parsed = urlparse(self.uri)
        local = {p.name for p in self.paths()}
        self.directory.mkdir(parents=True, exist_ok=True)
        if parsed.scheme == "file":
            source = Path(parsed.path)
            names = sorted(p.name for p in source.glob("ckpt-*.pt")) if source.is_dir() else []
            for name in names[-self.keep :]:
                if name not in local:
                    atomic_write(
                        self.directory / name, lambda p, n=name: shutil.copyfile(source / n, p)
                    )
            return
        client, bucket, prefix = _s3(parsed)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        names = sorted(
            obj["Key"][len(prefix) :]
            for page in pages
            for obj in page.get("Contents", [])
            if _NAME.match(obj["Key"][len(prefix) :])
        )
        for name in names[-self.keep :]:
            if name not in local:
                key = f"{prefix}{name}"
                atomic_write(
                    self.directory / name, lambda p, k=key: client.download_file(bucket, k, str(p))
                )


def _s3(parsed) -> tuple[Any, str, str]:
    import boto3  # only when checkpoints are mirrored to S3

    prefix = parsed.path.strip("/")
    return boto3.client("s3"), parsed.netloc, f"{prefix}/" if prefix else ""
