"""Boxes: views undone exactly, WBF of agreeing boxes, and mAP checked against pycocotools."""

import numpy as np
import pytest
import torch

from pipeline.scoring.tta import VIEWS
from pipeline.tasks.detection.boxes import (
    Detections,
    fuse,
    iou_matrix,
    mean_average_precision,
    to_xyxy,
    unview_boxes,
    view_boxes,
)

BOX_VIEWS = ["identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "antitranspose"]


def random_boxes(rng, n, side):
    xy = rng.uniform(0, side * 0.7, (n, 2))
    wh = rng.uniform(2, side * 0.3, (n, 2))
    return np.hstack([xy, xy + wh])


@pytest.mark.parametrize("view", BOX_VIEWS)
def test_view_then_unview_is_identity(view):
    boxes = random_boxes(np.random.default_rng(0), 20, 64)
    np.testing.assert_allclose(unview_boxes(view_boxes(boxes, view, 64), view, 64), boxes, atol=1e-9)


@pytest.mark.parametrize("view", BOX_VIEWS)
def test_box_maps_follow_the_image_views(view):
    """Draw a box, apply the image view from pipeline.scoring.tta, read the box back off the pixels."""
    side, (x1, y1, x2, y2) = 32, (3, 5, 12, 20)
    image = torch.zeros(1, 1, side, side)
    image[..., y1:y2, x1:x2] = 1
    turned = VIEWS[view].apply(image)[0, 0]
    ys, xs = torch.nonzero(turned, as_tuple=True)
    seen = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float64)
    np.testing.assert_allclose(view_boxes(np.array([[x1, y1, x2, y2]], float), view, side), seen)


def test_xywh_to_xyxy():
    np.testing.assert_array_equal(to_xyxy([[10, 20, 5, 8]], "xywh"), [[10, 20, 15, 28]])


def test_wbf_of_identical_boxes_returns_them():
    boxes = np.array([[0.1, 0.1, 0.4, 0.5], [0.6, 0.5, 0.9, 0.95]], np.float32)
    det = Detections(boxes, np.array([0.9, 0.7], np.float32), np.array([0, 1]), (100, 80))
    fused = fuse([det, det, det], iou_thr=0.55)
    np.testing.assert_allclose(fused.boxes, boxes, atol=1e-6)
    np.testing.assert_allclose(fused.scores, [0.9, 0.7], atol=1e-6)
    np.testing.assert_array_equal(fused.labels, [0, 1])
    assert fused.size == (100, 80)


def test_wbf_lowers_the_score_of_a_box_only_one_view_found():
    box = np.array([[0.1, 0.1, 0.4, 0.5]], np.float32)
    found = Detections(box, np.array([0.8], np.float32), np.array([0]), (10, 10))
    fused = fuse([found, Detections.empty((10, 10))])
    np.testing.assert_allclose(fused.scores, [0.4], atol=1e-6)


def test_iou():
    a = np.array([[0, 0, 2, 2]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 7, 1.0, 0.0]])


def fixed_example(seed=0, images=12, classes=3):
    """Ground truth and noisy detections (misses, duplicates, false positives) in pixels."""
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    for _ in range(images):
        n = int(rng.integers(0, 5))
        boxes = random_boxes(rng, n, 200)
        labels = rng.integers(0, classes, n)
        truths.append((boxes, labels))
        keep = rng.random(n) > 0.2
        jitter = boxes[keep] + rng.normal(0, 3, (keep.sum(), 4))
        extra = random_boxes(rng, int(rng.integers(0, 4)), 200)
        det_boxes = np.vstack([jitter, jitter[:1] + 2, extra])
        det_labels = np.concatenate([labels[keep], labels[keep][:1], rng.integers(0, classes, len(extra))])
        scores = rng.uniform(0.05, 1, len(det_boxes))
        preds.append(Detections(det_boxes.astype(np.float32), scores.astype(np.float32), det_labels, (200, 200)))
    return truths, preds


@pytest.mark.parametrize("seed", [0, 2, 3, 4])
def test_map_matches_pycocotools(seed):
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    truths, preds = fixed_example(seed=seed)
    images, annotations, detections = [], [], []
    for i, ((boxes, labels), det) in enumerate(zip(truths, preds, strict=True)):
        images.append({"id": i, "width": 200, "height": 200})
        for b, c in zip(boxes, labels, strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        for b, s, c in zip(det.boxes, det.scores, det.labels, strict=True):
            detections.append({"image_id": i, "category_id": int(c), "score": float(s),
                               "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    gt = coco_mod.COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in range(3)]}
    gt.createIndex()
    ev = cocoeval.COCOeval(gt, gt.loadRes(detections), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    ours = mean_average_precision(preds, truths)
    assert ours["map"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-6)
    assert 0.2 < ours["map50"] < 1.0  # a case with both hits and misses


def test_perfect_detections_score_one():
    truths, _ = fixed_example(seed=1)
    preds = [Detections(b.astype(np.float32), np.ones(len(b), np.float32), c, (1, 1)) for b, c in truths]
    assert mean_average_precision(preds, truths) == {"map50": 1.0, "map": 1.0}


def test_fusing_one_member_changes_nothing_and_members_are_not_fused_with_themselves():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5]], np.float32)  # IoU ~0.9: one model's duplicate
    det = Detections(boxes, np.array([0.9, 0.2], np.float32), np.array([0, 0]), (10, 10))
    assert fuse([det]) is det
    fused = fuse([det, det])
    np.testing.assert_allclose(fused.boxes, boxes[:1], atol=1e-6)  # the duplicate is suppressed, not averaged in
    np.testing.assert_allclose(fused.scores, [0.9], atol=1e-6)
