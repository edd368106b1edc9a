"""The NLP team's reference workload: support-ticket texts in several categories,
deterministic for a given seed.

Categories share much of their vocabulary (every ticket talks about an account, an order, a
payment or the app, whatever it is about), tickets mention a second topic in passing
("my invoice is fine, but ...") and a small share is labelled by a tired agent (label noise),
so no single word gives the class away and no model reaches 100 %.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CATEGORIES = ("billing", "technical", "account", "shipping", "cancellation")
TEXT, TARGET = "text", "category"

_TOPIC = {
    "billing": [
        "i was charged twice for my {thing}",
        "the invoice for my {thing} shows the wrong amount",
        "please refund the extra charge on my card",
        "my payment went through but the {thing} still shows unpaid",
        "why did the price of my plan go up this month",
        "the discount code was not applied to my {thing}",
    ],
    "technical": [
        "the app crashes when i open my {thing}",
        "i get an error message when i try to pay for my {thing}",
        "the page keeps loading and never shows my {thing}",
        "sync stopped working after the last update",
        "the website is very slow and times out on the {thing} page",
        "notifications about my {thing} do not arrive on my phone",
    ],
    "account": [
        "i cannot log in to my account since yesterday",
        "please change the email address on my account",
        "i forgot my password and the reset link does not arrive",
        "someone else may have access to my account",
        "how do i add a second user to my {thing}",
        "my account is locked after too many attempts",
    ],
    "shipping": [
        "my {thing} has not arrived yet",
        "the parcel with my {thing} was delivered to the wrong address",
        "tracking shows my {thing} stuck at the depot for a week",
        "the box was damaged and the {thing} inside is broken",
        "can i change the delivery date for my {thing}",
        "the courier never came to pick up the return",
    ],
    "cancellation": [
        "i want to cancel my {thing}",
        "please close my account and stop the subscription",
        "how do i end my contract before the renewal",
        "i no longer need the {thing}, cancel it please",
        "cancel the renewal of my plan, it is too expensive",
        "i would like to terminate my membership today",
    ],
}
_THINGS = ["order", "subscription", "plan", "account", "invoice", "device", "package"]
_OPENERS = ["hi,", "hello team,", "good morning,", "dear support,", "hey,", "", "urgent:"]
_ASIDES = [
    "my invoice looks fine, but",
    "the app works, but",
    "i already logged in again and",
    "the delivery was on time, but",
    "i do not want to cancel, but",
    "after paying by card",
]
_CLOSERS = [
    "thanks.",
    "please help asap.",
    "this is the second time i write.",
    "regards, a long time customer.",
    "can someone call me back?",
    "",
]


def generate_tickets(rows: int, *, seed: int = 0, label_noise: float = 0.05) -> pd.DataFrame:
    """`rows` tickets: columns `text` and `category` (one of CATEGORIES)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(rows):
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        parts = [_OPENERS[rng.integers(len(_OPENERS))]]
        if rng.random() < 0.4:
            parts.append(_ASIDES[rng.integers(len(_ASIDES))])
        sentences = _TOPIC[category]
        for sentence in rng.choice(len(sentences), size=rng.integers(1, 3), replace=False):
            parts.append(sentences[sentence].format(thing=_THINGS[rng.integers(len(_THINGS))]))
        if rng.random() < 0.3:  # a second topic mentioned in passing
            other = CATEGORIES[rng.integers(len(CATEGORIES))]
            parts.append("also, " + _TOPIC[other][rng.integers(6)].format(thing="order"))
        parts.append(_CLOSERS[rng.integers(len(_CLOSERS))])
        if rng.random() < label_noise:
            category = CATEGORIES[rng.integers(len(CATEGORIES))]
        texts.append(" ".join(p for p in parts if p))
        labels.append(category)
    return pd.DataFrame({TEXT: texts, TARGET: labels})
