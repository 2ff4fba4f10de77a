"""Detection: bad boxes named by row, letterbox geometry, one training step, and all five stages via the CLI."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.stages import prepare
from pipeline.tasks import build_task
from pipeline.tasks.detection import DetectionTask
from pipeline.tasks.detection.boxes import Detections, mean_average_precision
from pipeline.tasks.detection.demo_data import write_digit_boxes_competition
from pipeline.tasks.detection.submission import check_boxes, parse_boxes
from tests.conftest import assert_export_submits_the_same, cli, invoke

DETECT = {
    "task": "detection",
    "data": {"id_col": "image", "target_col": "label", "box_cols": ["x", "y", "w", "h"], "box_format": "xywh"},
    "model": {"name": "test_efficientnet"},
    "image": {"size": 64},
    "cv": {"folds": 2},
    "augment": {"hflip": 0.0, "color_jitter": 0.0},
    "detect": {"fpn_channels": 32},
    "train": {"epochs": 1, "batch_size": 8, "num_workers": 0, "metric": "map50", "keep_top": 0, "base_lr": 1e-2},
    "predict": {"tta": "flips"},
    "tracking": {"wandb": "disabled", "quiet": True},
}


@pytest.fixture(scope="module")
def boxes_root(tmp_path_factory):
    return write_digit_boxes_competition(tmp_path_factory.mktemp("boxes"), n_images=30)


@pytest.fixture
def box_competition(boxes_root, tmp_path):
    return shutil.copytree(boxes_root, tmp_path / "boxes")


def damage(root, row: int, **values):
    train = pd.read_csv(root / "train.csv")
    for col, v in values.items():
        train[col] = train[col].astype(object)
        train.loc[row, col] = v
    train.to_csv(root / "train.csv", index=False)


@pytest.mark.parametrize("values, message", [
    ({"w": -5}, "no area"),
    ({"x": 5000}, "outside their image"),
    ({"label": "digit_5"}, "not in data.classes"),
    ({"y": None}, "some coordinates missing"),
    ({"h": "wide"}, "non-numeric values in column 'h'"),
])
def test_bad_box_is_named_by_line(box_competition, make_config, values, message):
    damage(box_competition, 3, **values)
    _, cfg = make_config(box_competition, base=DETECT, data={"classes": ["digit_0", "digit_1", "digit_8"]})
    with pytest.raises(UserError, match=message) as err:
        prepare.run(cfg)
    assert "5" in str(err.value)  # data row 3 is line 5 of train.csv (header, 0-based rows)
    assert not (cfg.run_dir / "folds.csv").exists()


def test_images_without_boxes_are_kept(box_competition, make_config):
    _, cfg = make_config(box_competition, base=DETECT)
    samples, classes = DetectionTask.sample_table(cfg)
    train = pd.read_csv(box_competition / "train.csv")
    assert len(samples) == train["image"].nunique() and classes == ["digit_0", "digit_1", "digit_8"]
    empty = train.loc[train["x"].isna(), "image"]
    assert len(empty) and samples.set_index("image").loc[empty, "label"].str.endswith("|0").all()


def test_letterbox_keeps_boxes_on_the_objects(box_competition, make_config):
    _, cfg = make_config(box_competition, base=DETECT)
    prepare.run(cfg)
    folds = pd.read_csv(cfg.run_dir / "folds.csv")
    task = build_task(cfg, ["digit_0", "digit_1", "digit_8"])
    task.build_model()
    dataset = task.build_dataset(folds, train=False)
    for i in range(5):
        image, target, (w, h, nw, nh) = dataset[i]
        truth_boxes, truth_labels = dataset.labels[i]
        assert image.shape == (3, 64, 64) and max(nw, nh) == 64
        np.testing.assert_allclose(target["boxes"].numpy() / np.array([nw, nh, nw, nh]), truth_boxes, atol=1e-5)
        np.testing.assert_array_equal(target["labels"].numpy(), truth_labels)
        assert image[:, int(nh):, :].abs().sum() == 0 and image[:, :, int(nw):].abs().sum() == 0  # padding


def test_one_training_step_changes_the_weights(box_competition, make_config):
    _, cfg = make_config(box_competition, base=DETECT)
    prepare.run(cfg)
    folds = pd.read_csv(cfg.run_dir / "folds.csv")
    task = build_task(cfg, ["digit_0", "digit_1", "digit_8"])
    model = task.build_model()
    dataset = task.build_dataset(folds, train=True)
    batch = dataset.collate([dataset[i] for i in range(4)])
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    loss = task.loss(model, task.to_device(batch, torch.device("cpu")))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.isfinite(loss) and loss > 0
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)) > 10


def test_submission_strings_are_checked():
    cfg = load_config(None, ["task=detection"])
    good = pd.DataFrame({"image": ["a", "b"], "PredictionString": ["0.9 1 2 3 4 0.5 5 6 7 8", ""]})
    check_boxes(good, cfg)
    assert parse_boxes(good["PredictionString"][0], cfg.detect.submit_format)[1] == \
        {"score": 0.5, "x1": 5.0, "y1": 6.0, "x2": 12.0, "y2": 14.0, "label": None}
    for bad in ("0.9 1 2 3", "0.9 1 2 3 x"):
        with pytest.raises(UserError, match="row 2"):
            check_boxes(pd.DataFrame({"image": ["a"], "PredictionString": [bad]}), cfg)


def map50(oof: pd.DataFrame, max_det: int) -> float:
    """mAP@0.5 of an OOF frame's boxes against its true boxes, read straight from the parquet columns."""
    found = [Detections(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32), np.asarray(lab, np.int64),
                        (int(w), int(h)))
             for b, s, lab, w, h in zip(oof["boxes"], oof["scores"], oof["labels"], oof["width"], oof["height"], strict=True)]
    truths = [(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lab, np.int64))
              for b, lab in zip(oof["true_boxes"], oof["true_labels"], strict=True)]
    return mean_average_precision(found, truths, max_det)["map50"]


def test_detection_through_the_cli(box_competition, make_config, tmp_path):
    path_a, cfg_a = make_config(box_competition, base=DETECT, name="a")
    path_b, _ = make_config(box_competition, base=DETECT, name="b", detect={"fpn_channels": 64}, predict={"tta": "none"})
    for path in (path_a, path_b):
        cli("prepare", "--config", path)
        cli("train", "--config", path, "--fold", "all")
        cli("predict", "--config", path)
    scores = json.loads((cfg_a.run_dir / "scores.json").read_text())
    assert scores["metric"] == "map50" and set(scores["folds"]) == {"0", "1"}
    oof = pd.read_parquet(cfg_a.run_dir / "oof.parquet")
    assert {"boxes", "scores", "labels", "true_boxes", "width", "height"} <= set(oof.columns)
    # the CV is the OOF file's: mAP@0.5 (checked against pycocotools in test_boxes) recomputed from its columns
    assert scores["cv"] == pytest.approx(map50(oof, cfg_a.detect.max_det))
    assert {str(k): pytest.approx(map50(g, cfg_a.detect.max_det)) for k, g in oof.groupby("fold")} == scores["folds"]
    runs = cfg_a.runs_dir
    cli("ensemble", "a", "b", "--method", "weighted", "--name", "fused", "--runs-dir", runs)
    fused = json.loads((tmp_path / "runs/fused/weights.json").read_text())
    assert sum(fused["weights"].values()) == pytest.approx(1.0)
    assert fused["iou_thr"] in (cfg_a.detect.wbf_iou, 0.4, 0.5, 0.6, 0.7)  # the default or a value of tune_fusion's grid
    result = invoke("ensemble", "a", "b", "--method", "stack", "--runs-dir", runs)
    assert result.exit_code == 2 and "fuse boxes" in result.output
    cli("submit", "fused", "--runs-dir", runs)
    sub = pd.read_csv(tmp_path / "subs/fused.csv")
    sample = pd.read_csv(box_competition / "sample_submission.csv")
    assert sub["image"].tolist() == sample["image"].tolist() and list(sub.columns) == ["image", "PredictionString"]
    assert_export_submits_the_same(runs, "fused", box_competition, tmp_path)  # boxes fused as the ensemble fused them
    cli("report", "a", "--runs-dir", runs)  # predicted against true boxes on the worst OOF images
    page = (cfg_a.run_dir / "report.html").read_text()
    assert "<h2>Out-of-fold boxes</h2>" in page and "true boxes" in page
    assert (cfg_a.run_dir / "report/boxes.png").stat().st_size > 10_000
