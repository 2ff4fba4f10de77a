"""Fitted blends (hill climbing, stacking, detection's tuned WBF) replace equal weights only when their held-out gain
over the mean exceeds its noise (pipeline.scoring.noise): a one-row win on 36 rows falls back, a real gain on thousands stays."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import load_config
from pipeline.scoring import noise
from pipeline.scoring.blend import (
    applied_method,
    apply_blend,
    blend_outputs,
    blend_probabilities,
    blend_without_fold,
    combine,
    combine_columns,
    fit_weights,
    hill_climb,
)
from pipeline.scoring.metrics import CLASS_METRICS
from pipeline.scoring.noise import describe, paired_noise
from pipeline.scoring.targets import build_target
from pipeline.stages import ensemble, predict
from pipeline.tasks.detection import DetectionTask
from pipeline.tasks.detection.boxes import Detections
from tests.conftest import assert_export_submits_the_same, copy_run_to

ACC = CLASS_METRICS["accuracy"]


def mean_difference_se(d: np.ndarray) -> float:
    """The standard error of a mean of per-row differences: what a paired bootstrap of a row-mean metric estimates."""
    return float(np.sqrt(np.mean(d ** 2) - np.mean(d) ** 2) / np.sqrt(len(d)))


def test_paired_noise_is_the_standard_error_of_the_difference_and_deterministic():
    rng = np.random.default_rng(0)
    for n in (500, 100_000):  # 100k rows: 20k drawn per resample, the SE scaled back to 100k rows
        right_a, right_b = rng.random(n) < 0.80, rng.random(n) < 0.78
        def diff(rows, a=right_a, b=right_b):
            return a[rows].mean() - b[rows].mean()
        se = mean_difference_se(right_a.astype(float) - right_b)
        assert paired_noise(diff, n) == pytest.approx(se, rel=0.2)
        assert paired_noise(diff, n) == paired_noise(diff, n)  # seeded: the same answer every run
    same = rng.random(300) < 0.5
    assert paired_noise(lambda rows: same[rows].mean() - same[rows].mean(), 300) == 0.0  # paired: no noise


def one_row_win() -> tuple[np.ndarray, list[np.ndarray]]:
    """36 rows, 2 classes: A (33/36) and B (32/36) disagree on 7 rows; A wins 4 of them, B (confident) 3, so the mean
    (32/36) is wrong where A alone is right: A beats the mean by one row."""
    n = 36
    truth = np.arange(n) % 2
    q_a, q_b = np.full(n, 0.95), np.full(n, 0.7)  # each member's probability of the true class
    q_a[[0, 1, 2, 3]], q_b[[0, 1, 2, 3]] = 0.6, 0.2
    q_a[[5, 6, 8]], q_b[[5, 6, 8]] = 0.4, 0.9
    members = []
    for q in (q_a, q_b):
        p = np.empty((n, 2), np.float32)
        p[np.arange(n), truth], p[np.arange(n), 1 - truth] = q, 1 - q
        members.append(p)
    return truth, members


def test_a_one_row_win_on_36_rows_falls_back_to_equal_weights():
    truth, members = one_row_win()
    folds = np.arange(36) % 5  # 5 folds of 7 or 8 rows
    mean = combine("mean", members, np.full(2, 0.5))
    assert [ACC(truth, p) * 36 for p in (*members, mean)] == [33, 32, 32]
    assert np.array_equal(hill_climb("weighted", members, truth, ACC), [1.0, 0.0])  # the climb keeps A alone
    w, held_out, params = fit_weights(members, truth, folds, ACC)
    assert np.array_equal(w, [0.5, 0.5]) and held_out is None
    # held out, A alone still wins by a row: the old rule (any held-out gain) would have kept the climbed weights
    assert params["weights_from"] == "uniform" and params["fitted_by"] == "hill climbing"
    assert (params["fitted_held_out"], params["mean_cv"]) == (pytest.approx(33 / 36), pytest.approx(32 / 36))
    assert params["gain"] == pytest.approx(1 / 36)
    # the per-row difference A - mean is +1 on 4 rows and -1 on 3: its SE is 0.073, not the 0.028 of one row
    assert params["noise"] == pytest.approx(mean_difference_se(np.array([1] * 4 + [-1] * 3 + [0] * 29)), rel=0.2)
    line = describe(params, 36)
    assert line.startswith("hill-climbed weights: held-out 0.9167 vs mean 0.8889, gain +0.0278 <= noise 0.0")
    assert line.endswith("(1 SE, paired bootstrap over 36 OOF rows): equal weights")
    blend = blend_probabilities("weighted", members, members, truth, folds, ACC)
    assert blend.held_out is None and np.array_equal(blend.oof, mean) and np.array_equal(blend.test, mean)
    assert blend.params == params


def noisy_members(rng, target, n_classes, strengths):
    out = []
    for s in strengths:
        logits = rng.normal(size=(len(target), n_classes))
        logits[np.arange(len(target)), target] += s
        p = np.exp(logits)
        out.append((p / p.sum(1, keepdims=True)).astype(np.float32))
    return out


def test_a_clear_gain_on_thousands_of_rows_keeps_the_climbed_weights():
    rng = np.random.default_rng(5)
    target = rng.integers(0, 5, 5000)
    members = noisy_members(rng, target, 5, [2.0, 1.0, 0.0])
    folds = np.arange(5000) % 5
    w, held_out, params = fit_weights(members, target, folds, ACC)
    assert params["weights_from"] == "hill climbing" and np.array_equal(w, hill_climb("weighted", members, target, ACC))
    assert params["gain"] > params["noise"] > 0 and params["noise"] < 0.01
    mean = combine("mean", members, np.full(3, 1 / 3))
    right = (held_out.argmax(1) == target).astype(float) - (mean.argmax(1) == target)
    assert params["noise"] == pytest.approx(mean_difference_se(right), rel=0.2)
    assert describe(params, 5000).endswith(": kept")


def binary_members(seed: int, n: int, strengths) -> tuple[np.ndarray, list[np.ndarray]]:
    """Balanced 0/1 truths and one sigmoid probability column per member, leaning toward the truth by its strength."""
    rng = np.random.default_rng(seed)
    truth = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(truth)
    return truth, [(1 / (1 + np.exp(-(s * (2 * truth - 1) + rng.normal(size=n))))).astype(np.float32)[:, None]
                   for s in strengths]


@pytest.mark.parametrize("method, fitted_by", [("weighted", "hill climbing"), ("stack", "stacking")])
def test_binary_blends_fall_back_on_36_rows_and_keep_a_real_gain(method, fitted_by):
    cfg = load_config(None, ["data.target_type=binary", "train.metric=roc_auc"])
    target = build_target(cfg, ["neg", "pos"])
    metric = target.bound_metric()
    truth, members = binary_members(18, 36, (1.0, 0.2))  # B is nearly noise
    tests = [m[:10] for m in members]
    blend = blend_outputs(method, members, tests, truth, np.arange(36) % 5, metric, target)
    p = blend.params
    assert p["fitted_by"] == fitted_by and 0 < p["gain"] <= p["noise"]  # fitted won held out, within the noise
    assert p["weights_from"] == "uniform" and blend.held_out is None and blend.stacker is None
    assert np.array_equal(blend.weights, [0.5, 0.5])
    assert np.array_equal(blend.oof, combine_columns("mean", members, blend.weights))
    assert np.array_equal(blend.test, combine_columns("mean", tests, blend.weights))
    assert metric(truth, blend.oof) == p["mean_cv"]

    truth, members = binary_members(0, 4000, (1.5, 0.0))  # B is pure noise, which the mean cannot ignore
    blend = blend_outputs(method, members, members, truth, np.arange(4000) % 5, metric, target)
    p = blend.params
    assert p["weights_from"] == fitted_by and p["gain"] > 5 * p["noise"] > 0
    assert blend.held_out == p["fitted_held_out"] == metric(truth, blend.oof)
    assert (blend.stacker is not None) == (method == "stack")


def test_a_stack_that_fell_back_is_applied_as_the_mean_out_of_fold_and_on_new_tests():
    cfg = load_config(None, ["data.target_type=binary", "train.metric=roc_auc"])
    target = build_target(cfg, ["neg", "pos"])
    truth, members = binary_members(18, 36, (1.0, 0.2))
    folds = np.arange(36) % 5
    blend = blend_outputs("stack", members, members, truth, folds, target.bound_metric(), target)
    fitted = json.loads(json.dumps({"method": "stack", **blend.params, "weights": blend.weights.tolist(),
                                    "stacker": blend.stacker}))  # as weights.json holds it
    assert fitted["weights_from"] == "uniform" and applied_method(fitted) == "mean"
    rng = np.random.default_rng(1)
    new = [rng.random((20, 1)).astype(np.float32) for _ in members]
    mean = combine_columns("mean", new, np.full(2, 0.5))
    assert np.array_equal(apply_blend(applied_method(fitted), new, fitted["weights"], None, columns=True), mean)
    for k in range(5):  # a student's targets (pipeline distill): the mean too, whichever fold
        assert np.array_equal(blend_without_fold(fitted, members, truth, folds, k, new, target.bound_metric(), target),
                              mean)


def test_a_stack_that_fell_back_exports_and_infers_as_the_mean(trained_run, tmp_path, digits_root, monkeypatch,
                                                                caplog):
    """weights.json of a stack that fell back holds no stacker: submit, export and infer all blend the mean."""
    caplog.set_level(logging.INFO, logger="pipeline")
    monkeypatch.setattr(noise, "beats_noise", lambda gain, se: False)
    copy_run_to(trained_run, tmp_path, "a")
    predict.run(copy_run_to(trained_run, tmp_path, "b"), tta="flips")
    runs = tmp_path / "runs"
    stacked = ensemble.run(["a", "b"], method="stack", name="stacked", runs_dir=str(runs))
    mean = ensemble.run(["a", "b"], method="mean", name="mean", runs_dir=str(runs))
    fitted = json.loads((runs / "stacked/weights.json").read_text())
    assert fitted["method"] == "stack" and fitted["weights_from"] == "uniform" and fitted["stacker"] is None
    assert stacked["cv"] == mean["cv"] and stacked["cv_held_out"] is None and "noise" in stacked
    assert f"stacked meta-model: held-out {stacked['fitted_held_out']:.4f} vs mean {mean['cv']:.4f}" in caplog.text
    assert "(1 SE, paired bootstrap over 150 OOF rows): equal weights" in caplog.text
    for part in ("oof", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(runs / f"stacked/{part}.parquet"),
                                      pd.read_parquet(runs / f"mean/{part}.parquet"))
    assert_export_submits_the_same(runs, "stacked", digits_root, tmp_path)


def detection_scene(seed: int, n: int, jitter_b: float, extra_b: int):
    """n images of 1-3 boxes of 2 classes; member A finds them all (jitter 0.01), member B with `jitter_b` and
    `extra_b` false boxes per image."""
    rng = np.random.default_rng(seed)
    truths, a, b = [], [], []
    for _ in range(n):
        k = rng.integers(1, 4)
        xy = rng.random((k, 2)) * 0.6
        box = np.hstack([xy, xy + 0.1 + rng.random((k, 2)) * 0.2]).astype(np.float32)
        labels = rng.integers(0, 2, k)
        truths.append((box, labels))
        for out, jitter, extra in ((a, 0.01, 0), (b, jitter_b, extra_b)):
            boxes = box + rng.normal(scale=jitter, size=box.shape).astype(np.float32)
            scores, found = (0.5 + 0.5 * rng.random(k)).astype(np.float32), labels
            if extra:
                corner = rng.random((extra, 2)).astype(np.float32) * 0.6
                boxes = np.vstack([boxes, np.hstack([corner, corner + 0.15])])
                scores = np.concatenate([scores, rng.random(extra).astype(np.float32)])
                found = np.concatenate([labels, rng.integers(0, 2, extra)])
            out.append(Detections(np.clip(boxes, 0, 1), scores, found, (100, 100)))
    return truths, a, b


@pytest.mark.parametrize("seed, jitter_b, extra_b, kept", [(8, 0.02, 0, False), (0, 0.05, 1, True)])
def test_detection_keeps_tuned_fusion_only_above_the_noise(seed, jitter_b, extra_b, kept):
    """B almost as good as A: tuned WBF wins held out by less than its noise and mean fusion stays; B much worse:
    the tuned weights win by far more than the noise, even on 36 images."""
    task = DetectionTask(load_config(None, ["task=detection"]), ["a", "b"])
    truths, a, b = detection_scene(seed, 36, jitter_b, extra_b)
    blend = task.blend("weighted", [a, b], [a[:4], b[:4]], truths, np.arange(36) % 5)
    p = blend.params
    assert p["fitted_by"] == "tuned" and p["gain"] > 0 and p["noise"] > 0
    assert p["mean_cv"] == task.evaluate(task.merge([a, b]), truths)["score"]
    if kept:
        assert p["weights_from"] == "tuned" and p["gain"] > 3 * p["noise"]
        assert blend.held_out == p["fitted_held_out"] == task.evaluate(blend.oof, truths)["score"]
    else:
        assert p["weights_from"] == "uniform" and p["gain"] <= p["noise"] and blend.held_out is None
        assert np.array_equal(blend.weights, [0.5, 0.5])
        assert task.evaluate(blend.oof, truths)["score"] == p["mean_cv"]
        applied, mean = task.blend_test({"method": "weighted", **p}, [a[:4], b[:4]]), task.merge([a[:4], b[:4]])
        assert all(np.array_equal(x.boxes, y.boxes) and np.array_equal(x.scores, y.scores)
                   for x, y in zip(applied, mean, strict=True))
