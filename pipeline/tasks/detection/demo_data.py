"""The embedded detection competition: digits pasted onto canvases, one row per box (xywh pixels)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

from pipeline.core.config import Config
from pipeline.core.files import write_csv
from pipeline.tasks.detection.boxes import Detections, mean_average_precision, to_xyxy
from pipeline.tasks.detection.submission import parse_boxes


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


def score_boxes(submission: Path, solution: Path, cfg: Config) -> dict[str, float]:
    """COCO mAP of a PredictionString submission against a solution file laid out like train.csv."""
    d = cfg.data
    sub, sol = pd.read_csv(submission), pd.read_csv(solution)
    column = sub.columns[1]
    truth_boxes = to_xyxy(sol[d.box_cols].to_numpy(), d.box_format)
    classes = sorted(sol[d.target_col].dropna().astype(str).unique())
    truths, preds = [], []
    for image_id, text in zip(sub[d.id_col], sub[column], strict=True):
        rows = np.flatnonzero((sol[d.id_col] == image_id).to_numpy() & sol[d.target_col].notna().to_numpy())
        labels = sol[d.target_col].iloc[rows].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
        truths.append((truth_boxes[rows], labels))
        boxes = parse_boxes(text, cfg.detect.submit_format)
        pred_labels = [classes.index(str(b["label"])) if str(b["label"]) in classes else 0 for b in boxes]
        preds.append(Detections(np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes], np.float32).reshape(-1, 4),
                                np.array([b["score"] for b in boxes], np.float32), np.array(pred_labels, np.int64), (0, 0)))
    return mean_average_precision(preds, truths, cfg.detect.max_det)
