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
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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


class Numbers:
    """A numeric sample, sorted once: its values without NaN and their weights (None: 1
    each). Every numeric test reads from this, so no test sorts or copies it again."""

    __slots__ = ("values", "weights", "total", "_cum")

    def __init__(self, values: Any, weights: np.ndarray | None = None) -> None:
        values = np.asarray(values, dtype=np.float64)
        keep = ~np.isnan(values)
        if weights is None:
            self.values = np.sort(values[keep] if not keep.all() else values)
            self.weights = None
            self.total = float(len(self.values))
            return
        weights = np.asarray(weights, dtype=np.float64)
        if len(weights) != len(values) or (weights < 0).any():
            raise ValueError(f"{len(values)} values need as many weights, none negative")
        values, weights = values[keep], weights[keep]
        order = np.argsort(values, kind="stable")
        self.values, self.weights = values[order], weights[order]
        self._cum = np.concatenate([[0.0], np.cumsum(self.weights)])
        self.total = float(self._cum[-1])  # as scipy: the last cumulative weight

    def __len__(self) -> int:
        return len(self.values)

    def std(self) -> float:
        if self.weights is None:
            return float(np.std(self.values))
        mean = np.average(self.values, weights=self.weights)
        return float(np.sqrt(np.average((self.values - mean) ** 2, weights=self.weights)))

    def bin_counts(self, edges: np.ndarray) -> np.ndarray:
        """Weight in each bin [e_i, e_i+1), the last one closed, as `np.histogram` (the
        edges span both samples: nothing lies outside)."""
        idx = np.append(np.searchsorted(self.values, edges[:-1], side="left"), len(self))
        if self.weights is None:
            return np.diff(idx).astype(np.float64)
        return np.diff(self._cum[idx])


class Categories:
    """A categorical sample as counts: its distinct values (as strings) and their counts
    (weighted: a baseline's frequencies). Missing values are not counted."""

    __slots__ = ("keys", "counts")

    def __init__(self, keys: Any, counts: Any) -> None:
        keys = np.asarray(keys, dtype=object).astype(str)
        counts = np.asarray(counts, dtype=np.float64)
        if len(keys) != len(counts):
            raise ValueError(f"{len(counts)} counts for {len(keys)} categories")
        if len(set(keys.tolist())) != len(keys):  # e.g. 1 and "1": one category
            codes, uniques = pd.factorize(keys)
            keys, counts = uniques.astype(str), np.bincount(codes, weights=counts)
        self.keys, self.counts = keys, counts

    @classmethod
    def of(cls, values: Any, weights: np.ndarray | None = None) -> Categories:
        """Count the values of an array (numpy, pandas or pyarrow; hashed, never sorted)."""
        if isinstance(values, pa.ChunkedArray | pa.Array) and weights is None:
            counted = pc.value_counts(values.drop_null())  # hashed in Arrow, no Python strings
            return cls(
                counted.field("values").to_numpy(zero_copy_only=False),
                counted.field("counts").to_numpy(),
            )
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        present = codes >= 0
        counts = np.bincount(
            codes[present],
            weights=None if weights is None else np.asarray(weights, float)[present],
            minlength=len(uniques),
        )
        return cls(np.asarray(uniques, dtype=object), counts)

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def __len__(self) -> int:
        return int(self.total)


Sample = Numbers | Categories


def _aligned(ref: Categories, cur: Categories) -> tuple[np.ndarray, np.ndarray]:
    """Counts of each value seen in either sample, in one order (sorted keys)."""
    keys = np.union1d(ref.keys, cur.keys) if len(ref.keys) + len(cur.keys) else ref.keys
    ref_c, cur_c = np.zeros(len(keys)), np.zeros(len(keys))
    ref_c[np.searchsorted(keys, ref.keys)] = ref.counts
    cur_c[np.searchsorted(keys, cur.keys)] = cur.counts
    return ref_c, cur_c


def _merged(ref: Numbers, cur: Numbers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both samples in one sorted order: (values, reference weight up to and including each
    position, current weight likewise). Two sorted runs: the stable sort merges them in
    linear time; weights come from each sample's cumulative weights, as scipy takes them."""
    both = np.concatenate([ref.values, cur.values])
    order = np.argsort(both, kind="stable")
    merged = both[order]
    del both
    ref_count = np.cumsum(order < len(ref.values), dtype=np.int64)
    del order
    cur_count = np.arange(1, len(merged) + 1, dtype=np.int64)
    cur_count -= ref_count
    ref_cum = ref_count if ref.weights is None else ref._cum[ref_count]
    cur_cum = cur_count if cur.weights is None else cur._cum[cur_count]
    return merged, ref_cum, cur_cum


def distinct(ref: Sample, cur: Sample) -> int:
    """Distinct values across both samples (Evidently's `nunique` of the two together), exact
    up to `FEW_VALUES` + 1, which is all the choice of test needs; above, a lower bound."""
    if isinstance(ref, Categories) and isinstance(cur, Categories):
        return len(np.union1d(ref.keys, cur.keys))
    assert isinstance(ref, Numbers) and isinstance(cur, Numbers)
    each = [int(np.count_nonzero(_changes(s.values))) + 1 if len(s) else 0 for s in (ref, cur)]
    if max(each) > FEW_VALUES:
        return max(each)
    return len(np.union1d(_run_starts(ref)[0], _run_starts(cur)[0]))


def _changes(values: np.ndarray) -> np.ndarray:
    """Where a sorted array changes value (a difference would overflow near 1.8e308)."""
    return values[1:] != values[:-1]


def _run_starts(sample: Numbers) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, index of each one's first place) of a sorted sample."""
    if not len(sample):
        return sample.values, np.zeros(0, dtype=np.int64)
    start = np.flatnonzero(np.concatenate([[True], _changes(sample.values)]))
    return sample.values[start], start


def bin_edges(low: float, high: float, bins: int = N_BINS) -> np.ndarray:
    """`np.histogram`'s equal-width edges over [low, high]; also where the width overflows
    a float (values near +-1.8e308), which numpy refuses."""
    with np.errstate(over="ignore"):
        span = high - low
    if np.isfinite(span):
        return np.histogram_bin_edges(np.array([low, high]), bins=bins)
    share = np.linspace(0.0, 1.0, bins + 1)
    return low * (1.0 - share) + high * share


def _binned(ref: Sample, cur: Sample, floor: bool) -> tuple[np.ndarray, np.ndarray]:
    """Shares per bin (numbers with more than 5 values: 30 equal-width bins over both
    samples, as `np.histogram`; otherwise per value), as Evidently's `get_binned_data`;
    `floor` replaces empty bins by 0.0001 (PSI)."""
    if isinstance(ref, Numbers) and isinstance(cur, Numbers):
        if distinct(ref, cur) > FEW_VALUES:
            low = min(ref.values[0], cur.values[0])
            high = max(ref.values[-1], cur.values[-1])
            edges = bin_edges(low, high)
            # np.histogram's bins: [e_i, e_i+1), the last one closed
            ref_c, cur_c = ref.bin_counts(edges), cur.bin_counts(edges)
        else:
            ref_c, cur_c = _aligned(_as_categories(ref), _as_categories(cur))
    else:
        ref_c, cur_c = _aligned(_as_categories(ref), _as_categories(cur))
    ref_p, cur_p = ref_c / ref_c.sum(), cur_c / cur_c.sum()
    if floor:
        ref_p = np.where(ref_p == 0, PSI_FLOOR, ref_p)
        cur_p = np.where(cur_p == 0, PSI_FLOOR, cur_p)
    return ref_p, cur_p


def _as_categories(sample: Sample) -> Categories:
    if isinstance(sample, Categories):
        return sample
    keys, start = _run_starts(sample)
    ends = np.append(start, len(sample.values))
    if sample.weights is None:
        counts = np.diff(ends)
    else:
        counts = np.diff(sample._cum[ends])
    return Categories(keys.astype(object), counts)


def ks(ref: Numbers, cur: Numbers) -> float:
    if ref.weights is not None:
        raise ValueError("the Kolmogorov-Smirnov test needs the reference rows, not a sketch")
    return float(stats.ks_2samp(ref.values, cur.values).pvalue)


def chisquare(ref: Sample, cur: Sample) -> float:
    ref_c, cur_c = _aligned(_as_categories(ref), _as_categories(cur))
    expected = ref_c * (cur_c.sum() / ref_c.sum())
    with np.errstate(divide="ignore", invalid="ignore"):  # a new category: p = 0, as Evidently
        return float(stats.chisquare(cur_c, expected).pvalue)


def z_test(ref: Sample, cur: Sample) -> float:
    """Two-proportion Z-test on the share of the first category (two categories at most)."""
    ref_c, cur_c = _aligned(_as_categories(ref), _as_categories(cur))
    if len(ref_c) == 1:
        return 1.0
    n1, n2 = ref_c.sum(), cur_c.sum()
    p1, p2 = ref_c[0] / n1, cur_c[0] / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


def wasserstein(ref: Numbers, cur: Numbers, ref_std: float | None = None) -> float:
    """Wasserstein distance over the reference's standard deviation (at least 0.001): the
    area between the two empirical distribution functions, as `scipy.stats`."""
    norm = max(ref.std() if ref_std is None else ref_std, 0.001)
    merged, ref_cum, cur_cum = _merged(ref, cur)
    gap = np.abs(ref_cum[:-1] / ref.total - cur_cum[:-1] / cur.total)
    with np.errstate(over="ignore"):  # values near +-1.8e308: the distance may be inf
        steps = np.diff(merged)
        if not np.isfinite(steps).all():  # measure in a scaled unit
            scale = float(np.abs(merged).max())
            return float(np.dot(gap, np.diff(merged / scale)) * scale / norm)
        return float(np.dot(gap, steps) / norm)


def jensenshannon(ref: Sample, cur: Sample) -> float:
    ref_p, cur_p = _binned(ref, cur, floor=False)
    return float(distance.jensenshannon(ref_p, cur_p))


def psi(ref: Sample, cur: Sample) -> float:
    ref_p, cur_p = _binned(ref, cur, floor=True)
    return float(np.sum((ref_p - cur_p) * np.log(ref_p / cur_p)))


def drop_missing(values: np.ndarray, kind: Kind) -> np.ndarray:
    if kind == "numeric":
        values = np.asarray(values, dtype=float)
        return values[~np.isnan(values)]
    series = pd.Series(values, dtype=object)
    return series[series.notna()].astype(str).to_numpy(dtype=object)


def sample_of(values: Any, kind: Kind, weights: np.ndarray | None = None) -> Sample:
    """A column's values (an array, or an already prepared sample) ready for the tests;
    missing values are dropped."""
    if isinstance(values, Numbers | Categories):
        return values
    return Numbers(values, weights) if kind == "numeric" else Categories.of(values, weights)


def column_drift(
    ref: Any,
    cur: Any,
    kind: Kind,
    *,
    method: str | None = None,
    reference_rows: int | None = None,
    ref_weights: np.ndarray | None = None,
    ref_std: float | None = None,
    threshold: float | None = None,
) -> Drift:
    """Drift of one column: `ref` and `cur` are arrays (missing values are dropped) or
    prepared samples (`Numbers`, `Categories`). `reference_rows` is the size of the data
    the reference stands for (a sketch of a large reference has fewer values)."""
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown drift method {method!r}: allowed {list(METHODS)}")
    ref_s, cur_s = sample_of(ref, kind, ref_weights), sample_of(cur, kind)
    if type(ref_s) is not type(cur_s):
        raise ValueError(f"a {kind} column needs two samples of one kind")
    rows = len(ref_s) if reference_rows is None else reference_rows
    if method is None:
        method = default_method(kind, rows, distinct(ref_s, cur_s))
    limit = threshold_of(method) if threshold is None else threshold
    if len(ref_s) == 0 or len(cur_s) == 0:
        return Drift(method, float("nan"), limit, False)
    if method in ("ks", "wasserstein") and not isinstance(ref_s, Numbers):
        raise ValueError(f"method {method!r} needs numbers, not a {kind} column")
    if method == "ks":
        stat = ks(ref_s, cur_s)  # type: ignore[arg-type]
    elif method == "chisquare":
        stat = chisquare(ref_s, cur_s)
    elif method == "z":
        stat = z_test(ref_s, cur_s)
    elif method == "wasserstein":
        stat = wasserstein(ref_s, cur_s, ref_std)  # type: ignore[arg-type]
    elif method == "jensenshannon":
        stat = jensenshannon(ref_s, cur_s)
    else:
        stat = psi(ref_s, cur_s)
    drifted = stat < limit if method in ("ks", "chisquare", "z") else stat >= limit
    return Drift(method, stat, limit, bool(drifted))


def dataset_drift(drifts: dict[str, Drift], share: float = 0.5) -> bool:
    """Evidently's dataset drift: at least `share` of the features drifted."""
    if not drifts:
        return False
    return sum(d.drifted for d in drifts.values()) / len(drifts) >= share
