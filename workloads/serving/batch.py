"""Batch scoring: `python -m workloads.serving.batch INPUT OUTPUT [--model-dir D]`.

INPUT is a CSV, Parquet or JSONL file, a folder of them, or a `file://` / `s3://` location
(read the way training reads its channels). A predictor may read other inputs itself
(`batch_frames`): the image task reads a folder of images, the text task a `.txt` file of one
text per line. Every input column is kept and prediction columns are added:
`prediction` (the class label, or the number for regression) and, for classification, one
`probability_<class>` column per class. OUTPUT's suffix picks the format: `.csv`, `.parquet`
or `.jsonl`. It is written to a temporary file next to it and renamed into place, so a reader
(or a retried job) never sees half an output.

The model applies exactly the preprocessing training fitted (`Predictor.prepare_rows`, the same
path the server takes for `text/csv`), in chunks of `--chunk-size` rows.

Exit status: 0 done, 2 bad input (the message names the file, row and column).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workloads.storage import StorageError, atomic_path, file_error
from workloads.training.artifact import load_model
from workloads.training.data import DataError, data_files, local_channel, read_file
from workloads.training.tasks.base import InputError

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}
PREDICTION = "prediction"
FILE = "file"  # the column of each row's source file, when a predictor reads files
PROBABILITY_PREFIX = "probability_"


class BatchError(ValueError):
    """The input or output cannot be used; the message says which and why."""


def _rows(frame: pd.DataFrame, columns: list[str]) -> list[list[Any]]:
    """Feature values as Python objects in column order; missing values become "" (the CSV
    convention `prepare_rows` reads as missing)."""
    features = frame[columns].astype(object)
    return features.where(features.notna(), "").to_numpy().tolist()


def _prediction_columns(predictor: Any, predictions: list) -> dict[str, list]:
    if predictor.task == "regression":
        return {PREDICTION: predictions}
    out: dict[str, list] = {PREDICTION: [p["label"] for p in predictions]}
    for key in (str(c) for c in predictor.classes):
        out[PROBABILITY_PREFIX + key] = [p["probabilities"][key] for p in predictions]
    return out


def _file_of_bad_row(predictor: Any, chunk: pd.DataFrame, columns: list[str]) -> str:
    """ " (file NAME)" of the chunk's first refused row when its frame names a file per row (a
    folder of images, `image_frames`), else "": a row number alone does not say which image."""
    if FILE not in chunk.columns or not getattr(predictor, "batch_input_only", ()):
        return ""
    for i, row in enumerate(_rows(chunk, columns)):
        try:
            predictor.prepare_rows([row])
        except InputError:
            return f" (file {chunk[FILE].iloc[i]})"
    return ""


def score_frames(
    predictor: Any, frames: Iterator[tuple[str, pd.DataFrame]], chunk_size: int
) -> Iterator[pd.DataFrame]:
    """Score each (source name, frame) in chunks; yields the input chunks plus predictions."""
    columns = predictor.feature_columns
    for source, frame in frames:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise BatchError(
                f"{source}: missing feature column(s) {', '.join(missing)} "
                f"(the model expects {', '.join(columns)})"
            )
        clash = [c for c in frame.columns if c == PREDICTION or c.startswith(PROBABILITY_PREFIX)]
        if clash:
            raise BatchError(f"{source}: input already has output column(s) {clash}")
        for start in range(0, len(frame), chunk_size):
            chunk = frame.iloc[start : start + chunk_size]
            try:
                predictions = predictor.predict_matrix(
                    predictor.prepare_rows(_rows(chunk, columns))
                )
            except InputError as exc:
                raise BatchError(
                    f"{source}: rows from {start} (0-based, no header): {exc}"
                    + _file_of_bad_row(predictor, chunk, columns)
                ) from exc
            scored = chunk.reset_index(drop=True).assign(
                **_prediction_columns(predictor, predictions)
            )
            # inputs not worth copying to the output (an image's bytes)
            yield scored.drop(columns=list(getattr(predictor, "batch_input_only", ())))


def read_input(location: str | Path) -> Iterator[tuple[str, pd.DataFrame]]:
    files = data_files(local_channel(location))
    first: list[str] | None = None
    for path in files:
        frame = read_file(path)
        if first is None:
            first = list(frame.columns)
        elif list(frame.columns) != first:
            raise BatchError(f"{path}: columns {list(frame.columns)} differ from the first file's")
        yield str(path), frame


def write_output(chunks: Iterator[pd.DataFrame], output: Path) -> int:
    """Write the chunks to `output` atomically; returns the number of rows."""
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise BatchError(f"{output}: unsupported output type (use .csv, .parquet or .jsonl)")
    rows = 0
    with atomic_path(output) as tmp:
        if fmt == "parquet":
            # One table at the end: chunks may infer different types for sparse columns.
            tables = [pa.Table.from_pandas(c, preserve_index=False) for c in chunks]
            if not tables:
                raise BatchError("no rows to score")
            table = pa.concat_tables(tables, promote_options="permissive")
            pq.write_table(table, tmp)
            rows = table.num_rows
        else:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    if fmt == "csv":
                        f.write(chunk.to_csv(index=False, header=rows == 0).encode())
                    else:
                        records = chunk.astype(object).where(chunk.notna(), None)
                        for record in records.to_dict("records"):
                            f.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))
                            f.write(b"\n")
                    rows += len(chunk)
            if rows == 0:
                raise BatchError("no rows to score")
    return rows


def output_path(output: str | Path) -> Path:
    """OUTPUT as a local path: a path or a `file://` URI. Another URI is refused (the batch
    pod uploads the file itself), never taken for a relative path (`s3:/bucket/...`)."""
    text = str(output)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive
        raise BatchError(
            f"{text}: OUTPUT is a local file (a path or file://); for s3:// score with "
            "`mlinfra batch`, or upload the file afterwards"
        )
    return Path(text)


def score(
    input: str | Path, output: str | Path, model_dir: str | Path, chunk_size: int = 4096
) -> int:
    """Score `input` with the model in `model_dir` into `output`; returns the number of rows."""
    if chunk_size < 1:
        raise BatchError(f"chunk size must be >= 1, got {chunk_size}")
    output = output_path(output)
    predictor = load_model(model_dir)
    frames = None
    if hasattr(predictor, "batch_frames"):  # an input the task reads itself (images, .txt)
        frames = predictor.batch_frames(local_channel(input))
    frames = frames or read_input(input)
    return write_output(score_frames(predictor, frames, chunk_size), output)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batch", description="Score a file or folder of inputs.")
    p.add_argument(
        "input",
        help="CSV/Parquet/JSONL file or a folder of them (or of images, for an image model; "
        "a .txt file for a text model), file:// or s3://",
    )
    p.add_argument("output", help="output file: .csv, .parquet or .jsonl (a path or file://)")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get("SM_MODEL_DIR") or "/opt/ml/model"),
        help="the model artifact (env SM_MODEL_DIR, default /opt/ml/model)",
    )
    p.add_argument("--chunk-size", type=int, default=4096, help="rows per forward pass")
    args = p.parse_args(argv)
    try:
        rows = score(args.input, args.output, args.model_dir, args.chunk_size)
    except (BatchError, DataError, FileNotFoundError, StorageError) as exc:
        print(f"batch: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output folder that is read-only or not writable
        error = file_error(exc)
        if error is None:
            raise
        print(f"batch: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"batch: interrupted; nothing written to {args.output}", file=sys.stderr)
        return 130
    print(f"batch: scored {rows} rows into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
