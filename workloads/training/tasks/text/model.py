"""The text models: a small Transformer encoder trained from scratch, and a bag of n-grams.

Both take token ids (n, length) padded with id 0 and return class logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

PAD_ID = 0


class TextTransformer(nn.Module):
    """Token and learned position embeddings, pre-norm Transformer encoder layers, the mean
    of the non-padding positions, a linear head."""

    def __init__(
        self,
        vocab: int,
        classes: int,
        dim: int,
        layers: int,
        heads: int,
        max_length: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD_ID)
        self.position = nn.Embedding(max_length, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == PAD_ID
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)[None]
        x = self.encoder(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.head(self.drop(self.norm(pooled)))


def bigram_keys(ids: np.ndarray | torch.Tensor, vocab: int):
    """The key of each pair of adjacent tokens, `first * vocab + second` (n, length - 1);
    -1 where either is padding."""
    first, second = ids[:, :-1], ids[:, 1:]
    keys = first * vocab + second
    pad = (first == PAD_ID) | (second == PAD_ID)
    if isinstance(keys, torch.Tensor):
        return keys.masked_fill(pad, -1)
    return np.where(pad, -1, keys)


class TextBag(nn.Module):
    """A bag of tokens and token bigrams (fastText-like): each text is the TF-IDF weighted,
    L2-normalised sum of its features' embeddings, then dropout and a linear head.

    The bigram vocabulary (`gram_keys`, sorted bigram keys seen in training) and the inverse
    document frequencies (`idf`, tokens then bigrams) are fitted on the training texts and
    travel in the state dict; a bigram not in the vocabulary is left out. With `dim` at
    least the number of classes it can express any linear model on TF-IDF n-grams.
    """

    def __init__(self, vocab: int, classes: int, dim: int, dropout: float, grams: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.EmbeddingBag(vocab + grams, dim, mode="sum", padding_idx=PAD_ID)
        nn.init.normal_(self.embed.weight, std=0.1)
        self.register_buffer("gram_keys", torch.zeros(grams, dtype=torch.long))
        self.register_buffer("idf", torch.ones(vocab + grams))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids and, after them, the ids of the known bigrams (padding: 0)."""
        grams = len(self.gram_keys)
        if not grams or ids.shape[1] < 2:
            return ids
        keys = bigram_keys(ids, self.vocab)
        at = torch.searchsorted(self.gram_keys, keys).clamp(max=grams - 1)
        known = (self.gram_keys[at] == keys) & (keys >= 0)
        return torch.cat([ids, torch.where(known, at + self.vocab, PAD_ID)], dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        feats = self.features(ids)
        weights = self.idf[feats].masked_fill(feats == PAD_ID, 0.0)
        weights = weights / weights.norm(dim=1, keepdim=True).clamp(min=1e-6)
        return self.head(self.drop(self.embed(feats, per_sample_weights=weights)))


def build_text_model(kind: str, vocab: int, classes: int, doc: dict) -> nn.Module:
    if kind == "bag":
        return TextBag(vocab, classes, doc["dim"], doc["dropout"], doc.get("grams", 0))
    return TextTransformer(
        vocab, classes, doc["dim"], doc["layers"], doc["heads"], doc["max_length"], doc["dropout"]
    )
