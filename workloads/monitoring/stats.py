"""Drift statistics: Evidently's default tests and thresholds, computed with numpy/scipy.

The choice per feature follows Evidently's defaults (`DataDriftPreset`):

- reference of at most 1000 rows: Kolmogorov-Smirnov for numbers with more than 5 distinct
  values, chi-squared for strings (and numbers with 3 to 5 values), the two-proportion
  Z-test for two categories; drift when the p-value is below 0.05;
- larger references: the Wasserstein distance normed by the reference's standard deviation
  for numbers with more than 5 distinct values, the Jensen-Shannon distance otherwise;
  drift when the distance reaches 0.1.

PSI is available as an option (`method="psi"`, drift at 0.1). Missing values are dropped
before a test, as Evidently does. A reference may be weighted (a quantile sketch from a
baseline stands for many rows): `ref_weights` scales each value's share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

Kind = Literal["numeric", "categorical"]
METHODS = ("ks", "chisquare", "z", "wasserstein", "jensenshannon", "psi")
SMALL_REFERENCE = 1000
P_THRESHOLD = 0.05
DISTANCE_THRESHOLD = 0.1
FEW_VALUES = 5
N_BINS = 30
PSI_FLOOR = 0.0001


@dataclass(frozen=True)
class Drift:
    method: str
    statistic: float
    threshold: float
    drifted: bool

    def as_dict(self) -> dict[str, object]:
        stat = float(self.statistic)
        return {
            "method": self.method,
            "statistic": stat if np.isfinite(stat) else None,
            "threshold": self.threshold,
            "drifted": bool(self.drifted),
        }


def default_method(kind: Kind, reference_rows: int, n_values: int) -> str:
    """Evidently's default test for a column of `kind`, a reference of `reference_rows`
    rows, and `n_values` distinct values across reference and current."""
    if reference_rows <= SMALL_REFERENCE:
        if kind == "numeric" and n_values > FEW_VALUES:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    if kind == "numeric" and n_values > FEW_VALUES:
        return "wasserstein"
    return "jensenshannon"


def threshold_of(method: str) -> float:
    return P_THRESHOLD if method in ("ks", "chisquare", "z") else DISTANCE_THRESHOLD


def _counts(
    ref: np.ndarray, cur: np.ndarray, ref_weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of each value seen in either sample, in one order (sorted keys)."""
    both = np.concatenate([ref, cur])
    if both.dtype.kind in "OUS":  # strings: hashing beats sorting; keys in sorted order
        codes, uniques = pd.factorize(both, sort=True)
        n_keys = len(uniques)
    else:
        uniques, codes = np.unique(both, return_inverse=True)
        n_keys = len(uniques)
    ref_idx, cur_idx = codes[: len(ref)], codes[len(ref) :]
    ref_counts = np.bincount(ref_idx, weights=ref_weights, minlength=n_keys).astype(float)
    cur_counts = np.bincount(cur_idx, minlength=n_keys).astype(float)
    return ref_counts, cur_counts


def _binned(
    ref: np.ndarray, cur: np.ndarray, kind: Kind, ref_weights: np.ndarray | None, floor: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Shares per bin (numbers: 30 equal-width bins over both samples; strings: per value),
    as Evidently's `get_binned_data`; `floor` replaces empty bins by 0.0001 (PSI)."""
    if kind == "numeric" and len(pd.unique(np.concatenate([ref, cur]))) > FEW_VALUES:
        edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins=N_BINS)
        ref_c = np.histogram(ref, bins=edges, weights=ref_weights)[0].astype(float)
        cur_c = np.histogram(cur, bins=edges)[0].astype(float)
    else:
        ref_c, cur_c = _counts(ref, cur, ref_weights)
    ref_p, cur_p = ref_c / ref_c.sum(), cur_c / cur_c.sum()
    if floor:
        ref_p = np.where(ref_p == 0, PSI_FLOOR, ref_p)
        cur_p = np.where(cur_p == 0, PSI_FLOOR, cur_p)
    return ref_p, cur_p


def ks(ref: np.ndarray, cur: np.ndarray) -> float:
    return float(stats.ks_2samp(ref, cur).pvalue)


def chisquare(ref: np.ndarray, cur: np.ndarray, ref_weights: np.ndarray | None = None) -> float:
    ref_c, cur_c = _counts(ref, cur, ref_weights)
    expected = ref_c * (cur_c.sum() / ref_c.sum())
    with np.errstate(divide="ignore", invalid="ignore"):  # a new category: p = 0, as Evidently
        return float(stats.chisquare(cur_c, expected).pvalue)


def z_test(ref: np.ndarray, cur: np.ndarray, ref_weights: np.ndarray | None = None) -> float:
    """Two-proportion Z-test on the share of the first category (two categories at most)."""
    ref_c, cur_c = _counts(ref, cur, ref_weights)
    if len(ref_c) == 1:
        return 1.0
    n1, n2 = ref_c.sum(), cur_c.sum()
    p1, p2 = ref_c[0] / n1, cur_c[0] / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def wasserstein(
    ref: np.ndarray,
    cur: np.ndarray,
    ref_weights: np.ndarray | None = None,
    ref_std: float | None = None,
) -> float:
    """Wasserstein distance over the reference's standard deviation (at least 0.001)."""
    if ref_std is None:
        ref_std = _weighted_std(ref, ref_weights)
    norm = max(ref_std, 0.001)
    return float(stats.wasserstein_distance(ref, cur, u_weights=ref_weights) / norm)


def _weighted_std(values: np.ndarray, weights: np.ndarray | None) -> float:
    if weights is None:
        return float(np.std(values))
    mean = np.average(values, weights=weights)
    return float(np.sqrt(np.average((values - mean) ** 2, weights=weights)))


def jensenshannon(
    ref: np.ndarray, cur: np.ndarray, kind: Kind, ref_weights: np.ndarray | None = None
) -> float:
    ref_p, cur_p = _binned(ref, cur, kind, ref_weights, floor=False)
    return float(distance.jensenshannon(ref_p, cur_p))


def psi(
    ref: np.ndarray, cur: np.ndarray, kind: Kind, ref_weights: np.ndarray | None = None
) -> float:
    ref_p, cur_p = _binned(ref, cur, kind, ref_weights, floor=True)
    return float(np.sum((ref_p - cur_p) * np.log(ref_p / cur_p)))


def drop_missing(values: np.ndarray, kind: Kind) -> np.ndarray:
    if kind == "numeric":
        values = np.asarray(values, dtype=float)
        return values[~np.isnan(values)]
    series = pd.Series(values, dtype=object)
    return series[series.notna()].astype(str).to_numpy(dtype=object)


def column_drift(
    ref: np.ndarray,
    cur: np.ndarray,
    kind: Kind,
    *,
    method: str | None = None,
    reference_rows: int | None = None,
    ref_weights: np.ndarray | None = None,
    ref_std: float | None = None,
    threshold: float | None = None,
) -> Drift:
    """Drift of one column (missing values already dropped). `reference_rows` is the size of
    the data the reference stands for (a sketch of a large reference has fewer values)."""
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown drift method {method!r}: allowed {list(METHODS)}")
    rows = len(ref) if reference_rows is None else reference_rows
    if method is None:
        n_values = len(pd.unique(np.concatenate([ref, cur])))
        method = default_method(kind, rows, n_values)
    limit = threshold_of(method) if threshold is None else threshold
    if len(ref) == 0 or len(cur) == 0:
        return Drift(method, float("nan"), limit, False)
    if method == "ks":
        stat = ks(ref, cur)
    elif method == "chisquare":
        stat = chisquare(ref, cur, ref_weights)
    elif method == "z":
        stat = z_test(ref, cur, ref_weights)
    elif method == "wasserstein":
        stat = wasserstein(ref, cur, ref_weights, ref_std)
    elif method == "jensenshannon":
        stat = jensenshannon(ref, cur, kind, ref_weights)
    else:
        stat = psi(ref, cur, kind, ref_weights)
    drifted = stat < limit if method in ("ks", "chisquare", "z") else stat >= limit
    return Drift(method, stat, limit, bool(drifted))


def dataset_drift(drifts: dict[str, Drift], share: float = 0.5) -> bool:
    """Evidently's dataset drift: at least `share` of the features drifted."""
    if not drifts:
        return False
    return sum(d.drifted for d in drifts.values()) / len(drifts) >= share
