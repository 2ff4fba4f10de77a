"""An embedded segmentation competition: scikit-learn's digits drawn at random places and sizes on noisy grey
canvases, the digit's strokes as the mask, a third of the canvases empty (as TGS Salt's 39%); RLE as Kaggle
writes it.

    write_digit_masks_competition("data/demo-masks")  # train.csv (id, rle_mask), test.csv, sample_submission.csv,
                                                      # solution.csv, images/<id>.png
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

from pipeline.core.config import Config
from pipeline.core.files import write_csv
from pipeline.tasks.segmentation.masks import rle_decode, rle_encode
from pipeline.tasks.segmentation.metrics import Counts, score

SIDE = 48


def draw(digit: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy canvas with the digit on it (or not) and its stroke mask."""
    canvas = rng.normal(90, 25, (SIDE, SIDE)) + cv2.GaussianBlur(rng.normal(0, 40, (SIDE, SIDE)), (0, 0), 3)
    mask = np.zeros((SIDE, SIDE), np.uint8)
    if rng.random() > 0.35:
        side = int(rng.integers(14, 34))
        big = cv2.resize(digit.astype(np.float32) / 16, (side, side), interpolation=cv2.INTER_CUBIC)
        y, x = (int(v) for v in rng.integers(0, SIDE - side, 2))
        stroke = big > 0.35
        mask[y:y + side, x:x + side] = stroke
        canvas[y:y + side, x:x + side] += 110 * np.clip(big, 0, 1)
    return np.clip(canvas, 0, 255).astype(np.uint8), mask


def write_digit_masks_competition(root: str | Path, n_train: int = 360, n_test: int = 120, seed: int = 0) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    digits = load_digits().images
    rows = []
    for n in range(n_train + n_test):
        image, mask = draw(digits[int(rng.integers(len(digits)))], rng)
        name = f"m{n:04d}"
        cv2.imwrite(str(root / "images" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
        rows.append({"id": name, "rle_mask": rle_encode(mask)})
    table = pd.DataFrame(rows)
    train, test = table.iloc[:n_train], table.iloc[n_train:]
    write_csv(root / "train.csv", train)
    write_csv(root / "test.csv", test[["id"]])
    write_csv(root / "sample_submission.csv", test[["id"]].assign(rle_mask="1 1"))
    write_csv(root / "solution.csv", test)
    return root


def score_masks(submission: Path, solution: Path, cfg: Config) -> dict[str, float]:
    """The held-back score of a binary submission, per image as the competition scores it (the metric of cfg)."""
    sub = pd.read_csv(submission, keep_default_na=False).set_index(cfg.data.id_col)
    truth = pd.read_csv(solution, keep_default_na=False)
    shape = cv2.imread(str(Path(cfg.data.root) / cfg.data.image_dir / f"{truth[cfg.data.id_col].iloc[0]}"
                           f"{cfg.data.image_ext}"), cv2.IMREAD_GRAYSCALE).shape
    column = sub.columns[0]
    return {cfg.train.metric: score_rle(sub.loc[truth[cfg.data.id_col], column].tolist(),
                                        truth[column].tolist(), shape, cfg.train.metric, cfg.segment.rle_order)}


def score_rle(predicted: list[str], truth: list[str], shape: tuple[int, int], metric: str, order: str = "F") -> float:
    """The metric of RLE predictions against RLE truths of images of one shape."""
    pred, true, inter = [], [], []
    for p, t in zip(predicted, truth, strict=True):
        a, b = rle_decode(p, shape, order).astype(bool), rle_decode(t, shape, order).astype(bool)
        pred.append(a.sum())
        true.append(b.sum())
        inter.append((a & b).sum())
    c = Counts(*(np.asarray(v, np.float64) for v in (pred, true, inter)), np.ones(len(pred)))
    return score(c, metric)
