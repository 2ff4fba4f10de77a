"""An embedded competition that needs no download: scikit-learn's handwritten digits as PNG files.

    write_digits_competition("data/digits")  # train.csv, test.csv, sample_submission.csv, solution.csv, images/
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

from pipeline.core.files import write_csv


def write_digits_competition(root: str | Path, size: int = 32, n_train: int | None = None,
                             test_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the 8x8 digits (1,797 real scans), upscaled to `size` px RGB PNGs, in Kaggle layout."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    n_test = int(len(order) * test_fraction)
    test_idx, train_idx = order[:n_test], order[n_test:]
    if n_train is not None:
        train_idx = train_idx[:n_train]
    names = {}
    for i in np.concatenate([train_idx, test_idx]):
        gray = (digits.images[i] * (255 / 16)).astype(np.uint8)
        big = cv2.resize(gray, (size, size), interpolation=cv2.INTER_CUBIC)
        names[i] = f"images/{i:04d}.png"
        cv2.imwrite(str(root / names[i]), cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    labels = [f"digit_{t}" for t in digits.target]  # text labels, like most Kaggle competitions
    write_csv(root / "train.csv", pd.DataFrame({"image": [names[i] for i in train_idx],
                                                "label": [labels[i] for i in train_idx]}))
    write_csv(root / "test.csv", pd.DataFrame({"image": [names[i] for i in test_idx]}))
    write_csv(root / "sample_submission.csv", pd.DataFrame({"image": [names[i] for i in test_idx], "label": labels[0]}))
    write_csv(root / "solution.csv", pd.DataFrame({"image": [names[i] for i in test_idx],
                                                   "label": [labels[i] for i in test_idx]}))
    return root
