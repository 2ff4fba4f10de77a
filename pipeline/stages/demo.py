"""`pipeline demo`: the whole loop on an embedded competition, no download, a few minutes on a CPU.

Writes scikit-learn's handwritten digits as a Kaggle competition (with a held-back solution.csv), then
prepare -> train all folds -> predict with TTA -> ensemble two experiments -> submit, and scores the
submission against the held-back answers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from pipeline.config import load_config
from pipeline.demo import write_digits_competition
from pipeline.stages import ensemble, predict, prepare, submit, train

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = ("demo-resnet.yaml", "demo-effnet.yaml")


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
