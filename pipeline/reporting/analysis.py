"""Tables for looking at data and out-of-fold predictions: the numbers behind notebooks/ and reports, no plots.

    truth, probs = task.targets(oof), task.read_outputs(oof)      # int class ids [N], probabilities [N, C]
    confusion_frame(truth, probs.argmax(1), classes, normalise=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix

from pipeline.runs.rundir import RunDir


def confusion_frame(truth: np.ndarray, pred: np.ndarray, classes: Sequence, normalise: bool = False) -> pd.DataFrame:
    """Confusion counts, rows true and columns predicted class; normalise=True divides each row by its total
    (recall on the diagonal; a class without rows stays all zero)."""
    matrix = confusion_matrix(truth, pred, labels=range(len(classes))).astype(np.float64 if normalise else np.int64)
    if normalise:
        matrix /= matrix.sum(axis=1, keepdims=True).clip(min=1)
    names = [str(c) for c in classes]
    return pd.DataFrame(matrix, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))


def per_class_report(truth: np.ndarray, pred: np.ndarray, classes: Sequence) -> pd.DataFrame:
    """sklearn's classification_report as a frame: precision, recall, f1-score, support per class in class
    order, then the accuracy (in f1-score, as sklearn prints it), macro avg and weighted avg rows."""
    report = classification_report(truth, pred, labels=range(len(classes)), target_names=[str(c) for c in classes],
                                   output_dict=True, zero_division=0)
    accuracy = report.pop("accuracy", None)  # absent when sklearn reports a micro average instead
    frame = pd.DataFrame(report).T
    if accuracy is not None:
        summary = pd.DataFrame({"f1-score": [accuracy], "support": [len(truth)]}, index=["accuracy"])
        frame = pd.concat([frame.iloc[:len(classes)], summary, frame.iloc[len(classes):]])
    return frame.astype({"support": np.int64})


def confused_pairs(truth: np.ndarray, pred: np.ndarray, classes: Sequence, top: int | None = None) -> pd.DataFrame:
    """The mistakes (true -> predicted class) by count, most frequent first, with their share of the true class."""
    matrix = confusion_matrix(truth, pred, labels=range(len(classes)))
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    i, j = np.nonzero(off)
    names = np.asarray([str(c) for c in classes], dtype=object)
    frame = pd.DataFrame({"true": names[i], "predicted": names[j], "count": off[i, j],
                          "share of true": off[i, j] / matrix.sum(axis=1)[i]})
    frame = frame.sort_values("count", ascending=False, kind="stable").reset_index(drop=True)
    return frame if top is None else frame.head(top)


def highest_loss(truth: np.ndarray, probs: np.ndarray, n: int = 16) -> pd.DataFrame:
    """The n rows with the largest cross-entropy, worst first, indexed by row position: the true and predicted
    class ids with their probabilities, and the loss (probabilities clipped at 1e-15, as in metrics.logloss)."""
    rows = np.arange(len(truth))
    p_true = probs[rows, truth]
    loss = -np.log(np.clip(p_true, 1e-15, 1.0))
    worst = np.argsort(-loss, kind="stable")[:n]  # stable: ties keep file order, so the grid repeats
    pred = probs[worst].argmax(axis=1)
    return pd.DataFrame({"truth": truth[worst], "p_true": p_true[worst], "pred": pred,
                         "p_pred": probs[worst, pred], "loss": loss[worst]}, index=pd.Index(worst, name="row"))


def calibration_bins(truth: np.ndarray, probs: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Top-1 confidence in equal-width bins over [0, 1]: per non-empty bin its rows, mean confidence and
    accuracy (a reliability diagram's points; a calibrated model has accuracy = confidence)."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)  # 1.0 falls in the last bin
    frame = pd.DataFrame({"bin": which, "confidence": confidence, "accuracy": correct.astype(np.float64)})
    out = frame.groupby("bin").agg(rows=("bin", "size"), confidence=("confidence", "mean"), accuracy=("accuracy", "mean"))
    out.insert(0, "low", edges[out.index])
    out.insert(1, "high", edges[out.index + 1])
    return out.reset_index(drop=True)


def expected_calibration_error(truth: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE: the row-weighted mean gap between accuracy and confidence over calibration_bins."""
    table = calibration_bins(truth, probs, bins)
    return float((table["rows"] * (table["accuracy"] - table["confidence"]).abs()).sum() / table["rows"].sum())


def fold_metrics_by_fold(run_dir: Path) -> dict[int, pd.DataFrame]:
    """Every fold's metrics.csv (one row per epoch), by fold number in order (fold10 after fold9)."""
    return {f.k: pd.read_csv(f.metrics) for f in RunDir(run_dir).fold_dirs() if f.metrics.is_file()}


def fold_metrics(run_dir: Path) -> pd.DataFrame:
    """Every fold's metrics.csv in one frame with a fold column; empty before training."""
    frames = [m.assign(fold=k) for k, m in fold_metrics_by_fold(run_dir).items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["fold", "epoch"])
