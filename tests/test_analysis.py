import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.images import image_sizes
from pipeline.reporting.analysis import (
    calibration_bins,
    confused_pairs,
    confusion_frame,
    expected_calibration_error,
    fold_metrics,
    highest_loss,
    per_class_report,
)
from pipeline.tasks.detection.report import detection_errors

CLASSES = ["cat", "dog", "eel"]
TRUTH = np.array([0, 0, 0, 0, 1, 1, 2, 2])
PRED = np.array([0, 0, 1, 1, 1, 0, 2, 1])


def test_image_sizes_reads_headers_of_any_mode(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    Image.new("L", (7, 90)).save(tmp_path / "b.jpg")
    sizes = image_sizes([tmp_path / "a.png", tmp_path / "b.jpg"])
    assert sizes.to_dict("list") == {"width": [40, 7], "height": [30, 90], "mode": ["RGB", "L"]}


def test_confusion_frame_counts_and_row_normalisation():
    counts = confusion_frame(TRUTH, PRED, CLASSES)
    assert counts.loc["cat"].tolist() == [2, 2, 0] and counts.loc["eel", "dog"] == 1
    assert counts.to_numpy().sum() == len(TRUTH)
    rates = confusion_frame(TRUTH, PRED, CLASSES + ["fox"], normalise=True)  # fox: no rows, no division by zero
    assert np.allclose(rates.to_numpy().sum(axis=1), [1, 1, 1, 0])
    assert rates.loc["cat", "cat"] == 0.5 and rates.index.name == "true" and rates.columns.name == "predicted"


def test_per_class_report_matches_sklearn_rows_and_accuracy():
    report = per_class_report(TRUTH, PRED, CLASSES)
    assert report.index.tolist() == [*CLASSES, "accuracy", "macro avg", "weighted avg"]
    assert report.loc["dog", "precision"] == pytest.approx(1 / 4)  # 4 predicted dog, 1 of them right
    assert report.loc["cat", "recall"] == pytest.approx(2 / 4)
    assert report.loc["accuracy", "f1-score"] == pytest.approx((PRED == TRUTH).mean())
    assert report["support"].tolist() == [4, 2, 2, 8, 8, 8]


def test_confused_pairs_most_frequent_first_with_share_of_true_class():
    pairs = confused_pairs(TRUTH, PRED, CLASSES)
    assert pairs.iloc[0][["true", "predicted", "count"]].tolist() == ["cat", "dog", 2]
    assert pairs.iloc[0]["share of true"] == pytest.approx(0.5)
    assert set(zip(pairs["true"], pairs["predicted"], strict=True)) == {("cat", "dog"), ("dog", "cat"), ("eel", "dog")}
    assert len(confused_pairs(TRUTH, PRED, CLASSES, top=1)) == 1


def test_highest_loss_orders_rows_by_cross_entropy():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 1.0], [0.6, 0.4]])
    worst = highest_loss(np.array([0, 0, 0, 1]), probs, n=3)
    assert worst.index.tolist() == [2, 1, 3]  # p_true 0 (clipped, not inf), then 0.2, then 0.4
    assert worst["loss"].iloc[0] == pytest.approx(-np.log(1e-15))
    assert worst.loc[1, ["pred", "p_pred", "p_true"]].tolist() == pytest.approx([1, 0.8, 0.2])


def test_calibration_bins_and_ece():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45], [0.5, 0.5]])
    truth = np.array([0, 1, 0, 0, 0])
    bins = calibration_bins(truth, probs, bins=10)
    assert bins["rows"].sum() == len(truth)
    top = bins.iloc[-1]
    assert (top["low"], top["high"], top["rows"]) == pytest.approx((0.9, 1.0, 2))
    assert (top["confidence"], top["accuracy"]) == pytest.approx((0.95, 0.5))
    # |0.5 - 0.95| on 2 rows, |1 - 0.55| on 2 rows, |1 - 0.5| on 1 row (0.5 belongs to [0.4, 0.5])
    assert expected_calibration_error(truth, probs, bins=10) == pytest.approx((2 * 0.45 + 2 * 0.45 + 0.5) / 5)
    perfect = np.eye(2)[truth]
    assert expected_calibration_error(truth, perfect) == 0.0


def test_fold_metrics_joins_folds_in_numeric_order(tmp_path):
    assert fold_metrics(tmp_path).empty
    for k in (10, 2):
        (tmp_path / f"fold{k}").mkdir()
        pd.DataFrame({"epoch": [0, 1], "valid/score": [0.5, 0.6]}).to_csv(tmp_path / f"fold{k}" / "metrics.csv", index=False)
    metrics = fold_metrics(tmp_path)
    assert metrics["fold"].tolist() == [2, 2, 10, 10] and metrics["epoch"].tolist() == [0, 1, 0, 1]


def test_detection_errors_count_missed_objects_and_false_detections():
    from pipeline.tasks.detection.boxes import Detections

    truth = (np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]]), np.array([0, 1]))
    det = Detections(boxes=np.array([[0.1, 0.1, 0.4, 0.42], [0.5, 0.5, 0.9, 0.9], [0.12, 0.1, 0.4, 0.4],
                                     [0.0, 0.0, 0.05, 0.05]], np.float32),
                     scores=np.array([0.9, 0.8, 0.7, 0.3], np.float32), labels=np.array([0, 0, 0, 0]), size=(100, 100))
    # box 0 matches the class-0 object; box 1 sits on the class-1 object with the wrong class; box 2 is a second
    # detection of the taken object; box 3 is below the score threshold
    row = detection_errors([det], [truth], score_thr=0.5).iloc[0].to_dict()
    assert row == {"true": 2, "detected": 3, "missed": 1, "false": 2}
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), (10, 10))
    assert detection_errors([empty], [truth]).iloc[0].to_dict() == {"true": 2, "detected": 0, "missed": 2, "false": 0}
