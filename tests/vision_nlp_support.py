"""Small data for the image and text task tests, and the hyperparameters that keep their
models tiny (a 2-core machine shared by several developers)."""

from __future__ import annotations

from pathlib import Path

from workloads.local.defects import write_defects
from workloads.local.tickets import generate_tickets

TINY_HP = {
    "image": ["task=image", "image_size=16", "width=4", "stages=2", "batch_size=8"],
    "text": [
        "task=text",
        "target=category",
        "vocab_size=300",
        "dim=16",
        "heads=2",
        "layers=1",
        "batch_size=8",
    ],
}


def tiny_data(task: str, folder: Path, rows: int = 160, seed: int = 0) -> Path:
    """A channel for `task`: a defects image folder (16 px) or a tickets CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    if task == "image":
        return write_defects(folder / "images", rows, size=16, seed=seed)
    path = folder / "tickets.csv"
    generate_tickets(rows, seed=seed).to_csv(path, index=False)
    return path


def hp_args(task: str, *extra: str) -> list[str]:
    out: list[str] = []
    for item in [*TINY_HP[task], *extra]:
        out += ["--hp", item]
    return out
