"""Training data: read CSV/Parquet/JSONL files or folders, and infer the problem type of a label.

A channel is a file or a folder of files (SageMaker copies an S3 prefix into a folder);
it may also be given as a `file://` or `s3://` URI, which is how a Kubernetes Job passes
the data location (an `s3://` prefix is downloaded once into a local folder).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import pandas as pd

Problem = Literal["binary", "multiclass", "regression"]
PROBLEMS: tuple[str, ...] = ("binary", "multiclass", "regression")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}
# What one label may hold, in any task (numpy's scalars come out of numeric and categorical
# columns): lists, objects, bytes and dates neither sort, index classes nor go into JSON.
LABEL_SCALARS = (str, bool, int, float, np.bool_, np.integer, np.floating)
# An integer label with at most this many distinct values is a class label.
MAX_INTEGER_CLASSES = 20


class DataError(ValueError):
    """The training data cannot be used; the message says which file or column and why."""


def local_channel(location: str | Path) -> Path:
    """Turn a channel location (path, `file://` or `s3://` URI) into a local path."""
    text = str(location)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "s3":
        return _download_s3(parsed.netloc, parsed.path.lstrip("/"))
    if parsed.scheme and len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive
        raise DataError(f"unsupported data location {text!r}: use a path, file:// or s3://")
    return Path(text)


def _download_s3(bucket: str, prefix: str) -> Path:
    import boto3  # only needed when data lives in S3

    client = boto3.client("s3")
    target = Path(tempfile.mkdtemp(prefix="mlinfra-channel-"))
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):
                continue
            rel = key[len(prefix) :].lstrip("/") or Path(key).name
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(dest))
            count += 1
    if count == 0:
        raise DataError(f"no objects under s3://{bucket}/{prefix}")
    return target


def data_files(path: Path) -> list[Path]:
    """The data files of a channel: the file itself, or every CSV/Parquet/JSONL file in a folder."""
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(
                f"{path}: unsupported file type (expected .csv, .parquet, .pq or .jsonl)"
            )
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"no .csv, .parquet or .jsonl files in {path}")
    return files


def read_file(path: Path) -> pd.DataFrame:
    try:
        kind = SUFFIXES[path.suffix.lower()]
        if kind == "csv":
            frame = pd.read_csv(path)
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: file is empty") from exc
    except Exception as exc:  # the readers raise many types; all mean "unreadable"
        if kind == "parquet" and (repeated := _repeated_parquet_names(path)):
            raise DataError(
                f"{path}: column names {repeated} appear more than once in the schema"
            ) from exc
        raise DataError(f"{path}: cannot read file ({type(exc).__name__}: {exc})") from exc
    if frame.empty:
        raise DataError(f"{path}: file has a header but no rows")
    if kind == "csv":
        _refuse_duplicate_names(path, frame)
    return frame


def _refuse_duplicate_names(path: Path, frame: pd.DataFrame) -> None:
    """pandas renames a repeated CSV header name `x` to `x.1`: a second target column would
    become a feature (the label leaks into the model), a repeated feature a column serving
    knows by a made-up name. Refused, naming the names."""
    names = {str(c) for c in frame.columns}
    renamed = [c for c in names if "." in c and c.rsplit(".", 1)[0] in names]
    if not renamed:
        return
    raw = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    if repeated := _repeated(raw.iloc[0].tolist()):
        raise DataError(f"{path}: column names {repeated} appear more than once in the header")


def _repeated(names: list[str]) -> list[str]:
    return sorted({name for name in names if names.count(name) > 1})


def _repeated_parquet_names(path: Path) -> list[str]:
    """The names a Parquet file's schema repeats (Arrow then fails with "Multiple matches
    for FieldRef"); none if the schema cannot be read either."""
    import pyarrow.parquet as pq

    try:
        return _repeated(pq.read_schema(path).names)
    except Exception:  # not Parquet at all: the reader's own error says so
        return []


def load_table(location: str | Path) -> pd.DataFrame:
    """Read a channel into one DataFrame; all files must have the same columns."""
    files = data_files(local_channel(location))
    frames = [read_file(f) for f in files]
    columns = list(frames[0].columns)
    for f, frame in zip(files[1:], frames[1:], strict=True):
        if list(frame.columns) != columns:
            raise DataError(
                f"{f}: columns {list(frame.columns)} differ from {files[0]}'s {columns}"
            )
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def split_target(frame: pd.DataFrame, target: str, source: str) -> tuple[pd.DataFrame, pd.Series]:
    """Separate features from the label; rows without a label are dropped."""
    if target not in frame.columns:
        raise DataError(
            f"{source}: target column {target!r} not found; columns are {list(frame.columns)}"
        )
    labels = frame[target]
    keep = labels.notna()
    if not keep.any():
        raise DataError(f"{source}: target column {target!r} has no values")
    features = frame.loc[keep].drop(columns=[target]).reset_index(drop=True)
    if features.shape[1] == 0:
        raise DataError(f"{source}: no feature columns besides the target {target!r}")
    return features, labels[keep].reset_index(drop=True)


def refuse_infinite_classes(classes: Iterable[Any], where: str) -> None:
    """A class label that is an infinite float: no class (and JSON, where the artifact keeps
    its classes, has no inf). `classes`: one channel's distinct labels, NaN already dropped."""
    for value in classes:
        if isinstance(value, float | np.floating) and not math.isfinite(value):
            raise DataError(
                f"{where} has the class label {float(value)!r}; a class label is a finite "
                "number, a boolean or a string"
            )


def infer_problem(labels: pd.Series, forced: str | None = None) -> Problem:
    """binary / multiclass / regression from the label values, or the forced problem checked."""
    n_unique = labels.nunique()
    numeric = pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels)
    if forced is not None:
        if forced not in PROBLEMS:
            raise DataError(f"problem {forced!r} is not one of {', '.join(PROBLEMS)}")
        task: Problem = forced  # type: ignore[assignment]
        if task == "regression" and not numeric:
            raise DataError(f"problem regression needs a numeric label, got {labels.dtype}")
    elif not numeric:
        task = "binary" if n_unique <= 2 else "multiclass"
    else:
        values = labels.to_numpy(dtype=np.float64)
        integral = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
        if integral and n_unique <= MAX_INTEGER_CLASSES:
            task = "binary" if n_unique <= 2 else "multiclass"
        else:
            task = "regression"
    if task != "regression" and n_unique < 2:
        only = labels.iloc[0]
        only = only.item() if isinstance(only, np.generic) else only  # 7, not np.int64(7)
        raise DataError(f"the label has a single class ({only!r}); a classifier needs two or more")
    if task == "binary" and n_unique > 2:
        raise DataError(f"problem binary but the label has {n_unique} classes")
    if task == "regression":
        values = labels.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise DataError("the regression label has non-finite values")
        if n_unique < 2:
            raise DataError("the regression label is constant")
    return task
