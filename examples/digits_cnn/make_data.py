"""Write scikit-learn's bundled 8x8 digits as train/validation/test CSVs (needs scikit-learn).

python -m examples.digits_cnn.make_data OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd


def make_data(out: Path, seed: int = 0) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"p{i}" for i in range(64)])
    frame["label"] = digits.target
    order = np.random.default_rng(seed).permutation(len(frame))
    parts = {"train": order[:1200], "validation": order[1200:1500], "test": order[1500:]}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in parts.items():
        paths[name] = out / f"{name}.csv"
        frame.iloc[rows].to_csv(paths[name], index=False)
    return paths


if __name__ == "__main__":
    for name, path in make_data(Path(sys.argv[1] if len(sys.argv) > 1 else "digits")).items():
        print(f"{name}: {path}")
