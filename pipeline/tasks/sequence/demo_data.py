"""The embedded sequence competition: each digit scan read row by row as an 8-channel series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

from pipeline.core.files import write_csv


def write_digit_series_competition(root: str | Path, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """A sequence competition from the same scans: each digit read top to bottom, one pixel row per step
    (8 channels), faint rows at either end dropped, so series vary in length. Long tables like UEA/CareerCon."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    n_test = int(len(order) * test_fraction)
    frames, labels = {"train": [], "test": []}, {"train": [], "test": []}
    for rank, i in enumerate(order):
        part = "test" if rank < n_test else "train"
        rows = digits.images[i]
        ink = np.flatnonzero(rows.sum(axis=1) > 30)  # faint end rows dropped: lengths vary like real series
        if len(ink):
            rows = rows[ink.min(): ink.max() + 1]
        rows = rows / 16.0
        frame = pd.DataFrame(rows, columns=[f"ch{c}" for c in range(8)])
        frame.insert(0, "step", np.arange(len(rows)))
        frame.insert(0, "series_id", int(i))
        frames[part].append(frame)
        labels[part].append({"series_id": int(i), "label": f"digit_{digits.target[i]}"})
    write_csv(root / "train.csv", pd.concat(frames["train"], ignore_index=True))
    write_csv(root / "train_labels.csv", pd.DataFrame(labels["train"]))
    write_csv(root / "test.csv", pd.concat(frames["test"], ignore_index=True))
    solution = pd.DataFrame(labels["test"])
    write_csv(root / "solution.csv", solution)
    write_csv(root / "sample_submission.csv", solution.assign(label="digit_0"))
    return root
