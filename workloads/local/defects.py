"""The vision team's reference workload: small grayscale surface images, with and without
defects, deterministic for a given seed.

Classes: `ok`, `scratch` (a thin straight line), `pit` (one to three small dark spots) and
`crack` (a dark jagged path). Every image has a random surface texture (smooth blotches and
fine grain), sensor noise, and an exposure change (gain, offset and a brightness gradient), and
a defect may be faint, short or at any place and angle, so the task is not trivial: a linear
model on raw pixels does poorly, a small CNN well.

`write_defects(folder, n)` writes the ImageFolder layout the image task reads
(`<folder>/<class>/<index>.png`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("ok", "scratch", "pit", "crack")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.normal(0, 1, (size // 8 + 2, size // 8 + 2))
    # bilinear upsampling of a coarse grid: smooth blotches
    idx = np.linspace(0, coarse.shape[0] - 1.001, size)
    i0, f = idx.astype(int), idx - idx.astype(int)
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    smooth = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return 0.06 * smooth + 0.03 * rng.normal(0, 1, (size, size))


def _segment(canvas: np.ndarray, p0, p1, depth: float, width: float) -> None:
    size = canvas.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
    dist = np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))
    canvas += depth * np.exp(-((dist / width) ** 2))


def _defect(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    canvas = np.zeros((size, size))
    if kind == "scratch":
        start = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.35, 0.8) * size
        end = start + length * np.array([np.sin(angle), np.cos(angle)])
        sign = rng.choice([-1.0, 1.0])
        _segment(canvas, start, end, sign * rng.uniform(0.12, 0.3), rng.uniform(0.5, 0.9))
    elif kind == "pit":
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(3, size - 3, 2)
            radius = rng.uniform(0.9, 2.0)
            spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2)
            canvas -= rng.uniform(0.15, 0.35) * spot
    elif kind == "crack":
        point = rng.uniform(size * 0.2, size * 0.8, 2)
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(rng.integers(4, 8)):
            heading += rng.normal(0, 0.7)
            step = rng.uniform(2, 5) * np.array([np.sin(heading), np.cos(heading)])
            nxt = point + step
            _segment(canvas, point, nxt, -rng.uniform(0.15, 0.3), rng.uniform(0.5, 0.8))
            point = nxt
    return canvas


def generate_defects(n: int, *, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 images (n, size, size) and their class indices into CLASSES, balanced."""
    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, size, size), dtype=np.uint8)
    ramp = np.linspace(-1, 1, size)
    for i, label in enumerate(labels):
        surface = 0.5 + _texture(rng, size)
        if label:
            surface += _defect(rng, CLASSES[label], size)
        angle = rng.uniform(0, 2 * np.pi)
        gradient = rng.uniform(0, 0.15) * (
            np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
        )
        exposed = rng.uniform(0.7, 1.3) * (surface + gradient) + rng.uniform(-0.15, 0.15)
        noisy = exposed + rng.normal(0, 0.03, (size, size))
        images[i] = np.clip(noisy * 255, 0, 255).astype(np.uint8)
    return images, labels


def write_image_folder(folder: Path, images: np.ndarray, labels: np.ndarray, classes) -> Path:
    """Write uint8 images (n, h, w) as PNGs into `<folder>/<class>/<index>.png`."""
    from PIL import Image

    for name in classes:
        (folder / str(name)).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / str(classes[label]) / f"{i:06d}.png")
    return folder


def write_defects(folder: Path, n: int, *, size: int = 32, seed: int = 0) -> Path:
    images, labels = generate_defects(n, size=size, seed=seed)
    return write_image_folder(Path(folder), images, labels, CLASSES)
