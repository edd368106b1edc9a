"""The reference use case: a deterministic, churn-style tabular data set at any size.

Customers sign up in some month, then every month they get an activity snapshot (sessions,
support tickets, payment failures, session length) and now and then a profile change (plan,
charges). At the end of each active month a label says whether the customer churns in the
next 30 days. The churn probability depends on the features *as of that time*, and features
drift per customer (a latent engagement follows an AR(1) process).

Point-in-time correctness matters here: after a churn, the customer's next activity snapshot
shows almost no usage. A join that looks past the label time (the newest record, or the
next one) therefore sees the answer, and scores visibly better on training data than an
honest model does on the held-out later period.

Everything is vectorised over customers (a short loop over months only), so millions of
rows take seconds. Same `rows` and `seed` -> the same frames, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

PLANS = np.array(["basic", "standard", "premium"], dtype=object)
REGIONS = np.array(["north", "south", "east", "west"], dtype=object)
TARGET = "churned"
ENTITY = "customer_id"
TIME = "event_time"

PROFILE_FEATURES = ["plan", "region", "tenure_months", "monthly_charges"]
ACTIVITY_FEATURES = [
    "sessions_30d",
    "support_tickets_30d",
    "payment_failures_90d",
    "avg_session_minutes",
]
FEATURES = PROFILE_FEATURES + ACTIVITY_FEATURES

_DAY = np.timedelta64(1, "D").astype("timedelta64[s]")
# Tuned so the base churn rate is about 30 % and a good model reaches about 80 % accuracy.
_INTERCEPT = -1.0


@dataclass(frozen=True)
class ChurnData:
    """Two feature tables (as the `customer-profile` and `customer-activity` groups declare
    them) and the label events. `event_time` columns are ISO-8601 UTC strings."""

    profile: pd.DataFrame
    activity: pd.DataFrame
    labels: pd.DataFrame


def generate_churn(
    rows: int, *, seed: int = 0, months: int = 12, start: str = "2024-01-01"
) -> ChurnData:
    """About `rows` label rows (exactly `rows` whenever enough customers were drawn)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if months < 2:
        raise ValueError(f"months must be >= 2, got {months}")
    # A customer yields ~2.3 labels on average (staggered sign-ups, ~30 % monthly churn).
    customers = max(8, math.ceil(rows / 2.0))
    while True:
        data = _simulate(customers, seed=seed, months=months, start=start)
        if len(data.labels) >= rows:
            break
        customers *= 2
    labels = data.labels.iloc[:rows].reset_index(drop=True)
    last_customer = labels[ENTITY].iloc[-1]
    keep = lambda df: df[df[ENTITY] <= last_customer].reset_index(drop=True)  # noqa: E731
    return ChurnData(keep(data.profile), keep(data.activity), labels)


def _simulate(n: int, *, seed: int, months: int, start: str) -> ChurnData:
    rng = np.random.default_rng(seed)
    m = months
    month_start = np.datetime64(start, "M") + np.arange(m + 2)  # one past the end for leaks
    month_start = month_start.astype("datetime64[s]")
    ids = np.arange(1, n + 1, dtype=np.int64)
    signup = rng.integers(0, m - 1, size=n)  # month index of the first profile record
    months_idx = np.arange(m)
    active_from = months_idx[None, :] >= signup[:, None]

    # Latent engagement drifts per customer; features are noisy readings of it.
    engagement = np.empty((n, m))
    engagement[:, 0] = rng.normal(0, 1, n)
    shocks = rng.normal(0, 0.6, (n, m))
    for t in range(1, m):
        engagement[:, t] = 0.8 * engagement[:, t - 1] + shocks[:, t]

    # Plans change now and then (slowly changing profile), charges follow the plan.
    plan = np.empty((n, m), dtype=np.int64)
    plan[:, 0] = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    changes = rng.random((n, m)) < 0.08
    changes[:, 0] = False
    new_plan = rng.integers(0, 3, size=(n, m))
    for t in range(1, m):
        plan[:, t] = np.where(changes[:, t], new_plan[:, t], plan[:, t - 1])
    changes &= active_from & (months_idx[None, :] > signup[:, None])
    price_offset = rng.normal(0, 6, n)
    charges = np.array([25.0, 55.0, 95.0])[plan] + price_offset[:, None]
    charges += rng.normal(0, 2, (n, m))
    prior_tenure = rng.integers(0, 48, size=n)
    tenure = prior_tenure[:, None] + np.maximum(months_idx[None, :] - signup[:, None], 0)
    region = REGIONS[rng.integers(0, 4, size=n)]
    region[rng.random(n) < 0.05] = None  # unknown region: a missing categorical
    pay_risk = rng.gamma(1.0, 0.3, n)

    sessions = rng.poisson(np.exp(2.3 + 0.5 * engagement))
    tickets = rng.poisson(np.exp(-1.0 - 0.7 * engagement + 0.3 * (plan == 0)))
    pay_fail = rng.poisson(pay_risk[:, None] * np.ones((1, m)))
    minutes = np.round(np.exp(2.5 + 0.25 * engagement + rng.normal(0, 0.3, (n, m))), 2)

    # Churn depends on what the features say as of the label time.
    logit = (
        _INTERCEPT
        - 0.22 * (sessions - 10)
        + 0.7 * tickets
        + 1.1 * pay_fail
        + np.array([0.6, 0.0, -0.7])[plan]
        - 0.03 * (tenure - 24)
        + 0.015 * (charges - 55)
    )
    churn = rng.random((n, m)) < 1 / (1 + np.exp(-logit))
    churn &= active_from
    # Active until (and including) the first churn month.
    churned_before = np.cumsum(churn, axis=1) - churn > 0
    active = active_from & ~churned_before
    churn &= active  # only the first churn counts

    offsets = lambda lo, hi: (rng.uniform(lo, hi, (n, m)) * 86400).astype("timedelta64[s]")  # noqa: E731
    activity_time = month_start[None, :m] + offsets(1, 27)
    label_time = month_start[None, 1 : m + 1] + offsets(0, 1)
    change_time = month_start[None, :m] + offsets(0, 27)

    # Labels: one per active month, at the end of that month.
    ci, ti = np.nonzero(active)
    labels = pd.DataFrame(
        {ENTITY: ids[ci], TIME: label_time[ci, ti], TARGET: churn[ci, ti].astype(np.int64)}
    )

    # Activity: one snapshot per active month, plus the give-away one after a churn.
    post_ci, post_ti = np.nonzero(churn)
    post_time = month_start[post_ti + 1] + (rng.uniform(1, 27, len(post_ci)) * 86400).astype(
        "timedelta64[s]"
    )
    activity = pd.DataFrame(
        {
            ENTITY: np.concatenate([ids[ci], ids[post_ci]]),
            TIME: np.concatenate([activity_time[ci, ti], post_time]),
            "sessions_30d": np.concatenate(
                [sessions[ci, ti], rng.poisson(0.3, len(post_ci))]
            ).astype(np.int64),
            "support_tickets_30d": np.concatenate(
                [tickets[ci, ti], rng.poisson(2.5, len(post_ci))]
            ).astype(np.int64),
            "payment_failures_90d": np.concatenate(
                [pay_fail[ci, ti], pay_fail[post_ci, post_ti] + 1]
            ).astype(np.int64),
            "avg_session_minutes": np.concatenate([minutes[ci, ti], np.full(len(post_ci), np.nan)]),
        }
    )
    # A tenth of the session lengths were never measured.
    activity.loc[rng.random(len(activity)) < 0.1, "avg_session_minutes"] = np.nan

    # Profile: the sign-up record, then one record per plan change while active.
    pc_i, pc_t = np.nonzero(changes & active)
    first_t = signup
    profile = pd.DataFrame(
        {
            ENTITY: np.concatenate([ids, ids[pc_i]]),
            TIME: np.concatenate(
                [month_start[first_t] + offsets(0, 1)[np.arange(n), 0], change_time[pc_i, pc_t]]
            ),
            "plan": np.concatenate([PLANS[plan[np.arange(n), first_t]], PLANS[plan[pc_i, pc_t]]]),
            "region": np.concatenate([region, region[pc_i]]),
            "tenure_months": np.concatenate(
                [tenure[np.arange(n), first_t], tenure[pc_i, pc_t]]
            ).astype(np.int64),
            "monthly_charges": np.round(
                np.concatenate([charges[np.arange(n), first_t], charges[pc_i, pc_t]]), 2
            ),
        }
    )
    profile.loc[rng.random(len(profile)) < 0.05, "monthly_charges"] = np.nan

    return ChurnData(profile=_finish(profile), activity=_finish(activity), labels=_finish(labels))


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    """Sort by entity then time; times become ISO-8601 strings (the spec's `string` type)."""
    order = np.lexsort((df[TIME].to_numpy(), df[ENTITY].to_numpy()))
    df = df.take(order).reset_index(drop=True)
    times = np.datetime_as_string(df[TIME].to_numpy().astype("datetime64[s]"), unit="s")
    df[TIME] = np.char.add(times, "Z")
    return df


def time_split(labels: pd.DataFrame, holdout: float = 0.25) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on the earlier period, validate on the later one (no shuffling across time)."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be between 0 and 1, got {holdout}")
    times = pd.to_datetime(labels[TIME], utc=True)
    cutoff = times.quantile(1 - holdout)
    later = times > cutoff
    return labels[~later].reset_index(drop=True), labels[later].reset_index(drop=True)
