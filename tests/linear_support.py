"""The small public datasets and the linear baseline the tabular defaults are held to.

Shared by tests/test_train.py and benchmarks/linear_baseline.py, so the test and the
benchmark measure the same thing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import datasets
from sklearn.compose import make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

DATASETS = ("breast_cancer", "wine", "digits", "diabetes")
REGRESSION = frozenset({"diabetes"})


def real_dataset(name: str) -> pd.DataFrame:
    """A bundled scikit-learn dataset plus a categorical column and missing values."""
    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    rng = np.random.default_rng(1)
    features = [c for c in frame.columns if c != "target"]
    varied = max(features, key=lambda c: frame[c].nunique())
    frame["bucket"] = pd.qcut(frame[varied], 3, labels=["lo", "mid", "hi"]).astype(str)
    for column in features[:3]:
        frame.loc[rng.random(len(frame)) < 0.08, column] = np.nan
    frame.loc[rng.random(len(frame)) < 0.08, "bucket"] = None
    return frame


def stratified_split(name: str, frame: pd.DataFrame, seed: int, test_size: float = 0.25):
    """(train, test); stratified by class for classification."""
    stratify = None if name in REGRESSION else frame["target"]
    return train_test_split(frame, test_size=test_size, random_state=seed, stratify=stratify)


def linear_baseline(name: str, train: pd.DataFrame) -> Pipeline:
    """Logistic (classification) or ridge regression with median imputation, scaling and
    one-hot encoding, fitted on `train`."""
    x, y = train.drop(columns="target"), train["target"]
    numeric = [c for c in x.columns if c != "bucket"]
    columns = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        (
            make_pipeline(
                SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
            ),
            ["bucket"],
        ),
    )
    model = Ridge() if name in REGRESSION else LogisticRegression(max_iter=5000)
    return make_pipeline(columns, model).fit(x, y)
