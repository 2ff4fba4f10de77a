"""`pipeline demo`: the whole loop on an embedded competition, no download, a few minutes on a CPU.

Writes scikit-learn's handwritten digits as a Kaggle competition with a held-back solution.csv (as images,
as boxes on canvases, or as row-by-row series), then prepare -> train all folds -> predict with TTA ->
ensemble two experiments -> submit, and scores the submission against the held-back answers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.core.config import load_config, with_values
from pipeline.core.errors import UserError
from pipeline.stages import ensemble, predict, prepare, submit, train
from pipeline.tasks import TASKS

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


DEMOS = {name: task.demo for name, task in TASKS.items()}  # pipeline demo --task <name>


def run(task: str = "classification", root: str | None = None, runs_dir: str = "runs",
        submissions_dir: str = "submissions", overrides: list[str] | tuple[str, ...] = ()) -> dict:
    if task not in DEMOS:
        raise UserError(f"--task {task!r}: choose one of {', '.join(DEMOS)}")
    demo = DEMOS[task]
    root_path = Path(root or demo.root)
    if not (root_path / "solution.csv").is_file():
        demo.write(root_path)
        log.info("wrote the embedded %s competition to %s", task, root_path)
    where = {"data.root": str(root_path), "runs_dir": str(runs_dir), "submissions_dir": str(submissions_dir)}
    names, cfg = [], None
    for file in demo.experiments:
        cfg = with_values(load_config(CONFIGS / file, overrides), where)
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
    how = (f"each fold blended as fitted on the other folds; in-sample {scores['cv_in_sample']:.4f}"
           if scores["cv_held_out"] is not None else
           "equal weights: fitted weights did not beat the mean on held-out folds by more than noise")
    print(f"CV {metric} ensemble: {scores['cv']:.4f} ({how})")
    print("held-back score (solution.csv): " + ", ".join(f"{k} {v:.4f}" for k, v in held_back.items()))
    print(f"submission: {path}")
    return {"members_cv": {n: s["cv"] for n, s in members.items()}, "ensemble_cv": scores["cv"],
            "ensemble_cv_held_out": scores["cv_held_out"], "held_back": held_back, "submission": str(path)}
