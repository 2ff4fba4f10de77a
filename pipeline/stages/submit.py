"""Stage 5: decode test predictions into the competition's format, validate, write, and log it.

    pipeline submit leaves-effnet --message "effnet d4 tta"      # -> submissions/leaves-effnet.csv
    pipeline submit leaves-effnet --kaggle classify-leaves       # ... uploaded, scored, public LB in log.csv
    pipeline submit leaves-effnet --lb 0.9512                    # record a public LB typed by hand

With --kaggle the row is written only once Kaggle took the file (an upload that fails leaves the log as it was),
as `pending`; the public score fills it when it comes within --wait minutes, else `pipeline lb` fills it later.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file, write_csv
from pipeline.data.submission import check_rows, read_sample
from pipeline.runs.rundir import RunDir, load_run
from pipeline.runs.submissions import SubmissionLog, fill, publish, record_public
from pipeline.runs.tracking import build_tracker
from pipeline.tasks import build_task

log = logging.getLogger(__name__)
WAIT_MINUTES = 5.0  # Kaggle scores most CSVs within a minute or two; a code competition's rerun takes hours


def run(exp: str, out: str | None = None, message: str = "", lb: float | None = None, runs_dir: str = "runs",
        kaggle: str | None = None, wait: float = WAIT_MINUTES) -> Path:
    cfg = load_run(exp, runs_dir)
    book = SubmissionLog(cfg.submissions_dir)
    if lb is not None:
        row = record_public(book, cfg.name, lb)
        log.info("public LB %.5f recorded for %s (%s)", lb, cfg.name, row["file"])
        publish(cfg, row, book)
        return book.path
    path, scores = write_submission(cfg, out)
    entry = {"exp": cfg.name, "cv": scores["cv"], "metric": scores["metric"], "file": str(path),
             "created": time.strftime("%Y-%m-%d %H:%M:%S"), "message": message, "sha256": sha256_file(path)}
    if kaggle:
        upload(cfg, book, entry, kaggle, wait)
    else:
        book.append(entry)
    tracker = build_tracker(cfg, "submit", "submit")
    tracker.summary({"cv": scores["cv"], "submission": str(path), "message": message})
    tracker.artifact(f"{cfg.name}-submission", "submission", [path], uses=[f"{cfg.name}-predictions"],
                     metadata={"cv": scores["cv"], "metric": scores["metric"], "competition": kaggle or "",
                               "sha256": entry["sha256"]})
    tracker.finish()
    return path


def write_submission(cfg: Config, out: str | None) -> tuple[Path, dict]:
    """The submission CSV of the experiment's test predictions, validated against sample_submission.csv."""
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
    log.info("submission %s (%d rows, CV %s %.4f) validated against %s", path, len(sub), scores["metric"],
             scores["cv"], cfg.data_path("sample_submission"))
    return path, scores


def upload(cfg: Config, book: SubmissionLog, entry: dict, competition: str, wait: float) -> None:
    """Upload, log the row as pending, then wait for the score and fill it in."""
    from pipeline.runs.kaggle import connect

    client = connect()
    ref = client.submit(competition, Path(entry["file"]), entry["message"] or cfg.name)
    index = book.append({**entry, "competition": competition, "kaggle_ref": ref, "status": "pending"})
    log.info("uploaded %s to %s (submission %s); waiting up to %.0f min for its score", entry["file"],
             competition, ref, wait)
    scored = client.wait(competition, ref, wait) if wait > 0 else None
    if scored is None:
        log.warning("submission %s is still being scored; `pipeline lb %s` records its score later", ref, competition)
        return
    row = book.update(lambda table: fill(table, [index], scored))[0]
    if scored.status == "error":
        raise UserError(f"Kaggle could not score {entry['file']} (submission {ref}): {scored.error or 'no reason'}; "
                        "the row is in submissions/log.csv as status=error — fix the file and submit again")
    log.info("public LB %s for %s (CV %s %.4f)", scored.public, cfg.name, entry["metric"], entry["cv"])
    publish(cfg, row, book)
