"""What a tabular channel's labels must be, checked where the channel is read.

A label is a number, a boolean or a string, one kind per channel: anything else (a list, an
object, a date, a mix of strings and numbers) used to surface as a TypeError from sorting
or JSON deep inside training. Here it is a `DataError` naming the file, the target column,
the row (data rows counted from 0) and the value.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pandas.api import types

from workloads.training.data import DataError

__all__ = ["check_labels", "label_kind"]

LabelKind = Literal["strings", "numbers"]
# The values a label may hold (numpy's scalars come out of numeric and categorical columns).
SCALARS = (str, bool, int, float, np.bool_, np.integer, np.floating)
# `infer_dtype` verdicts that need no look at each value.
FINE = frozenset({"string", "integer", "floating", "mixed-integer-float", "boolean", "empty"})


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_labels(labels: pd.Series, target: str, source: str) -> None:
    """Refuse labels that are not all numbers/booleans or all strings (missing ones skipped)."""
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
    first_text = first_other = None
    for row, value in present.items():
        if not isinstance(value, SCALARS):
            raise DataError(
                f"{where} has a {type(value).__name__} value {_shown(value)} in row {row}; "
                "a label is a number, a boolean or a string"
            )
        if isinstance(value, str):
            first_text = first_text or (row, value)
        else:
            first_other = first_other or (row, value)
        if first_text and first_other:
            (i, text), (j, other) = first_text, first_other
            raise DataError(
                f"{where} mixes strings and numbers (row {i} is {_shown(text)}, row {j} is "
                f"{_shown(other)}); make every label a string or every label a number"
            )


def label_kind(labels: pd.Series) -> LabelKind:
    """Whether checked labels are strings or numbers (booleans count as numbers)."""
    present = labels.dropna()
    return "strings" if len(present) and isinstance(present.iloc[0], str) else "numbers"
