"""`pipeline demo`: the whole loop on an embedded competition, no download, a few minutes on a CPU.

Writes scikit-learn's handwritten digits as a Kaggle competition with a held-back solution.csv (as images,
as boxes on canvases, or as row-by-row series), then prepare -> train all folds -> predict with TTA ->
ensemble two experiments -> submit, and scores the submission against the held-back answers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.boxes import Detections, mean_average_precision, to_xyxy
from pipeline.config import Config, load_config
from pipeline.demo import (
    write_digit_boxes_competition,
    write_digit_series_competition,
    write_digits_competition,
)
from pipeline.errors import UserError
from pipeline.stages import ensemble, predict, prepare, submit, train
from pipeline.submission import parse_boxes

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Demo:
    root: str  # default folder of the embedded competition
    write: Callable[[Path], Path]  # writes it
    experiments: tuple[str, ...]  # config files, ensembled in this order
    ensemble: str  # the ensemble's name, also the submission's
    score: Callable[[Path, Path, Config], dict[str, float]]  # (submission, solution.csv, config) -> held-back scores


def score_against_solution(submission: Path, solution: Path, cfg: Config | None = None) -> float:
    """Accuracy of a label submission on the answers Kaggle would keep private."""
    id_col = cfg.data.id_col if cfg else "image"
    target = cfg.data.target_col if cfg else "label"
    sub, sol = pd.read_csv(submission), pd.read_csv(solution)
    merged = sol.merge(sub, on=id_col, suffixes=("_true", "_pred"), validate="one_to_one")
    return float((merged[f"{target}_true"].astype(str) == merged[f"{target}_pred"].astype(str)).mean())


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


DEMOS = {
    "classification": Demo("data/demo-digits", lambda root: write_digits_competition(root, size=32),
                           ("demo-resnet.yaml", "demo-effnet.yaml"), "demo-ensemble",
                           lambda sub, sol, cfg: {"accuracy": score_against_solution(sub, sol, cfg)}),
    "detection": Demo("data/demo-boxes", write_digit_boxes_competition, ("demo-detect.yaml", "demo-detect-wide.yaml"),
                      "demo-detect-ensemble", score_boxes),
    "sequence": Demo("data/demo-series", write_digit_series_competition, ("demo-seq-inception.yaml", "demo-seq-gru.yaml"),
                     "demo-seq-ensemble", lambda sub, sol, cfg: {"accuracy": score_against_solution(sub, sol, cfg)}),
}


def run(task: str = "classification", root: str | None = None, runs_dir: str = "runs",
        submissions_dir: str = "submissions", overrides: list[str] | tuple[str, ...] = ()) -> dict:
    if task not in DEMOS:
        raise UserError(f"--task {task!r}: choose one of {', '.join(DEMOS)}")
    demo = DEMOS[task]
    root_path = Path(root or demo.root)
    if not (root_path / "solution.csv").is_file():
        demo.write(root_path)
        log.info("wrote the embedded %s competition to %s", task, root_path)
    common = [f"data.root={root_path}", f"runs_dir={runs_dir}", f"submissions_dir={submissions_dir}", *overrides]
    names, cfg = [], None
    for file in demo.experiments:
        cfg = load_config(CONFIGS / file, common)
        prepare.run(cfg)
        train.run(cfg, fold="all")
        predict.run(cfg)
        names.append(cfg.name)
    scores = ensemble.run(names, method="weighted", name=demo.ensemble, runs_dir=runs_dir)
    path = submit.run(demo.ensemble, message=f"pipeline demo --task {task}", runs_dir=runs_dir)
    held_back = demo.score(path, root_path / "solution.csv", cfg)
    members = {n: json.loads((Path(runs_dir) / n / "scores.json").read_text()) for n in names}
    metric = cfg.train.metric
    for name, s in members.items():
        print(f"CV {metric} {name}: {s['cv']:.4f} (without TTA {s['cv_no_tta']:.4f})")
    how = (f"fitted on other folds: {scores['cv_held_out']:.4f}" if scores["cv_held_out"] is not None else
           "equal weights: fitted weights did not beat the mean on held-out folds")
    print(f"CV {metric} ensemble: {scores['cv']:.4f} ({how})")
    print("held-back score (solution.csv): " + ", ".join(f"{k} {v:.4f}" for k, v in held_back.items()))
    print(f"submission: {path}")
    return {"members_cv": {n: s["cv"] for n, s in members.items()}, "ensemble_cv": scores["cv"],
            "ensemble_cv_held_out": scores["cv_held_out"], "held_back": held_back, "submission": str(path)}
