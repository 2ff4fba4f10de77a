"""The report's OOF section for binary, multilabel, regression and ordinal targets (multiclass: pipeline.reporting.report).

binary: ROC and precision-recall curves, calibration; multilabel: per-label F1/AUC and how often labels co-occur;
regression: predicted against true and residuals; ordinal: the confusion matrix of grades (cut at the defaults).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from pipeline.reporting import plots, tables
from pipeline.reporting.page import Section, table
from pipeline.reporting.plots import plt, save


def binary(oof: pd.DataFrame, truth: np.ndarray, outputs: np.ndarray, target, out: Path) -> list[Section]:
    p = outputs[:, 0]
    fig, (roc_ax, pr_ax, cal_ax) = plt.subplots(1, 3, figsize=(13, 3.8))
    both = len(np.unique(truth)) == 2
    if both:
        fpr, tpr, _ = skm.roc_curve(truth, p)
        roc_ax.plot(fpr, tpr)
        precision, recall, _ = skm.precision_recall_curve(truth, p)
        pr_ax.plot(recall, precision)
        seen, predicted = calibration_curve(truth, p, n_bins=10, strategy="quantile")
        cal_ax.plot(predicted, seen, "o-")
    roc_ax.plot([0, 1], [0, 1], ":", color="grey")
    cal_ax.plot([0, 1], [0, 1], ":", color="grey")
    roc_ax.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    pr_ax.set(title="precision-recall", xlabel="recall", ylabel="precision")
    cal_ax.set(title="calibration (10 quantile bins)", xlabel="predicted probability", ylabel="observed rate")
    figure = save(fig, out / "binary_curves.png")
    auc = f"ROC AUC {skm.roc_auc_score(truth, p):.4f}, PR AUC {skm.average_precision_score(truth, p):.4f}, " if both else ""
    body = (f"<p>{len(oof)} OOF rows, {truth.mean():.1%} positive ({target.classes[1]!s}); {auc}"
            f"log-loss {skm.log_loss(truth, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]):.4f}.</p>")
    return [Section("Out-of-fold predictions", body, [figure])]


def multilabel(oof: pd.DataFrame, truth: np.ndarray, outputs: np.ndarray, target, out: Path) -> list[Section]:
    per_label = tables.per_label(truth, target.decide(outputs), outputs, target.columns)
    co = truth.T @ truth
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(target.columns), 1 + 0.45 * len(target.columns)))
    ax.imshow(co, cmap="Blues")
    ax.set_xticks(range(len(target.columns)), target.columns, rotation=90)
    ax.set_yticks(range(len(target.columns)), target.columns)
    for i in range(len(co)):
        for j in range(len(co)):
            ax.text(j, i, int(co[i, j]), ha="center", va="center", fontsize=7)
    ax.set(title="label co-occurrence (rows with both)")
    body = (f"<p>{len(oof)} OOF rows, {truth.sum(axis=1).mean():.2f} labels per row; per label at threshold 0.5, "
            "worst F1 first:</p>" + table(per_label.round(4)))
    return [Section("Out-of-fold predictions", body, [save(fig, out / "label_cooccurrence.png")])]


def regression(oof: pd.DataFrame, truth: np.ndarray, outputs: np.ndarray, target, out: Path) -> list[Section]:
    truth = truth.reshape(len(truth), -1)
    names = target.columns
    shown = names[:4]  # predicted-vs-true and residuals of the first value columns
    fig, axes = plt.subplots(len(shown), 2, figsize=(10, 4 * len(shown)), squeeze=False)
    rows = {}
    for j, name in enumerate(names):
        t, p = truth[:, j], outputs[:, j]
        r = p - t
        rows[name] = {"rmse": np.sqrt(np.mean(r ** 2)), "mae": np.abs(r).mean(), "r2": skm.r2_score(t, p),
                      "mean residual": r.mean()}
        if j < len(shown):
            scatter, hist = axes[j]
            scatter.scatter(t, p, s=6, alpha=0.4)
            lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
            scatter.plot([lo, hi], [lo, hi], ":", color="grey")
            scatter.set(title=f"{name}: predicted vs true" if len(names) > 1 else "predicted vs true",
                        xlabel="true", ylabel="predicted")
            hist.hist(r, bins=40)
            hist.set(title="residuals (predicted - true)", xlabel="residual")
    per_column = pd.DataFrame(rows).T
    if len(names) == 1:
        m = per_column.iloc[0]
        body = (f"<p>{len(oof)} OOF rows; RMSE {m['rmse']:.4f}, MAE {m['mae']:.4f}, R² {m['r2']:.4f}, mean residual "
                f"{m['mean residual']:+.4f}.</p>")
    else:
        body = (f"<p>{len(oof)} OOF rows, {len(names)} values; mean columnwise RMSE {per_column['rmse'].mean():.4f}. "
                "Per value column:</p>" + table(per_column.round(4)))
    return [Section("Out-of-fold predictions", body, [save(fig, out / "regression.png")])]


def ordinal(oof: pd.DataFrame, truth: np.ndarray, outputs: np.ndarray, target, out: Path) -> list[Section]:
    grades = np.asarray(target.classes, dtype=np.float64)
    decided = target.decide(outputs)
    t, d = (np.searchsorted(grades, a) for a in (truth, decided))
    matrix = skm.confusion_matrix(t, d, labels=range(len(grades)))
    names = [str(g) for g in target.classes]
    body = (f"<p>{len(oof)} OOF rows; QWK {skm.cohen_kappa_score(t, d, weights='quadratic'):.4f} with the default cut "
            f"points (midpoints), exact grade {np.mean(t == d):.4f}.</p>")
    return [*regression(oof, truth, outputs, target, out),
            Section("Grades", body, [plots.confusion(matrix, names, out / "confusion.png")])]


SECTIONS = {"binary": binary, "multilabel": multilabel, "regression": regression, "ordinal": ordinal}
