"""Competition metrics, each with its direction, what it scores (decisions or raw outputs) and the target types it fits.

A metric takes (truth, x) as its target type hands them over (pipeline.scoring.targets): x is the decisions (labels,
0/1 tags, grades) for `accuracy`, the F-scores and `qwk`, and the raw outputs (probabilities, values) for the
rest. scikit-learn computes every metric it has; MAP@K is Kaggle's formula.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from pipeline.core.errors import UserError

MULTICLASS, BINARY, MULTILABEL, REGRESSION, ORDINAL = "multiclass", "binary", "multilabel", "regression", "ordinal"
CLASSES = frozenset({MULTICLASS, BINARY, MULTILABEL, ORDINAL})
VALUES = frozenset({REGRESSION, ORDINAL})


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]  # (truth, decisions or outputs) -> score
    greater_is_better: bool
    # The same score from predicted labels alone (argmax metrics), which lets ensemble search skip
    # recomputing rows whose label cannot change; None for metrics of the outputs themselves.
    on_labels: Callable[[np.ndarray, np.ndarray], float] | None = None
    decisions: bool = False  # scores decisions (labels, tags, grades), not probabilities or values
    targets: frozenset = frozenset({MULTICLASS})  # the target types it is defined for

    def __call__(self, target: np.ndarray, probs: np.ndarray) -> float:
        return float(self.fn(target, probs))

    def best(self, scores) -> float:
        """The best of several scores; NaN (broken weights) is never best, and is the answer only when all are."""
        finite = [s for s in scores if math.isfinite(s)]
        if not finite:
            return math.nan
        return max(finite) if self.greater_is_better else min(finite)

    def rank(self, score: float) -> tuple[bool, float]:
        """Sort key, best score first and NaN (a failed run) last."""
        return (not math.isfinite(score), -score if self.greater_is_better else score)

    def better(self, a: float, b: float | None) -> bool:
        """Is score a an improvement on b (None = nothing yet)?"""
        return b is None or (a > b if self.greater_is_better else a < b)


def logloss(target: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood, probabilities clipped like Kaggle's scorer (1e-15): multiclass ([N] class ids,
    [N, C]), binary ([N] 0/1, [N] probabilities) or multilabel ([N, K] 0/1, [N, K]: the mean over labels)."""
    if probs.ndim == 2 and target.ndim == 1:
        p = np.clip(probs[np.arange(len(target)), target], 1e-15, 1.0)
        return float(-np.log(p).mean())
    p = np.clip(np.asarray(probs, np.float64), 1e-15, 1 - 1e-15)
    return float(-(target * np.log(p) + (1 - target) * np.log(1 - p)).mean())


def _label_metric(name: str, fn, targets=CLASSES, greater=True) -> Metric:
    return Metric(name, fn, greater, on_labels=fn, decisions=True, targets=targets)


def _columnwise(fn):
    """A binary score per label column, averaged over the columns that hold both classes (Kaggle's column-wise
    mean): a label with no positive in these rows has no AUC. Binary and multiclass go to scikit-learn directly."""
    def score(t: np.ndarray, p: np.ndarray) -> float:
        if t.ndim == 1 and p.ndim == 2:  # multiclass: one-vs-rest per class, macro-averaged
            t = np.eye(p.shape[1], dtype=np.int64)[t]
        if t.ndim == 1:
            return float(fn(t, p)) if len(np.unique(t)) == 2 else math.nan
        cols = [j for j in range(t.shape[1]) if len(np.unique(t[:, j])) == 2]
        return float(np.mean([fn(t[:, j], p[:, j]) for j in cols])) if cols else math.nan
    return score


def _rmsle(t: np.ndarray, p: np.ndarray) -> float:
    """Root mean squared log error; predictions below zero count as zero (the log needs p > -1, and a
    negative count, price or age is never right)."""
    return float(skm.root_mean_squared_log_error(t, np.clip(p, 0, None)))


def map_at_k(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    """Kaggle's MAP@K: per row, the precision at each of the top-K predictions that is a true label, summed and
    divided by min(K, number of true labels); multiclass truth is [N] class ids, multilabel [N, K] 0/1."""
    def score(t: np.ndarray, p: np.ndarray) -> float:
        top = np.argsort(-p, axis=1, kind="stable")[:, :k]
        truth = np.eye(p.shape[1], dtype=bool)[t] if t.ndim == 1 else t.astype(bool)
        hits = np.take_along_axis(truth, top, axis=1)
        precision = np.cumsum(hits, axis=1) / np.arange(1, top.shape[1] + 1)
        relevant = np.minimum(truth.sum(axis=1), k)
        return float(np.mean(np.where(relevant > 0, (precision * hits).sum(axis=1) / np.maximum(relevant, 1), 0.0)))
    return score


def _f(beta: float, average: str):
    return lambda t, y: skm.fbeta_score(t, y, beta=beta, average=average, zero_division=0)


METRICS = {
    "accuracy": Metric("accuracy", lambda t, y: skm.accuracy_score(t, y), True, lambda t, y: skm.accuracy_score(t, y),
                       decisions=True, targets=CLASSES),
    "logloss": Metric("logloss", logloss, False, targets=frozenset({MULTICLASS, BINARY, MULTILABEL})),
    "f1": _label_metric("f1", _f(1, "binary"), frozenset({BINARY})),  # of the positive class
    "f1_macro": _label_metric("f1_macro", _f(1, "macro")),
    "f1_micro": _label_metric("f1_micro", _f(1, "micro")),
    "f1_weighted": _label_metric("f1_weighted", _f(1, "weighted")),
    "f1_samples": _label_metric("f1_samples", _f(1, "samples"), frozenset({MULTILABEL})),
    "f2_samples": _label_metric("f2_samples", _f(2, "samples"), frozenset({MULTILABEL})),  # Kaggle Planet
    "roc_auc": Metric("roc_auc", _columnwise(skm.roc_auc_score), True, targets=frozenset({MULTICLASS, BINARY, MULTILABEL})),
    "pr_auc": Metric("pr_auc", _columnwise(skm.average_precision_score), True,
                     targets=frozenset({MULTICLASS, BINARY, MULTILABEL})),
    "qwk": _label_metric("qwk", lambda t, y: skm.cohen_kappa_score(t, y, weights="quadratic"),
                         frozenset({ORDINAL, MULTICLASS})),
    # On several value columns each metric is the mean of the columns' (sklearn's uniform_average): rmse is then
    # Kaggle's MCRMSE (mean columnwise RMSE), also available under that name.
    "rmse": Metric("rmse", skm.root_mean_squared_error, False, targets=VALUES),
    "mcrmse": Metric("mcrmse", skm.root_mean_squared_error, False, targets=VALUES),
    "rmsle": Metric("rmsle", _rmsle, False, targets=VALUES),
    "mae": Metric("mae", skm.mean_absolute_error, False, targets=VALUES),
    "r2": Metric("r2", skm.r2_score, True, targets=VALUES),
}
MAP_AT = re.compile(r"map@(\d+)")
DEFAULTS = {MULTICLASS: "accuracy", BINARY: "roc_auc", MULTILABEL: "f1_samples", REGRESSION: "rmse", ORDINAL: "qwk"}


def get_metric(name: str, target_type: str | None = None) -> Metric:
    """train.metric by name (map@K for any K); with a target type, one that fits it ('auto': its default)."""
    if name == "auto":
        name = DEFAULTS[target_type or MULTICLASS]
    if m := MAP_AT.fullmatch(name):
        metric = Metric(name, map_at_k(int(m.group(1))), True, targets=frozenset({MULTICLASS, MULTILABEL}))
    elif name in METRICS:
        metric = METRICS[name]
    else:
        close = difflib.get_close_matches(name, [*METRICS, "map@5"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"train.metric={name!r} is not a metric; choose one of {', '.join(METRICS)}, map@K{hint}")
    if target_type and target_type not in metric.targets:
        fits = [n for n, m in METRICS.items() if target_type in m.targets]
        raise UserError(f"train.metric={name} does not fit a {target_type} target; choose one of {', '.join(fits)} "
                        f"(or set data.target_type if {target_type} is the wrong guess)")
    return metric


def on_class_probabilities(metric: Metric) -> Metric:
    """A multiclass metric as (class ids, [N, C] probabilities) -> score: decisions are the argmax."""
    fn = (lambda t, p: metric.fn(t, p.argmax(axis=1))) if metric.decisions else metric.fn
    return Metric(metric.name, fn, metric.greater_is_better, metric.on_labels, metric.decisions, metric.targets)


CLASS_METRICS = {name: on_class_probabilities(m) for name, m in METRICS.items() if MULTICLASS in m.targets}


TASK_SCORED = ("map50", "map", "dice", "iou", "iou_map")  # detection's and segmentation's: higher is better


def greater_is_better(name: str) -> bool:
    """The direction of a metric by name (detection's and segmentation's included), for tables that rank runs."""
    return name in TASK_SCORED or name == "auto" or get_metric(name).greater_is_better


def ranker(name: str) -> Metric:
    """A metric by name for ranking scores only (best, rank, better), detection's map50/map included."""
    return Metric(name, lambda t, p: math.nan, greater_is_better(name))
