"""Boxes: format conversion, TTA views mapped back onto boxes, Weighted Boxes Fusion and COCO-style mAP.

Inside the pipeline a box is always [x1, y1, x2, y2] as fractions of the original image's width and height,
so boxes from different image sizes, views, folds and models can be fused and scored together.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.core.errors import UserError

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's 0.5:0.05:0.95
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolated precision


@dataclass
class Detections:
    """One image's boxes ([n, 4] normalised xyxy), scores and class ids, plus the image's size in pixels."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    size: tuple[int, int]  # (width, height) of the original image

    @classmethod
    def empty(cls, size=(0, 0)) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), size)


def to_xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    """[n, 4] boxes in `fmt` (xyxy or xywh) as corners."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if fmt == "xyxy":
        return boxes.copy()
    x, y, w, h = boxes.T
    return np.stack([x, y, x + w, y + h], axis=1)


# Where a point of the square canvas (side s) lands under each TTA view, and how to map it back.
# Matches pipeline.scoring.tta's image views: torch.rot90(k=1) turns the image counter-clockwise.
BOX_VIEWS = {
    "identity": (lambda x, y, s: (x, y), lambda x, y, s: (x, y)),
    "hflip": (lambda x, y, s: (s - x, y), lambda x, y, s: (s - x, y)),
    "vflip": (lambda x, y, s: (x, s - y), lambda x, y, s: (x, s - y)),
    "rot180": (lambda x, y, s: (s - x, s - y), lambda x, y, s: (s - x, s - y)),
    "rot90": (lambda x, y, s: (y, s - x), lambda x, y, s: (s - y, x)),
    "rot270": (lambda x, y, s: (s - y, x), lambda x, y, s: (y, s - x)),
    "transpose": (lambda x, y, s: (y, x), lambda x, y, s: (y, x)),
    "antitranspose": (lambda x, y, s: (s - y, s - x), lambda x, y, s: (s - y, s - x)),
}


def check_box_views(names: Sequence[str]) -> None:
    bad = [n for n in names if n not in BOX_VIEWS]
    if bad:
        raise UserError(f"predict.tta views {bad} cannot be undone on boxes; detection supports "
                        f"{', '.join(BOX_VIEWS)} (sets none, hflip, vflip, flips, d4)")


def _map_boxes(boxes: np.ndarray, view: str, side: float, which: int) -> np.ndarray:
    fn = BOX_VIEWS[view][which]
    x1, y1 = fn(boxes[:, 0], boxes[:, 1], side)
    x2, y2 = fn(boxes[:, 2], boxes[:, 3], side)
    return np.stack([np.minimum(x1, x2), np.minimum(y1, y2), np.maximum(x1, x2), np.maximum(y1, y2)], axis=1)


def view_boxes(boxes: np.ndarray, view: str, side: float) -> np.ndarray:
    """Boxes (canvas pixels, xyxy) as they appear in the image after `view`."""
    return _map_boxes(boxes, view, side, 0)


def unview_boxes(boxes: np.ndarray, view: str, side: float) -> np.ndarray:
    """Boxes predicted on a `view` of the canvas, mapped back onto the canvas itself."""
    return _map_boxes(boxes, view, side, 1)


def fuse(members: Sequence[Detections], weights: Sequence[float] | None = None, iou_thr: float = 0.55,
         skip_thr: float = 0.0) -> Detections:
    """Weighted Boxes Fusion of one image's detections from several views, folds or models.

    A box found by only some members keeps a score scaled down by the share that found it, which is what
    makes fusion better than concatenation + NMS for TTA and fold ensembles.
    """
    from ensemble_boxes import weighted_boxes_fusion  # imports numba: only when boxes are fused

    size = members[0].size
    if len(members) == 1:
        return members[0]  # nothing to fuse: WBF of one member would only blur its own boxes
    if all(len(m.boxes) == 0 for m in members):
        return Detections.empty(size)
    # WBF clusters every box above iou_thr, also two boxes of the same member; their averaged corners and
    # diluted score cost ~0.1 mAP@0.5 on raccoon OOF. Fusion is across members, so each member is first
    # reduced to boxes that overlap less than iou_thr (per-class NMS at that IoU).
    members = [suppress(m, iou_thr) for m in members]
    with warnings.catch_warnings():  # WBF warns about zero-area boxes, which it drops anyway
        warnings.simplefilter("ignore")
        boxes, scores, labels = weighted_boxes_fusion(
            [np.clip(m.boxes, 0, 1).tolist() for m in members], [m.scores.tolist() for m in members],
            [m.labels.tolist() for m in members], weights=None if weights is None else list(weights),
            iou_thr=iou_thr, skip_box_thr=skip_thr)
    order = np.argsort(-scores, kind="stable")
    return Detections(boxes[order].astype(np.float32), scores[order].astype(np.float32),
                      labels[order].astype(np.int64), size)


def suppress(det: Detections, iou_thr: float) -> Detections:
    """Per-class NMS: keep the best-scoring of boxes that overlap more than iou_thr."""
    from torchvision.ops import batched_nms

    if len(det.boxes) < 2:
        return det
    keep = batched_nms(torch.tensor(det.boxes, dtype=torch.float32), torch.tensor(det.scores, dtype=torch.float32),
                       torch.tensor(det.labels), iou_thr).numpy()
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep], det.size)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, m] IoU of xyxy boxes (COCO's definition: no +1 on widths)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def mean_average_precision(predictions: Sequence[Detections], truths: Sequence[tuple[np.ndarray, np.ndarray]],
                           max_det: int = 100) -> dict[str, float]:
    """COCO-style AP (area 'all', maxDets=max_det): {'map50': AP@0.5, 'map': AP averaged over 0.5:0.95}.

    truths: per image (boxes [n, 4] xyxy, class ids [n]). Matching follows pycocotools: per image and class,
    detections by descending score take the unmatched ground truth of highest IoU above the threshold; AP is
    the 101-point interpolated precision, averaged over classes that have ground truth. The greedy matching runs
    for all (image, class) groups and all ten thresholds at once, one detection rank at a time (_match_groups):
    a few hundred numpy steps instead of images x classes x thresholds x detections Python iterations.
    """
    return average_precision(match_images(predictions, truths, max_det))


@dataclass
class Matches:
    """Every image's detections matched to its truths, flat in image order (per image by class, then by descending
    score): mAP from them is a sort and a cumulative sum, so images can be resampled (`take`, a blend's noise by
    bootstrap) without matching again."""

    image: np.ndarray  # [D] the image of each detection
    cls: np.ndarray  # [D] its class, an index into the classes with ground truth in some image
    scores: np.ndarray  # [D]
    tp: np.ndarray  # [D, thresholds] whether it is a true positive at each of IOU_THRESHOLDS
    n_true: np.ndarray  # [images, classes] ground-truth boxes

    def __len__(self) -> int:
        return len(self.n_true)

    def take(self, rows: np.ndarray) -> Matches:
        """The matches of images `rows` (repeats allowed), in that order: as if those images had been matched."""
        counts = np.bincount(self.image, minlength=len(self))
        starts = np.cumsum(counts) - counts
        lengths = counts[rows]
        offsets = np.cumsum(lengths) - lengths
        at = np.arange(lengths.sum()) - np.repeat(offsets - starts[rows], lengths)
        image = np.repeat(np.arange(len(rows)), lengths)
        return Matches(image, self.cls[at], self.scores[at], self.tp[at], self.n_true[rows])


def match_images(predictions: Sequence[Detections], truths: Sequence[tuple[np.ndarray, np.ndarray]],
                 max_det: int = 100) -> Matches:
    """Each image's detections of a class with ground truth matched at every IoU threshold (mean_average_precision)."""
    classes = sorted({int(c) for _, labels in truths for c in labels})
    index = {c: i for i, c in enumerate(classes)}
    n_true = np.zeros((len(truths), len(classes)), dtype=np.int64)
    groups = []  # (image, class index, scores, det boxes, truths) per image and class
    for image, (det, (true_boxes, true_labels)) in enumerate(zip(predictions, truths, strict=True)):
        t_all = np.asarray(true_boxes, dtype=np.float64).reshape(-1, 4)
        t_labels = np.asarray(true_labels).astype(np.int64).reshape(-1)
        d_labels = np.asarray(det.labels).astype(np.int64).reshape(-1)
        for c in np.union1d(np.unique(t_labels), np.unique(d_labels)):
            if int(c) not in index:
                continue  # a class with no ground truth anywhere: not scored (pycocotools' AP is -1 there)
            t = t_all[t_labels == c]
            keep = np.flatnonzero(d_labels == c)
            keep = keep[np.argsort(-det.scores[keep], kind="mergesort")][:max_det]
            b = det.boxes[keep]
            # pycocotools ignores a detection whose area falls outside the range 'all' ([0, 1e10]): an inverted box
            keep = keep[(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) >= 0]
            n_true[image, index[int(c)]] += len(t)
            groups.append((image, index[int(c)], det.scores[keep], det.boxes[keep].astype(np.float64), t))
    matched = _match_groups([g[3] for g in groups], [g[4] for g in groups])
    sizes = [len(g[2]) for g in groups]
    return Matches(np.repeat([g[0] for g in groups], sizes).astype(np.int64),
                   np.repeat([g[1] for g in groups], sizes).astype(np.int64),
                   np.concatenate([g[2] for g in groups]) if groups else np.zeros(0, np.float32),
                   np.concatenate(matched) if groups else np.zeros((0, len(IOU_THRESHOLDS)), bool), n_true)


def average_precision(matches: Matches) -> dict[str, float]:
    """{'map50', 'map'} of matched detections: per class with ground truth in these images, its detections in image
    order sorted by descending score (stable, as pycocotools concatenates them), 101-point interpolated AP."""
    n_true = matches.n_true.sum(axis=0)
    scored = np.flatnonzero(n_true > 0)
    if not len(scored):
        return {"map50": float("nan"), "map": float("nan")}
    order = np.lexsort((-matches.scores, matches.cls))  # by class, then descending score; ties in image order
    cls, tp = matches.cls[order], matches.tp[order]
    bounds = np.searchsorted(cls, np.arange(len(n_true) + 1))
    ap = np.stack([_interpolated_ap(tp[bounds[ci]:bounds[ci + 1]], n_true[ci]) for ci in scored])
    return {"map50": float(ap[:, 0].mean()), "map": float(ap.mean())}


def box_hits(predictions: Sequence[Detections], truths: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per box, in image order and each image's stored order: is it a true positive at IoU 0.5, matched as
    mean_average_precision matches (per image and class, by descending score, to the best untaken truth)."""
    groups, where = [], []  # (det boxes by score, truths) per image and class; and those boxes' flat positions
    offset = 0
    for det, (true_boxes, true_labels) in zip(predictions, truths, strict=True):
        t_all = np.asarray(true_boxes, dtype=np.float64).reshape(-1, 4)
        t_labels = np.asarray(true_labels).astype(np.int64).reshape(-1)
        labels = np.asarray(det.labels).astype(np.int64).reshape(-1)
        for c in np.unique(labels):
            keep = np.flatnonzero(labels == c)
            keep = keep[np.argsort(-det.scores[keep], kind="mergesort")]
            groups.append((det.boxes[keep].astype(np.float64), t_all[t_labels == c]))
            where.append(offset + keep)
        offset += len(labels)
    hits = np.zeros(offset, dtype=bool)
    for positions, matched in zip(where, _match_groups([g[0] for g in groups], [g[1] for g in groups]), strict=True):
        hits[positions] = matched[:, 0]  # IOU_THRESHOLDS[0] is 0.5
    return hits


MATCH_CHUNK = 500_000  # IoU entries (groups x detections x truths) matched together: ~4 MB of float64


def _match_groups(dets: list[np.ndarray], trues: list[np.ndarray]) -> list[np.ndarray]:
    """Per group, [n_det, n_thresholds] whether each detection (sorted by score) is a true positive at each IoU
    threshold. Groups of similar size are padded into [groups, D, G] blocks (padding has IoU -1, never a match);
    rank j's detections of every group and threshold take, at once, their best untaken truth."""
    out = [np.zeros((len(d), len(IOU_THRESHOLDS)), dtype=bool) for d in dets]
    todo = sorted((i for i in range(len(dets)) if len(dets[i]) and len(trues[i])),
                  key=lambda i: (len(dets[i]), len(trues[i])))
    thresholds = IOU_THRESHOLDS - 1e-10  # pycocotools compares with min(thr, 1 - 1e-10)
    start = 0
    while start < len(todo):
        end, d_max, g_max = start, 0, 0
        while end < len(todo):
            d, g = max(d_max, len(dets[todo[end]])), max(g_max, len(trues[todo[end]]))
            if end > start and (end - start + 1) * d * g > MATCH_CHUNK:
                break
            d_max, g_max, end = d, g, end + 1
        block = todo[start:end]
        d_pad, t_pad = np.zeros((len(block), d_max, 4)), np.zeros((len(block), g_max, 4))
        valid = np.zeros((len(block), d_max, g_max), dtype=bool)
        for b, i in enumerate(block):
            d_pad[b, :len(dets[i])], t_pad[b, :len(trues[i])] = dets[i], trues[i]
            valid[b, :len(dets[i]), :len(trues[i])] = True
        iou = np.where(valid, _batched_iou(d_pad, t_pad), -1.0)
        taken = np.zeros((len(block), len(thresholds), g_max), dtype=bool)
        tp = np.zeros((len(block), d_max, len(thresholds)), dtype=bool)
        for j in range(d_max):
            candidates = np.where(taken, -1.0, iou[:, j, None, :])  # [groups, thresholds, truths]
            best = candidates.argmax(axis=2)
            hit = np.take_along_axis(candidates, best[..., None], axis=2)[..., 0] >= thresholds
            tp[:, j] = hit
            g_idx, t_idx = np.nonzero(hit)
            taken[g_idx, t_idx, best[g_idx, t_idx]] = True
        for b, i in enumerate(block):
            out[i] = tp[b, :len(dets[i])]
        start = end
    return out


def _batched_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, d, g] IoU of [n, d, 4] and [n, g, 4] xyxy boxes (iou_matrix per leading index)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = np.maximum(a[:, :, None, :2], b[:, None, :, :2])
    rb = np.minimum(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=3)
    union = area_a[:, :, None] + area_b[:, None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _interpolated_ap(tp: np.ndarray, n_true: int) -> np.ndarray:
    """Per IoU threshold (a column of tp, detections by descending score), COCO's 101-point interpolated AP."""
    tps, fps = np.cumsum(tp, axis=0), np.cumsum(~tp, axis=0)
    recall = tps / n_true
    precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
    precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]  # the envelope
    q = np.zeros((tp.shape[1], len(RECALL_POINTS)))
    for ti in range(tp.shape[1]):
        idx = np.searchsorted(recall[:, ti], RECALL_POINTS, side="left")
        ok = idx < len(precision)
        q[ti, ok] = precision[idx[ok], ti]
    return q.mean(axis=1)
