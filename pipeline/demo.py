"""An embedded competition that needs no download: scikit-learn's handwritten digits as PNG files.

    write_digits_competition("data/digits")  # train.csv, test.csv, sample_submission.csv, solution.csv, images/
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

from pipeline.files import write_csv


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


def write_digit_boxes_competition(root: str | Path, n_images: int = 200, digits: tuple[int, ...] = (0, 1, 8),
                                  test_fraction: float = 0.2, seed: int = 0) -> Path:
    """A detection competition from the same scans: 0-3 digits pasted onto textured canvases of varied size.

    The default digits (0, 1, 8) look alike when mirrored, so flip augmentation and flip TTA stay honest.

    train.csv has one row per box (image, width, height, label, x, y, w, h in pixels, COCO's xywh); an image
    without digits is one row with empty box cells. solution.csv holds the test boxes the same way.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = load_digits()
    pool = {d: np.flatnonzero(data.target == d) for d in digits}
    rows, names = [], []
    for n in range(n_images):
        w, h = int(rng.integers(96, 161)), int(rng.integers(80, 129))
        canvas = rng.normal(40, 15, (h, w)).clip(0, 255)
        name = f"images/{n:04d}.png"
        placed = []
        for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.05, 0.35, 0.35, 0.25]))):
            side = int(rng.integers(24, 49))
            for _attempt in range(20):  # digits do not overlap, like objects on a plate
                x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
                if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y for px, py, ps in placed):
                    break
            else:
                continue
            digit = int(rng.choice(digits))
            scan = data.images[rng.choice(pool[digit])] * (255 / 16)
            patch = cv2.resize(scan, (side, side), interpolation=cv2.INTER_CUBIC)
            region = canvas[y:y + side, x:x + side]
            canvas[y:y + side, x:x + side] = np.maximum(region, patch)
            placed.append((x, y, side))
            # The box is the ink, not the patch: the scans have empty margins.
            ys, xs = np.nonzero(patch > 40)
            rows.append({"image": name, "width": w, "height": h, "label": f"digit_{digit}",
                         "x": x + int(xs.min()), "y": y + int(ys.min()),
                         "w": int(xs.max() - xs.min() + 1), "h": int(ys.max() - ys.min() + 1)})
        if not placed:
            rows.append({"image": name, "width": w, "height": h, "label": None, "x": None, "y": None, "w": None, "h": None})
        cv2.imwrite(str(root / name), cv2.cvtColor(canvas.astype(np.uint8), cv2.COLOR_GRAY2BGR))
        names.append(name)
    boxes = pd.DataFrame(rows)
    test_names = set(names[: int(len(names) * test_fraction)])
    is_test = boxes["image"].isin(test_names)
    write_csv(root / "train.csv", boxes[~is_test])
    write_csv(root / "solution.csv", boxes[is_test])
    test = sorted(test_names)
    write_csv(root / "test.csv", pd.DataFrame({"image": test}))
    write_csv(root / "sample_submission.csv", pd.DataFrame({"image": test, "PredictionString": "digit_0 1.0 0 0 10 10"}))
    return root


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
