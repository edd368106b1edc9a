"""The fitted preprocessing: impute, scale numbers, one-hot encode categories.

Fitted on the training data only and saved as JSON inside the model artifact, so serving
applies exactly the transformation training used. Two ways in, one formula:
`transform_frame` (training, vectorised pandas) and `prepare_records` / `prepare_rows`
(serving hot path: plain Python and numpy, no DataFrame per request). Both compute
`(value - mean) / scale` in float64 and cast to float32, so they agree bit for bit.

Unseen or missing categories encode as all zeros; missing numbers get the training median.
The model computes in float32: a finite number whose standardised value does not fit float32
(say 1e308) is bad input, refused with the record, column and value, on every path.
"""

from __future__ import annotations

import itertools
import math
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from workloads.training.tasks.base import InputError, check_batch

__all__ = ["Column", "InputError", "Preprocessor"]

FORMAT_VERSION = 1
NUMERIC_TYPES = frozenset({int, float})
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Requests of at most this many records take the plain-Python path (`_small_encoder`).
# Measured on the reference columns (2 categorical, 6 numeric): ~1.3 us a record there,
# against ~30 us of fixed cost plus ~0.8 us a record on the vectorised path (even at ~50).
SMALL_BATCH = 32
_TRUE = frozenset({"true", "1", "yes", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "f", "n"})


@dataclass
class Column:
    name: str
    kind: Literal["numeric", "boolean", "categorical"]
    median: float = 0.0
    mean: float = 0.0
    scale: float = 1.0
    categories: list[str] = field(default_factory=list)
    offset: int = 0  # first output slot
    index: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == "categorical" else 1

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"name": self.name, "kind": self.kind, "categories": self.categories}
        return {
            "name": self.name,
            "kind": self.kind,
            "median": self.median,
            "mean": self.mean,
            "scale": self.scale,
        }


def _column_kind(series: pd.Series) -> Literal["numeric", "boolean", "categorical"]:
    if pd.api.types.is_bool_dtype(series):
        return "boolean"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    return "categorical"


def _numeric_values(series: pd.Series, name: str) -> np.ndarray:
    """A numeric column of a frame as float64, NaN where missing. A value that is not a
    number, or an infinite one, is an `InputError` naming the column, the row and the value
    (a validation file with "n/a" in a column that train has as numbers; "inf" in a CSV)."""
    numbers = pd.to_numeric(series, errors="coerce")
    values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(values)
    if missing.any() and not pd.api.types.is_numeric_dtype(series):
        unparsed = missing & series.notna().to_numpy()
        if unparsed.any():
            i = int(np.argmax(unparsed))
            raise InputError(
                f"column {name!r} expects numbers, got {_shown(series.iloc[i])} in row {i}"
            )
    infinite = np.isinf(values)
    if infinite.any():
        i = int(np.argmax(infinite))
        raise InputError(
            f"column {name!r} has a non-finite number {values[i]} in row {i}; "
            "leave a missing value empty"
        )
    return values


def _text_values(series: pd.Series, name: str) -> pd.Series:
    """A categorical column's present values as strings (bytes are decoded as UTF-8)."""
    try:
        return series.astype(str)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"column {name!r} holds bytes that are not UTF-8 text ({exc.reason})"
        ) from exc


class Preprocessor:
    def __init__(self, columns: list[Column]):
        self.columns = columns
        offset = 0
        for col in columns:
            col.offset = offset
            col.index = {c: i for i, c in enumerate(col.categories)}
            offset += col.width
        self.output_dim = offset
        self.feature_columns = [c.name for c in columns]
        self._names = frozenset(self.feature_columns)
        # The numeric columns are handled together on the serving path: one numpy call for
        # all of them instead of one per column.
        numeric = [c for c in columns if c.kind == "numeric"]
        self._numeric = numeric
        self._numeric_getter = operator.itemgetter(*[c.name for c in numeric]) if numeric else None
        self._numeric_slots = np.array([c.offset for c in numeric], dtype=np.int64)
        self._medians = np.array([c.median for c in numeric], dtype=np.float64)
        self._means = np.array([c.mean for c in numeric], dtype=np.float64)
        self._scales = np.array([c.scale for c in numeric], dtype=np.float64)
        # The small-request serving path: a function written for these columns.
        self._encode_small: Callable[[list], np.ndarray | None] = _small_encoder(self)

    # -- fitting and (de)serialisation -------------------------------------------------

    @classmethod
    def fit(cls, frame: pd.DataFrame, max_categories: int = 50) -> Preprocessor:
        columns = []
        for name in frame.columns:
            series = frame[name]
            kind = _column_kind(series)
            if kind == "categorical":
                counts = _text_values(series.dropna(), str(name)).value_counts()
                ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                categories = [value for value, _ in ranked[:max_categories]]
                columns.append(Column(str(name), kind, categories=categories))
                continue
            values = _numeric_values(series, str(name))
            present = values[~np.isnan(values)]
            median = float(np.median(present)) if present.size else 0.0
            filled = np.where(np.isnan(values), median, values)
            std = float(filled.std())
            scale = std if std > 1e-12 and math.isfinite(std) else 1.0
            columns.append(Column(str(name), kind, median, float(filled.mean()), scale))
        return cls(columns)

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Preprocessor:
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported preprocess.json version {doc.get('version')!r}")
        return cls([Column(**c) for c in doc["columns"]])

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of one record as `prepare_records` accepts it (for /openapi.json):
        numbers as JSON numbers within the float32 range once standardised, flags as JSON
        booleans, categories as strings; null (missing) everywhere."""
        properties: dict[str, Any] = {}
        for col in self.columns:
            if col.kind == "numeric":
                reach = col.scale * FLOAT32_MAX  # standardised, the value must fit float32
                properties[col.name] = {
                    "type": ["number", "null"],
                    "minimum": max(col.mean - reach, -sys.float_info.max),
                    "maximum": min(col.mean + reach, sys.float_info.max),
                    "description": "a number; null is missing (the training median)",
                }
            elif col.kind == "boolean":
                properties[col.name] = {
                    "type": ["boolean", "null"],
                    "description": "true or false (JSON booleans); null is missing",
                }
            else:
                properties[col.name] = {
                    "type": ["string", "null"],
                    "description": "a category (a string); unseen ones and null encode as none",
                    "examples": col.categories[:10],
                }
        return {
            "type": "object",
            "properties": properties,
            "required": list(self.feature_columns),
            "additionalProperties": False,
        }

    # -- training path -----------------------------------------------------------------

    def transform_frame(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.feature_columns if c not in frame.columns]
        if missing:
            raise InputError(f"missing columns {missing}")
        out = np.zeros((len(frame), self.output_dim), dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # out of range: named below
            for col in self.columns:
                series = frame[col.name]
                if col.kind == "categorical":
                    present = series.notna().to_numpy()
                    codes = np.full(len(series), -1, dtype=np.int64)
                    if present.any():  # dict lookup of str(value), as prepare_records does
                        found = _text_values(series[present], col.name).map(col.index)
                        codes[present] = found.fillna(-1).to_numpy(dtype=np.int64)
                    rows = np.nonzero(codes >= 0)[0]
                    out[rows, col.offset + codes[rows]] = 1.0
                else:
                    values = _numeric_values(series, col.name)
                    self._fill_numeric(col, values, np.isnan(values), out)
        return self._in_range(out, "row", lambda i, col: frame[col.name].iloc[i])

    @staticmethod
    def _fill_numeric(col: Column, values: np.ndarray, missing: np.ndarray, out: np.ndarray):
        values = np.where(missing, col.median, values)
        out[:, col.offset] = (values - col.mean) / col.scale

    # -- serving path ------------------------------------------------------------------

    def prepare_records(self, records: list[dict]) -> np.ndarray:
        """Validate JSON records ({column: value}) and transform them to a float32 matrix."""
        if type(records) is list and 0 < len(records) <= SMALL_BATCH:
            out = self._encode_small(records)
            if out is not None:
                return out
        check_batch(records, "record")
        names = self._names
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise InputError(f"record {i}: expected an object, got {type(record).__name__}")
            if record.keys() != names:
                self._raise_columns(i, record.keys())
        out = np.zeros((len(records), self.output_dim), dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # out of range: named below
            if not self._fill_all_numbers(records, out):  # a bad value: find and name it
                for col in self._numeric:
                    self._fill_numbers(col, [r[col.name] for r in records], out, "record")
        for col in self.columns:
            if col.kind == "categorical":
                values = [r[col.name] for r in records]
                self._fill_categorical(col, self._check_strings(col, values), out)
            elif col.kind == "boolean":
                self._fill_boolean(col, [r[col.name] for r in records], out)
        return self._in_range(out, "record", lambda i, col: records[i][col.name])

    def _fill_all_numbers(self, records: list[dict], out: np.ndarray) -> bool:
        """All numeric columns at once; False if some value is not a finite number or None."""
        if self._numeric_getter is None:
            return True
        rows = list(map(self._numeric_getter, records))
        if len(self._numeric) == 1:
            rows = [(v,) for v in rows]
        types = set(map(type, itertools.chain.from_iterable(rows)))
        if not types - {type(None)} <= NUMERIC_TYPES:
            return False
        try:
            array = np.array(rows, dtype=np.float64)  # None becomes NaN
        except OverflowError:
            return False
        finite = np.isfinite(array)
        if not finite.all():
            # Non-finite entries are rare: each must be a None (missing), not a NaN or inf.
            if any(rows[i][j] is not None for i, j in np.argwhere(~finite).tolist()):
                return False
            array = np.where(finite, array, self._medians)
        out[:, self._numeric_slots] = (array - self._means) / self._scales
        return True

    def prepare_rows(self, rows: list[list]) -> np.ndarray:
        """The same for CSV rows in `feature_columns` order; strings are parsed, "" is missing."""
        check_batch(rows, "row")
        width = len(self.columns)
        for i, row in enumerate(rows):
            if not isinstance(row, list | tuple):
                raise InputError(f"row {i}: expected a list of values, got {type(row).__name__}")
            if len(row) != width:
                raise InputError(
                    f"row {i}: expected {width} values ({', '.join(self.feature_columns)}), "
                    f"got {len(row)}"
                )
        out = np.zeros((len(rows), self.output_dim), dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # out of range: named below
            for j, col in enumerate(self.columns):
                values = [None if (v := row[j]) == "" else v for row in rows]
                if col.kind == "categorical":
                    values = [v if v is None or isinstance(v, str) else str(v) for v in values]
                    self._fill_categorical(col, values, out)
                elif col.kind == "boolean":
                    parsed = [_parse_bool(col, i, v) for i, v in enumerate(values)]
                    self._fill_boolean(col, parsed, out)
                else:
                    parsed = [_parse_number(col, i, v) for i, v in enumerate(values)]
                    self._fill_numbers(col, parsed, out, "row")
        names = self.feature_columns
        return self._in_range(out, "row", lambda i, col: rows[i][names.index(col.name)])

    def _in_range(
        self, out: np.ndarray, what: str, raw: Callable[[int, Column], Any]
    ) -> np.ndarray:
        """The one check of the model's input, in the model's dtype: every value is finite.

        Missing and non-finite inputs were handled before; what is left is a finite number
        whose standardised value overflows float32. `raw(i, column)` is the value as sent."""
        if np.isfinite(out).all():
            return out
        i, slot = np.argwhere(~np.isfinite(out))[0].tolist()
        col = self.column_at(slot)
        raise InputError(
            f"{what} {i}: column {col.name!r} value {_shown(raw(i, col))} is out of range: "
            f"the model computes in float32, and standardised with the training mean "
            f"{col.mean:.6g} and scale {col.scale:.6g} it exceeds the float32 limit "
            f"{FLOAT32_MAX:.4g}"
        )

    def column_at(self, slot: int) -> Column:
        """The column that fills output slot `slot`."""
        for col in self.columns:
            if col.offset <= slot < col.offset + col.width:
                return col
        raise IndexError(f"slot {slot} is outside the {self.output_dim} output columns")

    def _raise_columns(self, index: int, keys) -> None:
        missing = [c for c in self.feature_columns if c not in keys]
        extra = sorted(str(k) for k in keys if k not in self._names)
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {', '.join(extra)}")
        raise InputError(f"record {index}: {'; '.join(parts)}")

    @staticmethod
    def _check_strings(col: Column, values: list) -> list:
        if not set(map(type, values)) <= {str, type(None)}:
            for i, v in enumerate(values):
                if v is not None and not isinstance(v, str):
                    raise InputError(
                        f"record {i}: column {col.name!r} expects a string, "
                        f"got {type(v).__name__} {v!r}"
                    )
        return values

    @staticmethod
    def _fill_categorical(col: Column, values: list, out: np.ndarray) -> None:
        get = col.index.get
        codes = np.fromiter((get(v, -1) for v in values), dtype=np.int64, count=len(values))
        rows = np.nonzero(codes >= 0)[0]
        out[rows, col.offset + codes[rows]] = 1.0

    def _fill_numbers(self, col: Column, values: list, out: np.ndarray, what: str) -> None:
        types = set(map(type, values))
        if not types <= NUMERIC_TYPES:
            for i, v in enumerate(values):
                if v is not None and type(v) not in NUMERIC_TYPES:
                    raise InputError(
                        f"{what} {i}: column {col.name!r} expects a number, "
                        f"got {type(v).__name__} {v!r}"
                    )
        try:
            array = np.array(values, dtype=np.float64)  # None becomes NaN
        except OverflowError as exc:
            raise InputError(f"column {col.name!r}: number out of range") from exc
        finite = np.isfinite(array)
        if not finite.all():
            missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
            bad = np.nonzero(~finite & ~missing)[0]
            if bad.size:
                i = int(bad[0])
                raise InputError(
                    f"{what} {i}: column {col.name!r} has a non-finite number {values[i]!r}"
                )
        else:
            missing = ~finite
        self._fill_numeric(col, array, missing, out)

    def _fill_boolean(self, col: Column, values: list, out: np.ndarray) -> None:
        for i, v in enumerate(values):
            if v is not None and type(v) is not bool:
                raise InputError(
                    f"record {i}: column {col.name!r} expects true or false, "
                    f"got {type(v).__name__} {v!r}"
                )
        array = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        self._fill_numeric(col, array, np.isnan(array), out)


def _small_encoder(pre: Preprocessor) -> Callable[[list], np.ndarray | None]:
    """`prepare_records` of a few well-formed records, value by value in plain Python, as a
    function written for these columns (no loop over columns, constants bound): for a
    handful of records that costs a tenth of the vectorised path's fixed cost of numpy calls
    per column. The same float64 formula, cast to float32 once, so the result is bit for bit
    the vectorised one. Anything unusual (a value of the wrong type, a non-finite number, a
    result near the float32 limit, missing or extra keys) returns None: the vectorised path
    then accepts or refuses the input with its message."""
    lines = [
        "def encode(records):",
        "    matrix = []",
        "    for record in records:",
        "        if type(record) is not dict or record.keys() != NAMES:",
        "            return None",
        "        row = ZEROS.copy()",
    ]
    scope: dict[str, Any] = {"NAMES": pre._names, "ZEROS": [0.0] * pre.output_dim}
    for j, col in enumerate(pre.columns):
        lines.append(f"        value = record[{col.name!r}]")
        if col.kind == "categorical":
            scope[f"SLOTS{j}"] = {c: col.offset + i for i, c in enumerate(col.categories)}
            lines += [
                "        if value is not None:",
                "            if type(value) is not str:",
                "                return None",
                f"            slot = SLOTS{j}.get(value)",
                "            if slot is not None:",
                "                row[slot] = 1.0",
            ]
            continue
        accepted = "value is not True and value is not False"  # boolean: bool only
        if col.kind == "numeric":  # not bool (a subclass of int): the vectorised path refuses
            accepted = "(kind := type(value)) is not float and kind is not int"
        # By name, not as literals: a statistic may be inf or nan (no literal spells those).
        scope[f"MEAN{j}"], scope[f"SCALE{j}"] = col.mean, col.scale
        missing = (col.median - col.mean) / col.scale  # as numpy computes it for the median
        if not -FLOAT32_MAX < missing < FLOAT32_MAX:  # the vectorised path names the column
            missing_line = "            return None"
        else:
            missing_line = f"            row[{col.offset}] = {missing!r}"
        lines += [
            "        if value is None:",
            missing_line,
            "        else:",
            f"            if {accepted}:",
            "                return None",
            f"            value = (value - MEAN{j}) / SCALE{j}",
            f"            if not {-FLOAT32_MAX!r} < value < {FLOAT32_MAX!r}:  # NaN too",
            "                return None",
            f"            row[{col.offset}] = value",
        ]
    lines += [
        "        matrix.append(row)",
        "    return np.array(matrix, dtype=np.float32)",
    ]
    scope["np"] = np
    exec(compile("\n".join(lines), f"<encoder of {len(pre.columns)} columns>", "exec"), scope)
    encode = scope["encode"]

    def guarded(records: list) -> np.ndarray | None:
        try:
            return encode(records)
        except OverflowError:  # an int too large for a float
            return None

    return guarded


def _shown(value: Any) -> str:
    """A value for an error message: numbers short (a 300-digit int is not), the rest repr'd."""
    if isinstance(value, int | float | np.number) and not isinstance(value, bool):
        return f"{value:.6g}"
    return repr(value)


def _parse_number(col: Column, index: int, value: Any) -> float | int | None:
    if value is None or type(value) in NUMERIC_TYPES:
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise InputError(f"row {index}: column {col.name!r} expects a number, got {value!r}")


def _parse_bool(col: Column, index: int, value: Any) -> bool | None:
    if value is None or type(value) is bool:
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(f"row {index}: column {col.name!r} expects true or false, got {value!r}")
