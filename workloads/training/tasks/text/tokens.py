"""The subword tokenizer (Hugging Face `tokenizers`, byte-pair encoding trained on the
training channel, saved in the artifact as tokenizer.json) and the text predictor.

BPE rather than WordPiece: the `tokenizers` WordPiece trainer gives a different vocabulary on
every run (checked with 0.23), BPE the same one, which every DDP rank and a resumed run need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch import nn

from workloads.training.tasks.base import InputError, check_batch
from workloads.training.tasks.classify import check_row, format_predictions
from workloads.training.tasks.text.model import PAD_ID

PAD, UNK = "[PAD]", "[UNK]"


def train_tokenizer(
    texts: list[str], vocab_size: int, min_frequency: int, lowercase: bool
) -> Tokenizer:
    """A BPE tokenizer fitted on `texts` (deterministic: the same texts give the same
    vocabulary on every rank and in every run). [PAD] is id 0, [UNK] id 1."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, UNK],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def encode(tok: Tokenizer, texts: list[str], max_length: int, width: int | None = None):
    """Token ids (n, width) padded with 0, each text truncated to `max_length` tokens (never
    an error); `width` None: the longest text's length. An empty encoding becomes [UNK]."""
    encoded = [e.ids[:max_length] or [tok.token_to_id(UNK)] for e in tok.encode_batch(texts)]
    width = width or max(len(ids) for ids in encoded)
    out = np.full((len(encoded), width), PAD_ID, dtype=np.int64)
    for i, ids in enumerate(encoded):
        ids = ids[:width]
        out[i, : len(ids)] = ids
    return out


def pad_batch(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate requests' token id arrays, padding them to the widest."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.shape[1] for p in parts)
    out = np.full((sum(len(p) for p in parts), width), PAD_ID, dtype=np.int64)
    row = 0
    for p in parts:
        out[row : row + len(p), : p.shape[1]] = p
        row += len(p)
    return out


class TextPredictor:
    """A text classifier as serving and batch scoring use it.

    JSON instances `{"text": "..."}`; CSV rows or batch-scoring rows of one value, the text.
    An empty or non-string text is refused; a text over the model's maximum is truncated.
    """

    content_types: tuple[str, ...] = ()

    def __init__(self, net: nn.Module, tok: Tokenizer, doc: dict[str, Any]) -> None:
        self.net, self.tok = net.eval(), tok
        self.classes: list = doc["classes"]
        self.task = "binary" if len(self.classes) == 2 else "multiclass"
        self.max_length = doc["max_length"]
        self.text_column = doc["text_column"]
        self.feature_columns = [self.text_column]

    def _texts(self, values: list[Any], what: str) -> np.ndarray:
        for i, value in enumerate(values):
            if not isinstance(value, str):
                kind = "null" if value is None else type(value).__name__
                raise InputError(f"{what} {i}: the text must be a string, got {kind}")
            if not value.strip():
                raise InputError(f"{what} {i}: the text is empty")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate: the tokenizer takes UTF-8
                raise InputError(
                    f"{what} {i}: the text is not valid Unicode "
                    f"({exc.object[exc.start]!r} at character {exc.start})"
                ) from None
        return encode(self.tok, values, self.max_length)

    def prepare_records(self, records: list) -> np.ndarray:
        check_batch(records, "record")
        texts = []
        for i, record in enumerate(records):
            key = "text" if isinstance(record, dict) and "text" in record else self.text_column
            if not isinstance(record, dict) or key not in record:
                raise InputError(f'instance {i}: expected {{"text": "..."}}')
            texts.append(record[key])
        return self._texts(texts, "instance")

    def prepare_rows(self, rows: list[list]) -> np.ndarray:
        check_batch(rows, "row")
        for i, row in enumerate(rows):
            check_row(row, i, "the text")
        return self._texts([row[0] for row in rows], "row")

    collate = staticmethod(pad_batch)

    def predict_matrix(self, x: np.ndarray) -> list:
        with torch.inference_mode():
            return format_predictions(self.net(torch.from_numpy(x)), self.classes)

    def batch_frames(self, root: Path):
        """Batch scoring of a `.txt` file (one text per line, blank lines skipped); None for
        a table (read as training reads it)."""
        if root.suffix.lower() != ".txt":
            return None
        import pandas as pd

        from workloads.training.data import DataError

        data = root.read_bytes()
        try:
            text = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise DataError(
                f"{root}: line {line} is not UTF-8 text (byte {data[exc.start]:#04x} at "
                f"offset {exc.start}); save the file as UTF-8"
            ) from None
        lines = [line for line in text.splitlines() if line.strip()]
        return iter([(str(root), pd.DataFrame({self.text_column: lines}))])

    def openapi_content(self) -> dict[str, Any]:
        instance = {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string", "minLength": 1}},
            "description": f"a text; longer than {self.max_length} tokens is truncated",
        }
        body = {
            "type": "object",
            "required": ["instances"],
            "properties": {"instances": {"type": "array", "minItems": 1, "items": instance}},
        }
        csv = {"type": "string", "description": "one text per row (a quoted CSV field)"}
        return {"application/json": {"schema": body}, "text/csv": {"schema": csv}}


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))
