"""Combining members' class probabilities: mean, weighted, rank, geometric, and a stacked meta-model.

Weights and meta-models are fitted on out-of-fold predictions only; test predictions never enter a fit.
Every fitted method is also scored the honest way: fitted on K-1 folds, scored on the held-out fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression

from pipeline.metrics import Metric, logloss

EPS = 1e-7


def combine(method: str, members: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Blend [N, C] probability arrays with weights summing to one; rows of the result sum to one."""
    w = np.asarray(weights, dtype=np.float64)
    if method == "geometric":
        logs = sum(wi * np.log(np.clip(p, EPS, 1.0)) for wi, p in zip(w, members, strict=True))
        out = np.exp(logs - logs.max(axis=1, keepdims=True))
    elif method == "rank":
        # Per class, each member's scores become ranks in [0, 1]: scale differences between members vanish.
        out = sum(wi * (rankdata(p, axis=0) / len(p)) for wi, p in zip(w, members, strict=True))
    else:  # mean, weighted
        out = sum(wi * p for wi, p in zip(w, members, strict=True))
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def _objective(metric: Metric, target: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Sort key, larger is better: the metric, then log-loss to break ties (accuracy is flat)."""
    score = metric(target, probs)
    return (score if metric.greater_is_better else -score, -logloss(target, probs))


def hill_climb(method: str, members: list[np.ndarray], target: np.ndarray, metric: Metric,
               rounds: int = 50) -> np.ndarray:
    """Caruana ensemble selection: start from the best member, add (with replacement) whichever member
    improves the OOF objective most, stop when none does. Weights are the selection counts, summing to one."""
    n = len(members)
    counts = np.zeros(n)
    singles = [_objective(metric, target, p) for p in members]
    counts[max(range(n), key=lambda i: singles[i])] = 1
    best = max(singles)
    for _ in range(rounds):
        trials = []
        for i in range(n):
            trial = counts.copy()
            trial[i] += 1
            trials.append((_objective(metric, target, combine(method, members, trial / trial.sum())), i))
        score, i = max(trials)
        if score <= best:
            break
        best, counts[i] = score, counts[i] + 1
    return counts / counts.sum()


def held_out_weights_score(method: str, members: list[np.ndarray], target: np.ndarray, folds: np.ndarray,
                           metric: Metric) -> tuple[float, np.ndarray]:
    """Fit weights on K-1 folds, blend the held-out fold with them: the OOF score weights cannot flatter."""
    blended = np.zeros_like(members[0], dtype=np.float32)
    for k in np.unique(folds):
        fit, held = folds != k, folds == k
        w = hill_climb(method, [p[fit] for p in members], target[fit], metric)
        blended[held] = combine(method, [p[held] for p in members], w)
    return metric(target, blended), blended


def stack(members: list[np.ndarray], target: np.ndarray, folds: np.ndarray, tests: list[np.ndarray],
          n_classes: int, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on the members' log-probabilities, cross-validated on the same folds.

    Returns (stacked OOF, test): each OOF row comes from a meta-model that never saw its fold, and the
    test prediction is the mean of those K meta-models, exactly as fold models are averaged.
    """
    x = np.hstack([np.log(np.clip(p, EPS, 1.0)) for p in members])
    x_test = np.hstack([np.log(np.clip(p, EPS, 1.0)) for p in tests])
    oof = np.zeros((len(x), n_classes), dtype=np.float32)
    test = np.zeros((len(x_test), n_classes), dtype=np.float64)
    ks = np.unique(folds)
    for k in ks:
        fit, held = folds != k, folds == k
        meta = LogisticRegression(C=c, max_iter=2000).fit(x[fit], target[fit])
        oof[held] = _full_proba(meta, x[held], n_classes)
        test += _full_proba(meta, x_test, n_classes) / len(ks)
    return oof, test.astype(np.float32)


def _full_proba(model: LogisticRegression, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class, also those absent from this fold's training rows."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


@dataclass
class Blend:
    """An ensemble's OOF and test outputs, with what was fitted and its honest (other-folds) score."""

    oof: Any
    test: Any
    weights: np.ndarray | None  # per member, summing to one; None for a meta-model
    held_out: float | None  # score with weights fitted on the other folds; None when nothing was fitted
    params: dict = field(default_factory=dict)  # other fitted settings (e.g. the WBF IoU)


def blend_probabilities(method: str, oofs: list[np.ndarray], tests: list[np.ndarray], target: np.ndarray,
                        folds: np.ndarray, metric: Metric) -> Blend:
    """mean | weighted (hill climbing) | rank | geometric | stack, fitted on OOF rows only."""
    if method == "stack":
        oof, test = stack(oofs, target, folds, tests, oofs[0].shape[1])
        return Blend(oof, test, None, metric(target, oof))  # stacked OOF is already fitted on other folds
    weights, held_out, params = np.full(len(oofs), 1 / len(oofs)), None, {}
    if method == "weighted":
        weights, held_out, params = fit_weights(oofs, target, folds, metric)
    return Blend(combine(method, oofs, weights), combine(method, tests, weights), weights, held_out, params)


def fit_weights(oofs: list[np.ndarray], target: np.ndarray, folds: np.ndarray,
                metric: Metric) -> tuple[np.ndarray, float | None, dict]:
    """Hill-climbed weights, kept only when their held-out score beats the plain mean.

    When every member saturates the metric (BasicMotions: five members at CV 1.0), the climb is steered
    by log-loss alone and chose one member that scored 0.875 on test where the mean scored 1.0; so
    weights must earn their place on folds they were not fitted on, else every member counts equally.
    """
    uniform = np.full(len(oofs), 1 / len(oofs))
    mean_score = metric(target, combine("mean", oofs, uniform))
    held_out = held_out_weights_score("weighted", oofs, target, folds, metric)[0]
    if metric.better(held_out, mean_score):
        return hill_climb("weighted", oofs, target, metric), held_out, {"weights_from": "hill climbing"}
    return uniform, None, {"weights_from": "uniform", "hill_climbing_held_out": held_out, "mean_cv": mean_score}
