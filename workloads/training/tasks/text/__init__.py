"""The text task: a text column and a label, a subword tokenizer, a Transformer from scratch.

Data: CSV, Parquet or JSONL with a text column (`text_column`, default `text`) and the label
(`target`). A byte-pair-encoding tokenizer (Hugging Face `tokenizers`) is trained on the training
channel and saved in the artifact (tokenizer.json). The model is a small Transformer encoder
(`model=transformer`) or a bag of token and token-bigram embeddings with TF-IDF weights
(`model=bag`, fastText-like), both trained from scratch: no pretrained weights, nothing
downloaded. `model=auto` (the default) picks the bag below `BAG_BELOW_ROWS` training texts,
where a Transformer from scratch has too little data to beat it (measured in
tests/test_image_text_quality.py), and the Transformer from there on. Training uses label
smoothing (`label_smoothing`, 0.1) and early-stops on the validation log loss. Texts are
truncated to `max_length` tokens; training pads to the longest training text (at most
`max_length`), serving to each batch's longest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from workloads.monitoring.inputs import TextFeatures, features_baseline, input_spec
from workloads.training.data import LABEL_SCALARS, DataError, load_table
from workloads.training.tasks.base import TaskParams
from workloads.training.tasks.classify import (
    ClassificationTask,
    Labelled,
    fit_classes,
    label_tensor,
)
from workloads.training.tasks.text.model import PAD_ID, bigram_keys, build_text_model
from workloads.training.tasks.text.tokens import (
    TextPredictor,
    encode,
    load_tokenizer,
    train_tokenizer,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TextParams", "TextPredictor", "TextTask"]

BAG_BELOW_ROWS = 20_000  # model=auto: the bag below this many training texts


def _refuse_rows(
    location: str,
    column: str,
    values: pd.Series,
    ok: Callable[[Any], bool],
    what: str,
    hint: str = "",
) -> None:
    """A `DataError` naming the first row of `column` whose value is not `ok`, and how many."""
    bad = ~values.map(ok)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.tolist()[row]
        raise DataError(
            f"{location}: column {column!r} row {row} is not {what} ({value!r}, "
            f"{type(value).__name__}){hint}; {int(bad.sum())} such row(s)"
        )


class TextParams(TaskParams):
    target: str = Field(min_length=1)
    text_column: str = Field("text", min_length=1)
    model: Literal["auto", "transformer", "bag"] = "auto"
    vocab_size: int = Field(8000, ge=50, le=200_000)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True
    max_length: int = Field(128, ge=4, le=4096)  # tokens; longer texts are truncated
    dim: int = Field(128, ge=8, le=4096)
    layers: int = Field(2, ge=1, le=24)
    heads: int = Field(4, ge=1, le=64)
    dropout: float = Field(0.1, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)  # of the training loss
    # model=bag: at most this many token bigrams, those in most training texts (seen in at
    # least `min_frequency` texts); 0: tokens only
    max_bigrams: int = Field(100_000, ge=0, le=10_000_000)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> TextParams:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        return self


class TextTask(ClassificationTask):
    name: ClassVar[str] = "text"
    Params = TextParams
    # Early stopping on the validation loss ends most runs well before `epochs`.
    harness_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 50,
        "learning_rate": 1e-3,
        "patience": 5,
    }
    artifact_files: ClassVar[tuple[str, ...]] = ("tokenizer.json", "text.json")
    params: TextParams

    def __init__(self, params: TextParams, settings: Any) -> None:
        super().__init__(params, settings)
        self.tok: Any = None
        self.classes: list = []
        self.seq_len = 0
        self.rows = (0, 0)
        self.kind = params.model
        self.gram_keys = np.zeros(0, dtype=np.int64)
        self.idf = np.ones(0, dtype=np.float32)

    # -- data -------------------------------------------------------------------------

    def read_channel(self, location: str) -> Labelled:
        frame = load_table(location)
        p = self.params
        missing = [c for c in (p.text_column, p.target) if c not in frame.columns]
        if missing:
            raise DataError(
                f"{location}: column(s) {missing} not found (text_column={p.text_column!r}, "
                f"target={p.target!r}); columns are {list(frame.columns)}"
            )
        texts, labels = frame[p.text_column], frame[p.target]
        _refuse_rows(location, p.text_column, texts, lambda t: isinstance(t, str), "a text")
        # JSONL lists and objects, Parquet bytes, dates, decimals: not a class (nor JSON)
        _refuse_rows(
            location,
            p.target,
            labels,
            lambda v: v is None or isinstance(v, LABEL_SCALARS),
            "a class label",
            ": a label is a string, an integer, a float or a boolean",
        )
        keep = labels.notna().to_numpy() & texts.str.strip().astype(bool).to_numpy()
        if not keep.any():
            raise DataError(f"{location}: no rows with both a text and a {p.target!r} label")
        return Labelled(texts[keep].tolist(), labels[keep].tolist(), str(location))

    def fit_preprocessing(self, train: Labelled, validation: Labelled) -> None:
        p = self.params
        self.classes = fit_classes(train, validation)
        self.tok = train_tokenizer(train.items, p.vocab_size, p.min_frequency, p.lowercase)
        lengths = [len(e.ids) for e in self.tok.encode_batch(train.items)]
        self.seq_len = max(1, min(p.max_length, max(lengths)))
        self.rows = (len(train), len(validation))
        if p.model == "auto":
            self.kind = "bag" if len(train) < BAG_BELOW_ROWS else "transformer"
        if self.kind == "bag":
            ids = encode(self.tok, train.items, self.seq_len, self.seq_len)
            self.gram_keys, self.idf = fit_ngrams(
                ids, self.tok.get_vocab_size(), p.min_frequency, p.max_bigrams
            )

    def datasets(self, train: Labelled, validation: Labelled) -> tuple[Dataset, Dataset]:
        return tuple(  # type: ignore[return-value]
            TensorDataset(
                torch.from_numpy(encode(self.tok, part.items, self.seq_len, self.seq_len)),
                label_tensor(part.labels, self.classes),
            )
            for part in (train, validation)
        )

    # -- model ------------------------------------------------------------------------

    def _doc(self) -> dict[str, Any]:
        p = self.params
        return {
            "classes": self.classes,
            "model": self.kind,
            "vocab": self.tok.get_vocab_size(),
            "grams": len(self.gram_keys),
            "max_length": self.seq_len,
            "text_column": p.text_column,
            "dim": p.dim,
            "layers": p.layers,
            "heads": p.heads,
            "dropout": p.dropout,
        }

    def build_model(self) -> nn.Module:
        doc = self._doc()
        net = build_text_model(doc["model"], doc["vocab"], len(self.classes), doc)
        if self.kind == "bag":  # the fitted n-gram vocabulary and weights
            net.gram_keys.copy_(torch.from_numpy(self.gram_keys))
            net.idf.copy_(torch.from_numpy(self.idf))
        return net

    def compute_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        ids, y = batch
        return nn.functional.cross_entropy(
            model(ids), y, label_smoothing=self.params.label_smoothing
        )

    # -- run identity and reporting ------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        vocab = json.dumps(sorted(self.tok.get_vocab().items())).encode()
        return {
            "classes": self.classes,
            "vocab": hashlib.sha256(vocab).hexdigest()[:16],
            "seq_len": self.seq_len,
            "n": self.rows[0],
            "model": self.kind,
            "grams": len(self.gram_keys),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "classes": len(self.classes),
            "model": self.kind,
            "vocab": self.tok.get_vocab_size() if self.tok else 0,
            "bigrams": len(self.gram_keys),
            "sequence_length": self.seq_len,
            "train_rows": self.rows[0],
            "validation_rows": self.rows[1],
        }

    # -- monitoring -------------------------------------------------------------------

    def baseline(self, validation: Labelled, predictions: list) -> dict[str, Any]:
        """Per validation text its length in characters and tokens, the unknown-token and
        out-of-vocabulary shares under the trained tokenizer and whether it is truncated
        (as the monitor measures captured texts), and the predictions' distribution."""
        rows = TextFeatures(self.tok, self.seq_len).features(validation.items)
        spec = input_spec(
            "text",
            text_column=self.params.text_column,
            max_length=self.seq_len,
            tokenizer="tokenizer.json",
        )
        return features_baseline(self.name, rows, predictions, spec)

    # -- artifact ---------------------------------------------------------------------

    def save(self, directory: Path, model: nn.Module) -> dict[str, Any]:
        self.tok.save(str(directory / "tokenizer.json"))
        doc = self._doc()
        (directory / "text.json").write_text(json.dumps(doc, indent=2))
        return {
            "problem": self.problem,
            "classes": self.classes,
            "target": self.params.target,
            "feature_columns": [self.params.text_column],
        }

    @classmethod
    def load_predictor(cls, directory: Path, meta: dict[str, Any]) -> TextPredictor:
        doc = json.loads((directory / "text.json").read_text())
        net = build_text_model(doc["model"], doc["vocab"], len(doc["classes"]), doc)
        net.load_state_dict(
            torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        )
        return TextPredictor(net, load_tokenizer(directory / "tokenizer.json"), doc)


def fit_ngrams(
    ids: np.ndarray, vocab: int, min_frequency: int, max_bigrams: int
) -> tuple[np.ndarray, np.ndarray]:
    """The bag's bigram vocabulary and inverse document frequencies from the training token
    ids (n, length): the sorted keys of the `max_bigrams` bigrams in most texts (at least
    `min_frequency`), and the smoothed idf, ln((1 + n) / (1 + df)) + 1 as scikit-learn's
    TfidfVectorizer, of every token and then of every kept bigram."""
    n = len(ids)
    token_df = np.zeros(vocab, dtype=np.int64)
    rows = np.repeat(np.arange(n), ids.shape[1])
    pairs = np.unique(np.stack([rows, ids.ravel()]), axis=1)
    np.add.at(token_df, pairs[1], 1)
    keys = bigram_keys(ids, vocab)
    keys = np.unique(np.stack([np.repeat(np.arange(n), keys.shape[1]), keys.ravel()]), axis=1)
    keys = keys[1][keys[1] >= 0]
    gram, gram_df = np.unique(keys, return_counts=True)
    keep = gram_df >= min_frequency
    gram, gram_df = gram[keep], gram_df[keep]
    if len(gram) > max_bigrams:  # the most frequent; ties by key, deterministic
        top = np.sort(np.lexsort((gram, -gram_df))[:max_bigrams])
        gram, gram_df = gram[top], gram_df[top]
    df = np.concatenate([token_df, gram_df])
    idf = np.log((1 + n) / (1 + df)) + 1
    idf[PAD_ID] = 0.0
    return gram.astype(np.int64), idf.astype(np.float32)
