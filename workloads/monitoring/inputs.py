"""Features of image and text inputs: what the baseline and the monitor compare for models
whose input is not a table.

A tabular model's baseline describes its columns; an image or a text is described by a few
numbers derived from it, computed by the same functions at training time (the task's
`baseline`, over the validation set) and in the monitor (over each captured request), so
drift and data quality are reported for them exactly as for table columns:

- image (`image_features`): `image_width`, `image_height` (pixels, as sent),
  `image_brightness` (mean gray level 0-255), `image_contrast` (the gray levels' standard
  deviation), `image_mode` (Pillow's mode as sent: L, RGB, RGBA, P... which says the
  channels), `image_format` (PNG, JPEG). Brightness and contrast are measured on the image
  reduced to at most `STATS_SIDE` pixels a side (a 12-Mpx photo costs milliseconds), and
  only for images within the serving decoder's pixel limit.
- text (`TextFeatures`, with the model's trained tokenizer): `text_chars`, `text_tokens`
  (before truncation), `text_unknown_share` (the tokens that are the tokenizer's unknown
  token), `text_oov_share` (the words, as the tokenizer splits words, that are not one entry
  of its vocabulary), `text_truncated` (1 when the text is longer than the model reads).

The baseline names its kind in `"inputs"` (`input_spec`); `extractor` builds the monitor's
function from it and the model folder (the text kind names the files it needs,
`tokenizer.json`, which the scheduled monitor fetches with the baseline). An input that
cannot be read gives missing values, which data quality reports.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from workloads.monitoring.baseline import (
    FORMAT,
    BaselineError,
    categorical_entry,
    numeric_entry,
    prediction_entry,
)

IMAGE_FEATURES = (
    "image_width",
    "image_height",
    "image_brightness",
    "image_contrast",
    "image_mode",
    "image_format",
)
TEXT_FEATURES = (
    "text_chars",
    "text_tokens",
    "text_unknown_share",
    "text_oov_share",
    "text_truncated",
)
CATEGORICAL_FEATURES = ("image_mode", "image_format")  # the others are numbers
STATS_SIDE = 256
MAX_PIXELS = 36_000_000  # the serving decoder's limit (decompression bomb guard)
KINDS = ("image", "text")

Derive = Callable[[list], list[dict[str, Any]]]


class InputSpecError(BaselineError):
    """A baseline's `inputs` that cannot be used; the message names the field."""


# --- images -------------------------------------------------------------------------------


def image_features(data: bytes | Path) -> dict[str, Any]:
    """The image's features (see the module docstring): all None when it is no image; the
    size, mode and format alone when its pixels cannot be decoded (truncated, too large)."""
    from PIL import Image

    source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    with warnings.catch_warnings():
        # Only the header is read before the size check below; Pillow's own guard is moot.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except (Image.DecompressionBombError, OSError, SyntaxError, ValueError):
            return dict.fromkeys(IMAGE_FEATURES)
        with img:
            width, height = img.size
            out: dict[str, Any] = {
                "image_width": width,
                "image_height": height,
                "image_mode": img.mode,
                "image_format": img.format,
                "image_brightness": None,
                "image_contrast": None,
            }
            if width * height > MAX_PIXELS:
                return out
            try:
                img.draft("L", (STATS_SIDE, STATS_SIDE))  # JPEG: decode at a reduced scale
                gray = img.convert("L")
                gray.thumbnail((STATS_SIDE, STATS_SIDE))
            except (Image.DecompressionBombError, OSError, SyntaxError, ValueError):
                return out
    pixels = np.asarray(gray, dtype=np.float64)
    out["image_brightness"] = round(float(pixels.mean()), 4)
    out["image_contrast"] = round(float(pixels.std()), 4)
    return out


def _image_bytes(value: Any) -> bytes | None:
    """An image as captured: raw bytes (an image body), or base64 text (a JSON instance's
    `image`, a CSV row's one value)."""
    if isinstance(value, dict):
        value = value.get("image")
    elif isinstance(value, list | tuple):
        value = value[0] if len(value) == 1 else None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


def derive_images(inputs: list) -> list[dict[str, Any]]:
    out = []
    for value in inputs:
        data = _image_bytes(value)
        out.append(dict.fromkeys(IMAGE_FEATURES) if data is None else image_features(data))
    return out


# --- texts --------------------------------------------------------------------------------


class TextFeatures:
    """Text features against a trained `tokenizers.Tokenizer` (its unknown token and its
    vocabulary) and the model's maximum length in tokens."""

    def __init__(self, tokenizer: Any, max_length: int, unknown: str = "[UNK]") -> None:
        self.tok, self.max_length = tokenizer, max_length
        self.unknown_id = tokenizer.token_to_id(unknown)
        self.vocab = tokenizer.get_vocab()

    def _words(self, text: str) -> list[str]:
        tok = self.tok
        if tok.normalizer is not None:
            text = tok.normalizer.normalize_str(text)
        if tok.pre_tokenizer is None:
            return text.split()
        return [word for word, _ in tok.pre_tokenizer.pre_tokenize_str(text)]

    def features(self, texts: list[Any]) -> list[dict[str, Any]]:
        """One feature dict per text; a value that is not a text gets missing values."""
        valid = [i for i, t in enumerate(texts) if isinstance(t, str)]
        encoded = self.tok.encode_batch([texts[i] for i in valid]) if valid else []
        out: list[dict[str, Any]] = [dict.fromkeys(TEXT_FEATURES) for _ in texts]
        for i, enc in zip(valid, encoded, strict=True):
            text, ids = texts[i], enc.ids
            words = self._words(text)
            oov = sum(1 for w in words if w not in self.vocab)
            unknown = sum(1 for t in ids if t == self.unknown_id)
            out[i] = {
                "text_chars": len(text),
                "text_tokens": len(ids),
                "text_unknown_share": round(unknown / len(ids), 6) if ids else 0.0,
                "text_oov_share": round(oov / len(words), 6) if words else 0.0,
                "text_truncated": int(len(ids) > self.max_length),
            }
        return out


def _text_of(value: Any, column: str) -> Any:
    if isinstance(value, dict):
        return value.get("text", value.get(column))
    if isinstance(value, list | tuple):
        return value[0] if len(value) == 1 else None
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return None
    return value


# --- the baseline's `inputs` and the monitor's extractor ----------------------------------


def input_spec(kind: str, **fields: Any) -> dict[str, Any]:
    """The baseline's `inputs` entry: `{"kind": "image"}` or `{"kind": "text",
    "text_column": ..., "max_length": ..., "tokenizer": "tokenizer.json", "files": [...]}`."""
    if kind not in KINDS:
        raise InputSpecError(f"inputs.kind {kind!r}: allowed {list(KINDS)}")
    spec: dict[str, Any] = {"kind": kind, **fields}
    if kind == "text":
        spec["files"] = [fields["tokenizer"]]
    return spec


def model_files(baseline: dict[str, Any]) -> list[str]:
    """The artifact files (plain names) the monitor needs besides baseline.json."""
    spec = baseline.get("inputs") or {}
    files = spec.get("files", [])
    if not isinstance(files, list) or not all(
        isinstance(f, str) and f and "/" not in f and "\\" not in f and f not in (".", "..")
        for f in files
    ):
        raise InputSpecError(
            f"baseline inputs.files {files!r}: expected a list of file names in the artifact"
        )
    return files


def extractor(baseline: dict[str, Any], model_dir: str | Path) -> Derive | None:
    """The function turning a captured request's inputs into feature rows, or None when the
    baseline's features are the request's own columns (tabular)."""
    spec = baseline.get("inputs")
    if not spec:
        return None
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "image":
        return derive_images
    if kind != "text":
        raise InputSpecError(f"baseline inputs.kind {kind!r}: allowed {list(KINDS)}")
    model_files(baseline)
    path = Path(model_dir) / str(spec.get("tokenizer", ""))
    if not path.is_file():
        raise InputSpecError(
            f"{path}: the text model's tokenizer is missing (baseline inputs.tokenizer); "
            "the monitor needs it for the out-of-vocabulary share"
        )
    from tokenizers import Tokenizer

    try:
        features = TextFeatures(Tokenizer.from_file(str(path)), int(spec["max_length"]))
    except Exception as exc:  # tokenizers raises plain Exceptions
        raise InputSpecError(f"{path}: cannot load the tokenizer: {exc}") from None
    column = str(spec.get("text_column", "text"))

    def derive_texts(inputs: list) -> list[dict[str, Any]]:
        return features.features([_text_of(v, column) for v in inputs])

    return derive_texts


def features_baseline(
    task: str, rows: list[dict[str, Any]], predictions: list, inputs: dict[str, Any]
) -> dict[str, Any]:
    """A baseline of derived features (`rows`, one dict per validation example), the
    prediction distribution, and the `inputs` spec the monitor derives them again with."""
    names = IMAGE_FEATURES if inputs["kind"] == "image" else TEXT_FEATURES
    features = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if name in CATEGORICAL_FEATURES:
            features[name] = categorical_entry(values)
        else:
            numbers = [np.nan if v is None else float(v) for v in values]
            features[name] = numeric_entry(np.asarray(numbers, dtype=np.float64))
    return {
        "format": FORMAT,
        "task": task,
        "rows": len(rows),
        "inputs": inputs,
        "features": features,
        "prediction": prediction_entry(predictions),
    }
