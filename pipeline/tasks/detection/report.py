"""Detection's report section: predicted against true boxes on the OOF images with the most mistakes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.data.images import image_paths, load_image
from pipeline.reporting import plots
from pipeline.reporting.report import GRID, Section, shorten, thumbnail
from pipeline.tasks.detection.boxes import Detections, iou_matrix

DRAWN_SCORE = 0.5  # detections drawn and counted in the boxes section; lower ones only add clutter


def detection_section(cfg: Config, oof: pd.DataFrame, outputs: list[Detections], truths: list, classes: list[str],
                      out: Path) -> Section:
    """Predicted against true boxes on the OOF images with the most mistakes (objects missed + false detections)."""
    errors = detection_errors(outputs, truths, score_thr=DRAWN_SCORE)
    worst = (errors["missed"] + errors["false"]).sort_values(ascending=False, kind="stable").index[:GRID]
    paths = image_paths(cfg, oof["id"].iloc[worst])
    images = [draw_boxes(load_image(p, cfg.image.max_pixels), outputs[i], truths[i], classes)
              for i, p in zip(worst, paths, strict=True)]
    titles = [f"{shorten(str(oof['id'].iloc[i]))}\n{errors.at[i, 'missed']} missed, {errors.at[i, 'false']} false"
              for i in worst]
    figure = plots.image_grid(images, titles, out / "boxes.png", columns=4, cell=320 / plots.DPI)  # 1:1 pixels
    n = errors.sum()
    body = (f"<p>{len(oof)} OOF images with {n['true']} true boxes. At score ≥ {DRAWN_SCORE} and IoU ≥ 0.5 (same "
            f"class): {n['missed']} missed ({n['missed'] / max(1, n['true']):.1%}), {n['false']} false detections. "
            f"The {len(worst)} images with the most mistakes, worst first: true boxes green, detections red with "
            "class and score.</p>")
    return Section("Out-of-fold boxes", body, [figure])


def draw_boxes(image: np.ndarray, det, truth: tuple[np.ndarray, np.ndarray], classes: list[str],
               side: int = 320) -> np.ndarray:
    """The image resized to `side` px, with the true boxes (green, class below the top edge) and detections with
    score >= DRAWN_SCORE (red, class and score above it). Drawn after resizing, so labels read the same on every
    image size."""
    image = thumbnail(image, side)
    h, w = image.shape[:2]
    scale = np.array([w, h, w, h])
    for box, label in zip(np.asarray(truth[0], np.float64).reshape(-1, 4) * scale, truth[1], strict=True):
        _labelled_box(image, box, shorten(classes[label], 14), (0, 170, 0), inside=True)
    for box, score, label in zip(det.boxes * scale, det.scores, det.labels, strict=True):
        if score >= DRAWN_SCORE:
            _labelled_box(image, box, f"{shorten(classes[label], 14)} {score:.2f}", (220, 0, 0), inside=False)
    return image


def _labelled_box(image: np.ndarray, box: np.ndarray, text: str, colour: tuple, inside: bool) -> None:
    """A rectangle with its text on a filled tag, kept inside the image."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(image, (x1, y1), (x2, y2), colour, 1)
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.35
    (tw, th), _ = cv2.getTextSize(text, font, size, 1)
    left = min(max(x1, 0), max(0, image.shape[1] - tw - 2))
    top = min(max(y1 if inside else y1 - th - 4, 0), image.shape[0] - th - 4)
    cv2.rectangle(image, (left, top), (left + tw + 2, top + th + 4), colour, -1)
    cv2.putText(image, text, (left + 1, top + th + 1), font, size, (255, 255, 255), 1, cv2.LINE_AA)


def detection_errors(outputs: Sequence[Detections], truths: Sequence[tuple[np.ndarray, np.ndarray]],
                     score_thr: float = 0.5, iou_thr: float = 0.5) -> pd.DataFrame:
    """Per image: true boxes, detections with score >= score_thr, and how many of each found no partner: a
    detection matches the free true box of its class with the highest IoU >= iou_thr, best score first (as COCO)."""
    rows = []
    for det, (true_boxes, true_labels) in zip(outputs, truths, strict=True):
        true_boxes, true_labels = np.asarray(true_boxes, np.float64).reshape(-1, 4), np.asarray(true_labels)
        kept = np.flatnonzero(det.scores >= score_thr)
        kept = kept[np.argsort(-det.scores[kept], kind="stable")]
        iou = iou_matrix(det.boxes[kept].astype(np.float64), true_boxes) if len(kept) and len(true_boxes) else None
        taken = np.zeros(len(true_boxes), dtype=bool)
        for row, d in enumerate(kept):
            if iou is None:
                break
            free = np.where(taken | (true_labels != det.labels[d]), -1.0, iou[row])
            if free.max() >= iou_thr:
                taken[int(free.argmax())] = True
        rows.append({"true": len(true_boxes), "detected": len(kept), "missed": int((~taken).sum()),
                     "false": len(kept) - int(taken.sum())})
    return pd.DataFrame(rows, columns=["true", "detected", "missed", "false"])
