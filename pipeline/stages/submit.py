"""Stage 5: decode test predictions into the competition's format, validate, write, and log it.

    pipeline submit leaves-effnet --message "effnet d4 tta"      # -> submissions/leaves-effnet.csv
    pipeline submit leaves-effnet --lb 0.9512                    # record the public LB of that submission
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import UserError
from pipeline.core.files import write_csv
from pipeline.data.submission import check_rows, read_sample
from pipeline.runs.rundir import RunDir, load_run
from pipeline.runs.tracking import build_tracker
from pipeline.tasks import build_task

log = logging.getLogger(__name__)
LOG_COLUMNS = ["exp", "cv", "metric", "file", "created", "message", "public_lb"]


def run(exp: str, out: str | None = None, message: str = "", lb: float | None = None, runs_dir: str = "runs") -> Path:
    cfg = load_run(exp, runs_dir)
    log_path = Path(cfg.submissions_dir) / "log.csv"
    if lb is not None:
        return record_lb(log_path, cfg.name, lb)
    run = RunDir(cfg.run_dir)
    for path in (run.test, run.scores, run.folds_json):
        if not path.is_file():
            raise UserError(f"{path} missing; run `pipeline predict` (or `pipeline ensemble`) first")
    scores = run.read_scores("test")
    sample = read_sample(cfg)
    task = build_task(cfg, run.classes())
    sub = task.submission(pd.read_parquet(run.test), sample, scores.get("decisions"))
    check_rows(sub, sample, cfg)
    task.check_submission(sub, sample)
    path = Path(out) if out else Path(cfg.submissions_dir) / f"{cfg.name}.csv"
    write_csv(path, sub)
    entry = {"exp": cfg.name, "cv": scores["cv"], "metric": scores["metric"], "file": str(path),
             "created": time.strftime("%Y-%m-%d %H:%M:%S"), "message": message, "public_lb": None}
    history = pd.read_csv(log_path) if log_path.is_file() else pd.DataFrame(columns=LOG_COLUMNS)
    write_csv(log_path, pd.concat([history, pd.DataFrame([entry])], ignore_index=True)[LOG_COLUMNS])
    tracker = build_tracker(cfg, "submit", "submit")
    tracker.summary({"cv": scores["cv"], "submission": str(path), "message": message})
    tracker.finish()
    log.info("submission %s (%d rows, CV %s %.4f) validated against %s", path, len(sub), scores["metric"],
             scores["cv"], cfg.data_path("sample_submission"))
    return path


def record_lb(log_path: Path, exp: str, lb: float) -> Path:
    """Write a public leaderboard score on the newest log row of `exp`."""
    if not log_path.is_file():
        raise UserError(f"{log_path} not found: submit {exp} before recording its leaderboard score")
    history = pd.read_csv(log_path)
    rows = np.flatnonzero(history["exp"].astype(str).to_numpy() == exp)
    if not len(rows):
        raise UserError(f"{log_path} has no submission of {exp}")
    history["public_lb"] = history["public_lb"].astype("float64")
    history.loc[rows[-1], "public_lb"] = lb
    write_csv(log_path, history)
    log.info("public LB %.5f recorded for %s (%s)", lb, exp, history.loc[rows[-1], "file"])
    return log_path
