"""The text models: a small Transformer encoder trained from scratch, and an embedding bag.

Both take token ids (n, length) padded with id 0 and return class logits.
"""

from __future__ import annotations

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


class TextBag(nn.Module):
    """The mean of the token embeddings (padding left out) and a linear head (fastText-like)."""

    def __init__(self, vocab: int, classes: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab, dim, mode="mean", padding_idx=PAD_ID)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(ids)))


def build_text_model(kind: str, vocab: int, classes: int, doc: dict) -> nn.Module:
    if kind == "bag":
        return TextBag(vocab, classes, doc["dim"], doc["dropout"])
    return TextTransformer(
        vocab, classes, doc["dim"], doc["layers"], doc["heads"], doc["max_length"], doc["dropout"]
    )
