"""Image classification's report section: the OOF images the model got most wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.data.images import image_paths, load_image
from pipeline.reporting import analysis, plots
from pipeline.reporting.report import GRID, Section, shorten, thumbnail


def hardest_images(cfg: Config, oof: pd.DataFrame, probs: np.ndarray, truth: np.ndarray, classes: list[str],
                   out: Path) -> Section:
    """The OOF images with the highest log-loss: label noise and look-alike classes show up here first."""
    worst = analysis.highest_loss(truth, probs, n=GRID)
    paths = image_paths(cfg, oof["id"].iloc[worst.index])
    images = [thumbnail(load_image(p, cfg.image.max_pixels)) for p in paths]
    titles = [f"{shorten(str(oof['id'].iloc[row.Index]))}\ntrue {shorten(classes[row.truth])}\n"
              f"pred {shorten(classes[row.pred])} {row.p_pred:.2f}" for row in worst.itertuples()]
    figure = plots.image_grid(images, titles, out / "highest_loss.png")
    return Section("Highest-loss OOF images", f"<p>The {len(worst)} OOF images with the highest log-loss, worst first "
                   "(the predicted class with its probability).</p>", [figure])
