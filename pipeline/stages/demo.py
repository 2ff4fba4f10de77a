"""`pipeline demo`: the whole loop on an embedded competition, no download, a few minutes on a CPU.

Writes scikit-learn's handwritten digits as a Kaggle competition (with a held-back solution.csv), then
prepare -> train all folds -> predict with TTA -> ensemble two experiments -> submit, and scores the
submission against the held-back answers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.boxes import Detections, mean_average_precision, to_xyxy
from pipeline.config import Config, load_config
from pipeline.demo import write_digit_boxes_competition, write_digits_competition
from pipeline.stages import ensemble, predict, prepare, submit, train
from pipeline.submission import parse_boxes

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = ("demo-resnet.yaml", "demo-effnet.yaml")
DETECTION_EXPERIMENTS = ("demo-detect.yaml", "demo-detect-wide.yaml")


def run(root: str = "data/demo-digits", runs_dir: str = "runs", submissions_dir: str = "submissions",
        overrides: list[str] | tuple[str, ...] = ()) -> dict:
    root_path = Path(root)
    if not (root_path / "solution.csv").is_file():
        write_digits_competition(root_path, size=32)
        log.info("wrote the digits competition to %s", root_path)
    common = [f"data.root={root}", f"runs_dir={runs_dir}", f"submissions_dir={submissions_dir}", *overrides]
    names = []
    for file in EXPERIMENTS:
        cfg = load_config(CONFIGS / file, common)
        prepare.run(cfg)
        train.run(cfg, fold="all")
        predict.run(cfg)
        names.append(cfg.name)
    scores = ensemble.run(names, method="weighted", name="demo-ensemble", runs_dir=runs_dir)
    path = submit.run("demo-ensemble", message="pipeline demo", runs_dir=runs_dir)
    held_back = score_against_solution(path, root_path / "solution.csv")
    members = {n: json.loads((Path(runs_dir) / n / "scores.json").read_text())["cv"] for n in names}
    summary = {"members_cv": members, "ensemble_cv": scores["cv"], "ensemble_cv_held_out_weights": scores["cv_held_out"],
               "held_back_accuracy": held_back, "submission": str(path)}
    for name, cv in members.items():
        print(f"CV accuracy {name}: {cv:.4f}")
    print(f"CV accuracy ensemble: {scores['cv']:.4f} (weights fitted on other folds: {scores['cv_held_out']:.4f})")
    print(f"held-back accuracy (solution.csv): {held_back:.4f}")
    print(f"submission: {path}")
    return summary


def score_against_solution(submission: Path, solution: Path) -> float:
    """Accuracy of a submission on the answers Kaggle would keep private."""
    sub, sol = pd.read_csv(submission), pd.read_csv(solution)
    merged = sol.merge(sub, on="image", suffixes=("_true", "_pred"), validate="one_to_one")
    return float((merged["label_true"] == merged["label_pred"]).mean())


def run_detection(root: str = "data/demo-boxes", runs_dir: str = "runs", submissions_dir: str = "submissions",
                  overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The detection loop on digits pasted onto canvases: two FCOS experiments, flip TTA and fold fusion with
    WBF, a WBF ensemble tuned on OOF mAP, a PredictionString submission scored against solution.csv."""
    root_path = Path(root)
    if not (root_path / "solution.csv").is_file():
        write_digit_boxes_competition(root_path)
        log.info("wrote the digit-boxes competition to %s", root_path)
    common = [f"data.root={root}", f"runs_dir={runs_dir}", f"submissions_dir={submissions_dir}", *overrides]
    names, cfg = [], None
    for file in DETECTION_EXPERIMENTS:
        cfg = load_config(CONFIGS / file, common)
        prepare.run(cfg)
        train.run(cfg, fold="all")
        predict.run(cfg)
        names.append(cfg.name)
    scores = ensemble.run(names, method="weighted", name="demo-detect-ensemble", runs_dir=runs_dir)
    path = submit.run("demo-detect-ensemble", message="pipeline demo --task detection", runs_dir=runs_dir)
    held_back = score_boxes(path, root_path / "solution.csv", cfg)
    members = {n: json.loads((Path(runs_dir) / n / "scores.json").read_text()) for n in names}
    for name, s in members.items():
        print(f"CV mAP@0.5 {name}: {s['cv']:.4f} (without TTA {s['cv_no_tta']:.4f})")
    print(f"CV mAP@0.5 WBF ensemble: {scores['cv']:.4f} (tuned on other folds: {scores['cv_held_out']:.4f})")
    print(f"held-back mAP@0.5 (solution.csv): {held_back['map50']:.4f}, mAP@0.5:0.95 {held_back['map']:.4f}")
    print(f"submission: {path}")
    return {"members_cv": {n: s["cv"] for n, s in members.items()}, "ensemble_cv": scores["cv"],
            "held_back": held_back, "submission": str(path)}


def score_boxes(submission: Path, solution: Path, cfg: Config) -> dict[str, float]:
    """COCO mAP of a PredictionString submission against a solution file laid out like train.csv."""
    d = cfg.data
    sub, sol = pd.read_csv(submission), pd.read_csv(solution)
    column = sub.columns[1]
    truth_boxes = to_xyxy(sol[d.box_cols].to_numpy(), d.box_format)
    classes = sorted(sol[d.target_col].dropna().astype(str).unique())
    truths, preds = [], []
    for image_id, text in zip(sub[d.id_col], sub[column], strict=True):
        rows = np.flatnonzero((sol[d.id_col] == image_id).to_numpy() & sol[d.target_col].notna().to_numpy())
        labels = sol[d.target_col].iloc[rows].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
        truths.append((truth_boxes[rows], labels))
        boxes = parse_boxes(text, cfg.detect.submit_format)
        pred_labels = [classes.index(str(b["label"])) if str(b["label"]) in classes else 0 for b in boxes]
        preds.append(Detections(np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes], np.float32).reshape(-1, 4),
                                np.array([b["score"] for b in boxes], np.float32), np.array(pred_labels, np.int64), (0, 0)))
    return mean_average_precision(preds, truths, cfg.detect.max_det)
