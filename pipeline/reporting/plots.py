"""The report's figures, drawn with matplotlib (Agg, no display) and saved as PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on a server, in CI, and in a notebook kernel alike
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 90
COLORS = plt.get_cmap("tab10").colors


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def learning_curves(metrics: dict[int, pd.DataFrame], metric: str, path: Path) -> Path:
    """Per fold (one colour each): train (dashed) and valid loss, valid score of raw and EMA weights, LR."""
    fig, (loss_ax, score_ax, lr_ax) = plt.subplots(1, 3, figsize=(13, 3.4))
    for k, m in sorted(metrics.items()):
        c, epoch = COLORS[k % 10], m["epoch"] + 1
        loss_ax.plot(epoch, m["train/loss"], "--", color=c, alpha=0.7)
        if "valid/loss" in m:
            loss_ax.plot(epoch, m["valid/loss"], color=c, label=f"fold {k}")
        score_ax.plot(epoch, m["valid/score"], color=c, label=f"fold {k}")
        if "valid_ema/score" in m:
            score_ax.plot(epoch, m["valid_ema/score"], ":", color=c)
        lr_ax.plot(epoch, m["lr"], color=c)
    loss_ax.set(title="loss (dashed: train, solid: valid)", xlabel="epoch")
    score_ax.set(title=f"valid {metric} (dotted: EMA weights)", xlabel="epoch")
    lr_ax.set(title="learning rate at epoch end", xlabel="epoch")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (loss_ax, score_ax, lr_ax):
        ax.grid(alpha=0.3)
    score_ax.legend(fontsize=8)
    return save(fig, path)


def confusion(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix; class names and cell values only when they stay legible (<= 25)."""
    n = len(classes)
    side = min(11.0, 2.5 + 0.32 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    if n <= 25:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        for i, j in zip(*np.nonzero(matrix), strict=True):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"OOF confusion matrix ({n} classes, rows sum to 1)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save(fig, path)


def image_grid(images: list[np.ndarray], titles: list[str], path: Path, columns: int = 6, cell: float = 2.3) -> Path:
    """Thumbnails with a caption each, `cell` inches wide (true / predicted labels, or boxes drawn on images)."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(cell * columns, (cell + 0.3) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
    return save(fig, path)


def cv_vs_lb(table: pd.DataFrame, current: str, metric: str, path: Path) -> Path:
    """CV against public LB, one point per submission with a score; the current experiment in red."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    mine = table["exp"] == current
    ax.scatter(table.loc[~mine, "cv"], table.loc[~mine, "public_lb"], color="tab:blue", label="other experiments")
    ax.scatter(table.loc[mine, "cv"], table.loc[mine, "public_lb"], color="tab:red", label=current)
    for _, row in table.iterrows():
        ax.annotate(str(row["exp"]), (row["cv"], row["public_lb"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    low = float(min(table["cv"].min(), table["public_lb"].min()))
    high = float(max(table["cv"].max(), table["public_lb"].max()))
    ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--", label="LB = CV")
    ax.set(xlabel=f"CV {metric}", ylabel="public LB", title="CV vs public leaderboard")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def tuning(trials: pd.DataFrame, params: list[str], importances: dict, metric: str, greater: bool, path: Path) -> Path:
    """A search at a glance: each trial's score in order with the best so far (pruned trials at the bottom), the
    parameters' importances, and parallel coordinates (one line per completed trial over its values scaled to each
    parameter's range, coloured by score)."""
    fig, (hist_ax, imp_ax, par_ax) = plt.subplots(1, 3, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1.2, 0.8, 1.6]})
    done = trials[trials["state"] == "complete"]
    best = done["score"].cummax() if greater else done["score"].cummin()
    hist_ax.scatter(done["trial"], done["score"], s=14, color=COLORS[0], label="complete")
    hist_ax.step(done["trial"], best, where="post", color=COLORS[1], label="best so far")
    cut = trials[trials["state"] != "complete"]
    if len(cut) and len(done):
        hist_ax.scatter(cut["trial"], [done["score"].min()] * len(cut), marker="x", s=14, color="grey",
                        label="pruned / failed")
    hist_ax.set(title=f"optimisation history ({metric})", xlabel="trial")
    hist_ax.legend(fontsize=8)
    names = list(importances)[::-1]
    imp_ax.barh(names, [importances[n] for n in names], color=COLORS[2])
    imp_ax.set(title="importance (fANOVA)" if names else "importance: too few trials yet")
    numeric = [p for p in params if p in done and pd.api.types.is_numeric_dtype(done[p]) and done[p].nunique() > 1]
    if len(done) and numeric:
        scaled = (done[numeric] - done[numeric].min()) / (done[numeric].max() - done[numeric].min())
        colour = plt.get_cmap("viridis" if greater else "viridis_r")
        span = (done["score"] - done["score"].min()) / max(done["score"].max() - done["score"].min(), 1e-12)
        for (_, row), c in zip(scaled.iterrows(), span, strict=True):
            par_ax.plot(range(len(numeric)), row.to_numpy(), color=colour(c), alpha=0.8)
        par_ax.set_xticks(range(len(numeric)), numeric, rotation=15, fontsize=8)
    par_ax.set(title="parallel coordinates (yellow: best)", ylabel="low .. high of the range tried")
    for ax in (hist_ax, par_ax):
        ax.grid(alpha=0.3)
    return save(fig, path)
