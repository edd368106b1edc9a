"""The vision and NLP teams' reference workloads for the local pipeline (`mlinfra pipeline
--workload defects|tickets`): their data, training hyperparameters and sample requests.

Churn (the default) goes through the feature store; these two train straight from the files
the generators write into the raw bucket, on the teams' own stacks (`vision-dev`, `nlp-dev`:
their model groups, gates and endpoints), which the local backend stands up like any other.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from workloads.local.defects import CLASSES, generate_defects, write_image_folder
from workloads.local.tickets import TARGET, TEXT, generate_tickets
from workloads.storage import atomic_path, atomic_write

SAMPLES = 5


class Reference:
    """One reference workload: where its data goes, how it trains, what a sample shows."""

    name: ClassVar[str]
    stack: ClassVar[str]  # the team's stack the pipeline runs on by default
    summary: ClassVar[str]

    def write_data(self, folder: Path, rows: int, seed: int) -> tuple[Path, Path, int, int]:
        """Generate once into `folder`: (train channel, validation channel, rows of each)."""
        raise NotImplementedError

    def hyperparameters(self, epochs: int, seed: int) -> dict[str, Any]:
        raise NotImplementedError

    def samples(self, validation: Path) -> tuple[list[str], list[list[str]], dict, list]:
        """(table columns, their cells, the JSON request, the true labels)."""
        raise NotImplementedError


class Defects(Reference):
    name = "defects"
    stack = "vision-dev"
    summary = "surface images (ok, scratch, pit, crack), 32x32 grayscale PNG"

    def write_data(self, folder: Path, rows: int, seed: int) -> tuple[Path, Path, int, int]:
        n_val = max(len(CLASSES), rows // 5)
        train, validation = folder / "train", folder / "validation"
        if not (folder / "done").is_file():
            images, labels = generate_defects(rows + n_val, size=32, seed=seed)
            for target, part in ((train, slice(0, rows)), (validation, slice(rows, None))):
                with atomic_path(target) as tmp:
                    write_image_folder(Path(tmp), images[part], labels[part], CLASSES)
            atomic_write(folder / "done", "")
        return train, validation, rows, n_val

    def hyperparameters(self, epochs: int, seed: int) -> dict[str, Any]:
        return {"task": "image", "image_size": 32, "width": 8, "stages": 2,
                "epochs": epochs, "seed": seed, "patience": 5}  # fmt: skip

    def samples(self, validation: Path) -> tuple[list[str], list[list[str]], dict, list]:
        per_class = [sorted((validation / c).glob("*.png"))[:2] for c in CLASSES]
        files = [f for pair in zip(*per_class, strict=False) for f in pair][:SAMPLES]
        encoded = [base64.b64encode(f.read_bytes()).decode() for f in files]
        request = {"instances": [{"image": e} for e in encoded]}
        cells = [[f"{f.parent.name}/{f.name}"] for f in files]
        return ["file"], cells, request, [f.parent.name for f in files]


class Tickets(Reference):
    name = "tickets"
    stack = "nlp-dev"
    summary = "support tickets in 5 categories"

    def write_data(self, folder: Path, rows: int, seed: int) -> tuple[Path, Path, int, int]:
        n_val = max(10, rows // 5)
        train, validation = folder / "train", folder / "validation"
        if not (validation / "validation.csv").is_file():
            frame = generate_tickets(rows + n_val, seed=seed)
            atomic_write(train / "train.csv", lambda p: frame.iloc[:rows].to_csv(p, index=False))
            atomic_write(
                validation / "validation.csv", lambda p: frame.iloc[rows:].to_csv(p, index=False)
            )
        return train, validation, rows, n_val

    def hyperparameters(self, epochs: int, seed: int) -> dict[str, Any]:
        return {"task": "text", "target": TARGET, "vocab_size": 2000, "dim": 64, "heads": 4,
                "layers": 2, "epochs": epochs, "seed": seed}  # fmt: skip

    def samples(self, validation: Path) -> tuple[list[str], list[list[str]], dict, list]:
        frame = pd.read_csv(validation / "validation.csv", nrows=SAMPLES)
        texts = frame[TEXT].tolist()
        request = {"instances": [{"text": t} for t in texts]}
        short = [[t if len(t) <= 60 else t[:57] + "..."] for t in texts]
        return ["text"], short, request, frame[TARGET].tolist()


REFERENCES: dict[str, Reference] = {r.name: r for r in (Defects(), Tickets())}
