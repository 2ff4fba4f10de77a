"""Segmentation's report sections: the score by mask coverage, the score against the pixel threshold, and the
OOF images scored worst with truth and prediction drawn over them."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline.data.images import image_paths, load_image
from pipeline.reporting import plots
from pipeline.reporting.page import Section, table
from pipeline.reporting.report import GRID, shorten, thumbnail
from pipeline.tasks.segmentation.data import COVERAGE_BINS, COVERAGE_NAMES
from pipeline.tasks.segmentation.metrics import PIXEL_THRESHOLDS, counts, pair_scores


def segmentation_sections(task, oof: pd.DataFrame, out: Path) -> list[Section]:
    outputs, truths = task.read_outputs(oof), task.targets(oof)
    metric, k = task.metric.name, task.k
    c = counts(outputs, truths, 0.5)
    per_pair = pair_scores(c, metric)
    per_image = per_pair.reshape(-1, k).mean(axis=1)
    coverage = np.array([t.any(axis=0).mean() for t in truths])
    bins = pd.Series([COVERAGE_NAMES[j] for j in np.digitize(coverage, COVERAGE_BINS[1:-1], right=True)])
    by_bin = (pd.DataFrame({"coverage": bins, metric: per_image,
                            "predicted empty": (c.pred.reshape(-1, k).sum(axis=1) == 0)})
              .groupby("coverage", sort=False).agg(images=(metric, "size"), score=(metric, "mean"),
                                                   empty=("predicted empty", "mean"))
              .reindex([n for n in COVERAGE_NAMES if n in set(bins)]).reset_index())
    by_bin = by_bin.rename(columns={"score": f"{metric} (threshold 0.5)", "empty": "share predicted empty"}).round(4)
    curve = [float(pair_scores(counts(outputs, truths, t), metric).mean()) for t in PIXEL_THRESHOLDS]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(PIXEL_THRESHOLDS, curve, marker="o")
    ax.set(xlabel="pixel threshold", ylabel=metric, title=f"OOF {metric} against the threshold (no area rules)")
    curve_png = plots.save(fig, out / "threshold.png")
    worst = np.argsort(per_image, kind="stable")[:GRID]
    paths = image_paths(task.cfg, oof["id"].iloc[worst])
    images = [overlay(load_image(p, task.cfg.image.max_pixels), truths[i], outputs[i]) for i, p in zip(worst, paths, strict=True)]
    titles = [f"{shorten(str(oof['id'].iloc[i]))}\n{metric} {per_image[i]:.2f}" for i in worst]
    grid = plots.image_grid(images, titles, out / "masks.png", columns=6)
    body = (f"<p>{len(oof)} OOF images, scored per image at threshold 0.5 without the fitted rules (scores.json "
            "has the fitted CV). By the share of the image the true mask covers:</p>" + table(by_bin) +
            f"<p>The {len(worst)} images scored worst: truth green, prediction red (overlap yellow).</p>")
    return [Section("Masks", body, [curve_png, grid])]


def overlay(image: np.ndarray, truth: np.ndarray, probs: np.ndarray, side: int = 160) -> np.ndarray:
    """The image with the true mask in green and the predicted one (p >= 0.5, any class) in red."""
    drawn = image.astype(np.float32).copy()
    t, p = truth.any(axis=0), (probs >= 128).any(axis=0)
    drawn[t, 1] = 0.5 * drawn[t, 1] + 127
    drawn[p, 0] = 0.5 * drawn[p, 0] + 127
    return thumbnail(np.clip(drawn, 0, 255).astype(np.uint8), side)
