"""Competition metrics on class probabilities, with the direction that counts as better."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]  # (int targets [N], probabilities [N, C]) -> score
    greater_is_better: bool
    # The same score from predicted labels alone (argmax metrics), which lets ensemble search skip
    # recomputing rows whose label cannot change; None for metrics of the probabilities themselves.
    on_labels: Callable[[np.ndarray, np.ndarray], float] | None = None

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
    """Mean negative log-likelihood, probabilities clipped like Kaggle's scorer (1e-15)."""
    p = np.clip(probs[np.arange(len(target)), target], 1e-15, 1.0)
    return float(-np.log(p).mean())


METRICS = {
    "accuracy": Metric("accuracy", lambda t, p: (p.argmax(1) == t).mean(), True, lambda t, y: (y == t).mean()),
    "logloss": Metric("logloss", logloss, False),
    "f1_macro": Metric("f1_macro", lambda t, p: f1_score(t, p.argmax(1), average="macro"), True,
                       lambda t, y: f1_score(t, y, average="macro")),
}
