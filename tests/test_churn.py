"""The churn generator: deterministic, shaped like the local spec's feature groups, and a data
set on which point-in-time correctness visibly matters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from components.spec import load_stack
from workloads.local import churn


@pytest.fixture(scope="module")
def data() -> churn.ChurnData:
    return churn.generate_churn(12_000, seed=7)


def test_deterministic_and_seeded():
    a = churn.generate_churn(3_000, seed=1)
    b = churn.generate_churn(3_000, seed=1)
    c = churn.generate_churn(3_000, seed=2)
    for name in ("profile", "activity", "labels"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert not a.labels.equals(c.labels)


@pytest.mark.parametrize("rows", [1, 137, 5_000])
def test_any_size(rows):
    d = churn.generate_churn(rows)
    assert len(d.labels) == rows
    # Every labelled customer has a profile, and nobody without labels is kept.
    assert set(d.labels.customer_id) <= set(d.profile.customer_id)
    assert d.profile.customer_id.max() == d.labels.customer_id.max()


def test_bad_sizes():
    with pytest.raises(ValueError, match="rows"):
        churn.generate_churn(0)
    with pytest.raises(ValueError, match="months"):
        churn.generate_churn(10, months=1)


def test_columns_match_the_local_spec(data):
    spec = load_stack("local")
    for group, frame in (("customer-profile", data.profile), ("customer-activity", data.activity)):
        fg = next(g for g in spec.feature_groups if g.name == group)
        assert list(frame.columns) == [f.name for f in fg.features]
        for feature in fg.features:
            col = frame[feature.name]
            if feature.type == "integral":
                assert pd.api.types.is_integer_dtype(col), feature.name
            elif feature.type == "fractional":
                assert pd.api.types.is_float_dtype(col), feature.name
            else:
                assert pd.api.types.is_string_dtype(col), feature.name
    assert list(data.labels.columns) == ["customer_id", "event_time", "churned"]


def test_timestamps_missing_values_and_drift(data):
    times = pd.to_datetime(data.activity.event_time, utc=True)
    assert times.notna().all() and data.activity.event_time.str.endswith("Z").all()
    # Missing values in a categorical and in numeric columns.
    assert data.profile.region.isna().mean() > 0.01
    assert data.profile.monthly_charges.isna().mean() > 0.01
    assert data.activity.avg_session_minutes.isna().mean() > 0.05
    # Features change over time per customer: most customers with several snapshots differ.
    per_customer = data.activity.groupby("customer_id").sessions_30d.nunique()
    assert (
        per_customer[data.activity.customer_id.value_counts().sort_index() > 2] > 1
    ).mean() > 0.8
    # Some customers change plan after sign-up (profile records beyond the first).
    assert data.profile.customer_id.duplicated().any()
    # Base churn rate: the majority class alone cannot pass the 0.7 accuracy gate.
    assert 0.3 < data.labels.churned.mean() < 0.45


def test_labels_follow_their_features_in_time(data):
    # Each label comes after that customer's sign-up record.
    first = data.profile.groupby("customer_id").event_time.min()
    label_times = pd.to_datetime(data.labels.event_time, utc=True)
    signups = pd.to_datetime(data.labels.customer_id.map(first), utc=True)
    assert (label_times > signups).all()
    # A customer's last label is the churn one, if any: nothing is labelled after a churn.
    after_churn = data.labels.groupby("customer_id").churned.apply(
        lambda s: s.to_numpy()[:-1].any()
    )
    assert not after_churn.any()


def _join(d: churn.ChurnData, labels: pd.DataFrame, direction: str) -> pd.DataFrame:
    out = labels.assign(t=pd.to_datetime(labels.event_time, utc=True)).sort_values("t")
    for frame in (d.profile, d.activity):
        f = frame.assign(t=pd.to_datetime(frame.event_time, utc=True)).drop(columns="event_time")
        out = pd.merge_asof(out, f.sort_values("t"), on="t", by="customer_id", direction=direction)
    return out


def _matrix(frame: pd.DataFrame) -> pd.DataFrame:
    x = frame[churn.FEATURES].copy()
    for col in ("plan", "region"):
        x[col] = x[col].astype("category").cat.codes
    return x


def test_a_leaking_join_scores_better_on_training_than_on_the_later_period(data):
    train, later = churn.time_split(data.labels)
    assert pd.to_datetime(train.event_time).max() <= pd.to_datetime(later.event_time).min()
    honest_later = _join(data, later, "backward")

    def fit(direction: str) -> tuple[float, float]:
        joined = _join(data, train, direction)
        model = HistGradientBoostingClassifier(max_iter=40, random_state=0)
        with threadpool_limits(1):  # OpenMP threads only contend on a small, shared machine
            model.fit(_matrix(joined), joined.churned)
        return (
            model.score(_matrix(joined), joined.churned),
            model.score(_matrix(honest_later), honest_later.churned),
        )

    leak_train, leak_later = fit("forward")  # looks at the snapshot after the label
    pit_train, pit_later = fit("backward")  # point in time: at or before the label
    assert leak_train > 0.95 and leak_train - leak_later > 0.2
    assert pit_later > 0.72 and abs(pit_train - pit_later) < 0.06
    assert pit_later > leak_later + 0.05


def test_time_split_rejects_bad_fraction(data):
    with pytest.raises(ValueError, match="holdout"):
        churn.time_split(data.labels, holdout=1.5)


def test_larger_sizes_are_exact():
    d = churn.generate_churn(200_000, seed=3)
    assert len(d.labels) == 200_000
    assert np.isfinite(d.activity.sessions_30d.to_numpy()).all()
