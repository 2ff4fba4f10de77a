"""Every task keeps the Task contract: one training step, inference, the prediction-file round trip and a
valid submission, on each task's own embedded competition (small); and the stages call nothing outside it."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.data.folds import load_folds
from pipeline.data.submission import check_rows, read_sample
from pipeline.data.tables import build_loader
from pipeline.engine.loop import infer, train_epoch
from pipeline.engine.state import TrainingState
from pipeline.stages import prepare
from pipeline.tasks import TASKS, Task, build_task
from pipeline.tasks.detection.demo_data import write_digit_boxes_competition
from pipeline.tasks.segmentation.demo_data import write_digit_masks_competition
from pipeline.tasks.sequence.demo_data import write_digit_series_competition

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
COMMON = {"cv": {"folds": 2}, "tracking": {"wandb": "disabled", "quiet": True}}
SETUPS = {  # per task: its competition (written by the task's own demo writer) and a tiny recipe
    "classification": (None, {"model": {"name": "test_resnet"}, "image": {"size": 32},
                              "train": {"batch_size": 8, "num_workers": 0}}),
    "detection": (lambda root: write_digit_boxes_competition(root, n_images=16),
                  {"data": {"id_col": "image", "target_col": "label", "box_cols": ["x", "y", "w", "h"],
                            "box_format": "xywh"},
                   "model": {"name": "test_efficientnet"}, "image": {"size": 64}, "detect": {"fpn_channels": 32},
                   "train": {"batch_size": 4, "num_workers": 0, "metric": "map50"}}),
    "sequence": (write_digit_series_competition,
                 {"data": {"id_col": "series_id", "target_col": "label", "labels_csv": "train_labels.csv",
                           "step_col": "step"},
                  "model": {"name": "gru"}, "sequence": {"dim": 8, "hidden": 8, "layers": 1},
                  "train": {"batch_size": 8, "num_workers": 0}}),
    "segmentation": (lambda root: write_digit_masks_competition(root, n_train=24, n_test=8),
                     {"data": {"id_col": "id", "target_col": "rle_mask", "image_dir": "images", "image_ext": ".png"},
                      "model": {"name": "test_resnet", "pretrained": False}, "image": {"size": 32},
                      "train": {"batch_size": 8, "num_workers": 0, "metric": "iou_map"}}),
}


@pytest.fixture(params=sorted(TASKS))
def task_setup(request, digits_root, tmp_path, make_config):
    name = request.param
    write, sections = SETUPS[name]
    root = digits_root if write is None else write(tmp_path / "data")
    _, cfg = make_config(root, name=name, base={"task": name, **COMMON, **sections})
    prepare.run(cfg)
    return cfg, load_folds(cfg)


def test_a_task_trains_predicts_round_trips_and_submits(task_setup):
    cfg, folds = task_setup
    torch.manual_seed(0)
    task = build_task(cfg, folds.classes)
    assert isinstance(task, Task) and task.metric.name == cfg.train.metric
    train_rows, valid_rows = folds.split(0)
    task.fit_fold(train_rows)
    model = task.build_model()
    loader = build_loader(task.build_dataset(train_rows, train=True), cfg, True, cfg.train.batch_size)
    state = TrainingState.build(model, cfg, 1, torch.device("cpu"), torch.float32, task.memory_format)
    before = [p.detach().clone() for p in model.parameters()]
    loss, samples = train_epoch(task, state, loader, cfg, epoch=0, max_steps=1)
    assert np.isfinite(loss) and samples == cfg.train.batch_size and state.progress.step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # the step moved weights

    valid = valid_rows.head(6)
    dataset = task.build_dataset(valid, train=False)
    views = task.views("none")
    outputs = infer(task, model, build_loader(dataset, cfg, False, 4), state.device, state.dtype, views)
    assert len(outputs) == len(views)
    scores = task.evaluate(outputs[0], dataset.labels)
    assert np.isfinite(scores["score"])

    frame = task.prediction_frame(valid, task.merge(list(outputs)))
    assert list(frame["id"]) == list(valid["id"]) and "fold" in frame
    again = task.prediction_frame(frame, task.read_outputs(frame))  # read_outputs inverts prediction_frame
    pd.testing.assert_frame_equal(again, frame)
    assert task.evaluate(task.read_outputs(frame), task.targets(frame)) == task.evaluate(task.merge(list(outputs)),
                                                                                        dataset.labels)

    test = TASKS[cfg.task].test_table(cfg).rename(columns={cfg.data.id_col: "id"})[["id"]]
    test_outputs = infer(task, model, build_loader(task.build_dataset(test, train=False), cfg, False, 8),
                         state.device, state.dtype, views)
    sample = read_sample(cfg)
    sub = task.submission(task.prediction_frame(test, task.merge(list(test_outputs))), sample)
    check_rows(sub, sample, cfg)
    task.check_submission(sub, sample)


def test_stages_call_only_methods_of_the_task_contract():
    """Whatever a shared module calls on a task (task.<name>) is declared on Task, so a new task that implements
    the contract is a complete task."""
    calls = set()
    for path in PACKAGE.rglob("*.py"):
        if "tasks" not in path.relative_to(PACKAGE).parts:
            calls |= set(re.findall(r"(?<![\w.])task\.(\w+)", path.read_text()))
    assert calls, "the scan found no calls: has the variable been renamed?"
    missing = sorted(c for c in calls if not hasattr(Task, c) and c not in Task.__annotations__)
    assert not missing, f"called on tasks but not in the Task contract: {missing}"
