"""Segmentation scores from per-(image, class) counts, and the decision rules fitted on OOF.

Every score here is a mean over (image, class) pairs of a per-pair value computed from three counts: predicted
pixels, true pixels and their intersection. A threshold makes the counts once; emptying whole masks (a minimum
area, an image-level "any mask" threshold) only zeroes counts, so a grid over those rules costs no pixel work.

- dice: 2|P∩T| / (|P| + |T|), 1 when both are empty (Severstal, SIIM, UW-Madison, HuBMAP)
- iou: |P∩T| / |P∪T|, 1 when both are empty
- iou_map: TGS Salt's: the share of IoU thresholds 0.50, 0.55, ..., 0.95 the pair's IoU is above; an empty truth
  with an empty prediction scores 1, one without the other 0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("dice", "iou", "iou_map")
THRESHOLDS = np.arange(0.5, 1.0, 0.05)  # iou_map's IoU thresholds, 0.50:0.05:0.95


@dataclass
class Counts:
    """Per (image, class) pair: predicted and true pixel counts, their intersection, and the prediction's peak
    probability (for the "any mask" rule)."""

    pred: np.ndarray
    true: np.ndarray
    inter: np.ndarray
    peak: np.ndarray

    def take(self, rows: np.ndarray) -> Counts:
        return Counts(self.pred[rows], self.true[rows], self.inter[rows], self.peak[rows])

    def emptied(self, min_area: float, empty_below: float) -> Counts:
        """The counts after emptying every predicted mask smaller than min_area pixels, or whose peak probability
        is below empty_below."""
        drop = (self.pred < min_area) | (self.peak < empty_below)
        return Counts(np.where(drop, 0, self.pred), self.true, np.where(drop, 0, self.inter), self.peak)


def pair_scores(c: Counts, metric: str) -> np.ndarray:
    """The metric of each (image, class) pair."""
    both_empty = (c.pred == 0) & (c.true == 0)
    union = c.pred + c.true - c.inter
    if metric == "dice":
        return np.where(both_empty, 1.0, 2 * c.inter / np.maximum(c.pred + c.true, 1))
    iou = np.where(both_empty, 1.0, c.inter / np.maximum(union, 1))
    if metric == "iou":
        return iou
    hits = (iou[:, None] > THRESHOLDS[None, :]).mean(axis=1)
    return np.where(both_empty, 1.0, hits)


def score(c: Counts, metric: str) -> float:
    return float(pair_scores(c, metric).mean()) if len(c.pred) else float("nan")


def counts(probs: list[np.ndarray], truths, threshold: float) -> Counts:
    """The counts of every (image, class) pair at a probability threshold; probs are uint8 [K, H, W] (x255)."""
    cut = int(np.ceil(threshold * 255 - 1e-9))  # p >= threshold, in the stored quantisation
    pred, true, inter, peak = [], [], [], []
    for i, p in enumerate(probs):
        t = truths[i].astype(bool)
        m = p >= cut
        pred.append(m.sum(axis=(1, 2)))
        true.append(t.sum(axis=(1, 2)))
        inter.append((m & t).sum(axis=(1, 2)))
        peak.append(p.max(axis=(1, 2)) / 255.0)
    return Counts(*(np.concatenate(a).astype(np.float64) for a in (pred, true, inter, peak)))


@dataclass(frozen=True)
class Rules:
    """What turns probabilities into masks: a pixel threshold, then a mask is emptied below min_area pixels or when
    its peak probability is below empty_below."""

    threshold: float = 0.5
    min_area: float = 0.0
    empty_below: float = 0.0

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "min_area": self.min_area, "empty_below": self.empty_below}


PIXEL_THRESHOLDS = np.round(np.arange(0.2, 0.81, 0.05), 2)
AREA_SHARES = (0.0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.03)  # of the image's pixels
EMPTY_BELOW = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)


class RuleSearch:
    """The decision rules that maximise a metric on given OOF pairs; counts per threshold are made once and shared
    by every subset of rows (each fold's fit on the other folds)."""

    def __init__(self, probs: list[np.ndarray], truths, metric: str, pixels: float):
        self.metric = metric
        self.by_threshold = {float(t): counts(probs, truths, float(t)) for t in PIXEL_THRESHOLDS}
        self.areas = [share * pixels for share in AREA_SHARES]

    def fit(self, rows: np.ndarray | None = None) -> tuple[Rules, float]:
        """The best rules on these pairs (all when None) and their score there."""
        best, best_score = Rules(), -np.inf
        for t, c in self.by_threshold.items():
            c = c if rows is None else c.take(rows)
            for area in self.areas:
                for empty in EMPTY_BELOW:
                    s = score(c.emptied(area, empty), self.metric)
                    if s > best_score + 1e-12:
                        best, best_score = Rules(t, area, empty), s
        return best, best_score

    def apply(self, rules: Rules, rows: np.ndarray | None = None) -> Counts:
        c = self.by_threshold.get(rules.threshold)
        if c is None:
            raise KeyError(rules.threshold)
        c = c if rows is None else c.take(rows)
        return c.emptied(rules.min_area, rules.empty_below)
