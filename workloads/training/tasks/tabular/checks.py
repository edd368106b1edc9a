"""What a tabular channel's labels must be, checked where the channel is read.

A label is a number, a boolean or a string, one kind per channel: anything else (a list, an
object, a date, a mix of strings and numbers, or of booleans and numbers) used to surface
as a TypeError from sorting, the class index or JSON deep inside training. Here it is a
`DataError` naming the file, the target column, the row (data rows counted from 0) and the
value.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pandas.api import types

from workloads.training.data import LABEL_SCALARS, DataError

__all__ = ["check_labels", "label_kind"]

LabelKind = Literal["strings", "booleans", "numbers"]
# `infer_dtype` verdicts that need no look at each value.
FINE = frozenset({"string", "integer", "floating", "mixed-integer-float", "boolean", "empty"})


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: object) -> LabelKind:
    if isinstance(value, str):
        return "strings"
    return "booleans" if isinstance(value, bool | np.bool_) else "numbers"


def check_labels(labels: pd.Series, target: str, source: str) -> None:
    """Refuse labels that are not all numbers, all booleans or all strings (missing ones
    skipped): a 1 and a True are one key in the class index, a 1 and a "x" do not sort."""
    where = f"{source}: target column {target!r}"
    dtype = labels.dtype
    if types.is_bool_dtype(dtype) or (
        types.is_numeric_dtype(dtype) and not types.is_complex_dtype(dtype)
    ):
        return
    if not (
        types.is_object_dtype(dtype)
        or types.is_string_dtype(dtype)
        or isinstance(dtype, pd.CategoricalDtype)
    ):
        raise DataError(f"{where} has {dtype} values; a label is a number, a boolean or a string")
    present = labels.dropna()
    if types.infer_dtype(present, skipna=False) in FINE:  # C speed; one kind of scalar
        return
    first: dict[LabelKind, tuple[object, object]] = {}
    for row, value in present.items():
        if not isinstance(value, LABEL_SCALARS):
            raise DataError(
                f"{where} has a {type(value).__name__} value {_shown(value)} in row {row}; "
                "a label is a number, a boolean or a string"
            )
        first.setdefault(_kind(value), (row, value))
        if len(first) > 1:
            (a, (i, x)), (b, (j, y)) = sorted(first.items(), key=lambda kv: kv[0])
            raise DataError(
                f"{where} mixes {a} and {b} (row {i} is {_shown(x)}, row {j} is "
                f"{_shown(y)}); make every label one kind: numbers, booleans or strings"
            )


def label_kind(labels: pd.Series) -> LabelKind:
    """Whether checked labels are strings, booleans or numbers."""
    if types.is_bool_dtype(labels.dtype):
        return "booleans"
    present = labels.dropna()
    return _kind(present.iloc[0]) if len(present) else "numbers"
