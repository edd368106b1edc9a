"""Image decoding shared by training and serving, and the image predictor.

Training and serving turn bytes into model input with the same function (`decode_image`):
decoded with Pillow, converted to the model's mode (grayscale/RGBA/palette images are
converted, not refused), and its centre square resized to `size` (as resizing the shorter
side to `size` and cropping the centre would, without resampling what is cropped away).
Pillow's decompression-bomb guard is tightened to `MAX_PIXELS`, checked from the header
before any pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from workloads.training.tasks.base import InputError, check_batch
from workloads.training.tasks.classify import check_row, format_predictions
from workloads.training.tasks.image.model import ResNetSmall

SUFFIXES = (".png", ".jpg", ".jpeg")
# What one image may decode to: 6000x6000 (36 Mpx), well under Pillow's own 89 Mpx guard.
MAX_PIXELS = 36_000_000
CONTENT_TYPES = ("image/png", "image/jpeg", "application/x-image")


class ImageDecodeError(InputError):
    """Bytes that are not a usable image; the message says why."""


def decode_image(data: bytes | Path, mode: str, size: int) -> np.ndarray:
    """uint8 array (channels, size, size) of a PNG/JPEG: converted to `mode` ("L" or "RGB"),
    its centre square resized to `size`."""
    if isinstance(data, bytes | bytearray) and not data:
        raise ImageDecodeError("empty image: the body has zero bytes")
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageDecodeError(
                        f"image of {width}x{height} pixels is over the limit of "
                        f"{MAX_PIXELS} pixels (decompression bomb guard)"
                    )
                if img.format not in ("PNG", "JPEG"):
                    raise ImageDecodeError(
                        f"unsupported image format {img.format}: send PNG or JPEG"
                    )
                img.draft(mode, (size, size))  # JPEG: decode at a reduced scale when it can
                img = img.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image too large (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("cannot decode the image: not a PNG or JPEG file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        raise ImageDecodeError(f"cannot decode the image (truncated or corrupt): {exc}") from None
    # Resample only the centred square: resizing the whole image first would allocate
    # size/min(w, h) times its longer side (a 2 kB 1x1000000 PNG: 16x16000000 pixels).
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = img.resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
    )
    array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


def normalise(images: np.ndarray | torch.Tensor, mean: list[float], std: list[float]):
    """uint8 (n, c, h, w) -> float32, per-channel standardised."""
    x = torch.as_tensor(images).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class ImagePredictor:
    """An image classifier as serving and batch scoring use it.

    Inputs: one raw image body (`image/png`, `image/jpeg`, `application/x-image`), or JSON
    instances `{"image": "<base64>"}`, or rows whose one value is an image (bytes or base64).
    """

    content_types = CONTENT_TYPES
    feature_columns = ["image"]
    batch_input_only = ("image",)  # batch scoring: not copied to the output

    def __init__(self, net: ResNetSmall, doc: dict[str, Any]) -> None:
        self.net = net.eval()
        self.classes: list = doc["classes"]
        self.task = "binary" if len(self.classes) == 2 else "multiclass"
        self.mode, self.size = doc["mode"], doc["image_size"]
        self.mean, self.std = doc["mean"], doc["std"]

    def _batch(self, images: list[np.ndarray]) -> np.ndarray:
        return normalise(np.stack(images), self.mean, self.std).numpy()

    def _decode(self, value: Any, where: str) -> np.ndarray:
        if isinstance(value, bytes | bytearray):
            data = bytes(value)
        elif isinstance(value, str):
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"{where}: 'image' is not valid base64") from None
        else:
            raise InputError(
                f"{where}: 'image' must be a base64 string, got {type(value).__name__}"
            )
        try:
            return decode_image(data, self.mode, self.size)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None

    def prepare(self, content_type: str, body: bytes) -> np.ndarray:
        """One raw image body (SageMaker's convention: one image per request)."""
        return self._batch([decode_image(body, self.mode, self.size)])

    def prepare_many(self, content_type: str, bodies: list[bytes]) -> np.ndarray:
        """Several raw image bodies as one batch (the server merges waiting requests)."""
        return self._batch([decode_image(body, self.mode, self.size) for body in bodies])

    def prepare_records(self, records: list) -> np.ndarray:
        check_batch(records, "record")
        images = []
        for i, record in enumerate(records):
            if not isinstance(record, dict) or "image" not in record:
                raise InputError(f'instance {i}: expected {{"image": "<base64 PNG or JPEG>"}}')
            images.append(self._decode(record["image"], f"instance {i}"))
        return self._batch(images)

    def prepare_rows(self, rows: list[list]) -> np.ndarray:
        check_batch(rows, "row")
        images = []
        for i, row in enumerate(rows):
            check_row(row, i, "the image")
            images.append(self._decode(row[0], f"row {i}"))
        return self._batch(images)

    def predict_matrix(self, x: np.ndarray) -> list:
        with torch.inference_mode():
            return format_predictions(self.net(torch.from_numpy(x)), self.classes)

    def batch_frames(self, root: Path):
        return image_frames(root)

    def openapi_content(self) -> dict[str, Any]:
        binary = {"schema": {"type": "string", "format": "binary"}}
        instance = {
            "type": "object",
            "required": ["image"],
            "properties": {"image": {"type": "string", "contentEncoding": "base64"}},
            "description": f"a PNG or JPEG image, resized to {self.size}x{self.size}",
        }
        json_body = {
            "type": "object",
            "required": ["instances"],
            "properties": {"instances": {"type": "array", "minItems": 1, "items": instance}},
        }
        return {"application/json": {"schema": json_body}} | {t: binary for t in CONTENT_TYPES}


def image_frames(root: Path, chunk: int = 4096):
    """Batch scoring input: every PNG/JPEG under `root` (a file or a folder), in chunks of
    (source, frame with `file` relative to `root` and the `image` bytes)."""
    import pandas as pd

    from workloads.training.data import DataError

    if root.is_file():
        files, base = [root], root.parent
    else:
        if not root.is_dir():
            raise DataError(f"input {root} does not exist")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        base = root
    if not files:
        raise DataError(f"no {', '.join(SUFFIXES)} files in {root}")
    for start in range(0, len(files), chunk):
        part = files[start : start + chunk]
        names = [str(p.relative_to(base)) for p in part]
        frame = pd.DataFrame({"file": names, "image": [p.read_bytes() for p in part]})
        yield str(root), frame
