"""`pipeline lb COMPETITION`: fill every missing leaderboard score of submissions/log.csv from Kaggle.

    pipeline lb classify-leaves          # public scores of pending submissions; private ones after the deadline

A row is matched to Kaggle's submission history by its submission ref; a row without one (a file uploaded by
hand through the website) by the uploaded file's name, and only while the local file still has the sha256 the
log recorded, so a CSV rewritten since is never given another file's score.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file
from pipeline.runs.kaggle import Submission, connect
from pipeline.runs.rundir import load_run
from pipeline.runs.submissions import SubmissionLog, fill, publish_row
from pipeline.runs.tracking import publish_leaderboard

log = logging.getLogger(__name__)


def run(competition: str, submissions_dir: str = "submissions", runs_dir: str = "runs") -> pd.DataFrame:
    book = SubmissionLog(submissions_dir)
    if not book.path.is_file():
        raise UserError(f"{book.path} not found: nothing submitted from here yet (pass --submissions-dir?)")
    history = connect().submissions(competition)
    filled = book.update(lambda table: match(table, history, competition))
    published = None  # the config of a row whose scores went to W&B: the leaderboard table goes once, after them
    for row in filled:
        try:
            cfg = load_run(str(row["exp"]), runs_dir)
        except UserError:
            log.warning("%s is not under %s: its LB stays in %s only", row["exp"], runs_dir, book.path)
            continue
        published = cfg if publish_row(cfg, row) else published
    if published is not None:
        publish_leaderboard(published, book.read(), book.path.parent)
    table = pd.DataFrame(filled, columns=["exp", "kaggle_ref", "status", "cv", "public_lb", "private_lb", "file"])
    if len(table):
        log.info("%d row(s) of %s filled from %s:\n%s", len(table), book.path, competition, table.to_string(index=False))
    else:
        log.info("%s: no new scores for the %s rows of %s", competition, _rows_of(book, competition), book.path)
    return table


def match(table: pd.DataFrame, history: list[Submission], competition: str) -> list[int]:
    """Fill the rows whose Kaggle submission has a score they lack; returns the rows changed."""
    by_ref = {s.ref: s for s in history}
    known = set(table["kaggle_ref"].dropna().astype(str))
    changed = []
    for i, row in table.iterrows():
        if pd.notna(row["competition"]) and row["competition"] not in (competition, ""):
            continue
        scored = by_ref.get(str(row["kaggle_ref"])) if pd.notna(row["kaggle_ref"]) else by_file(row, history, known)
        if scored is None or not news(row, scored):
            continue
        if pd.isna(row["kaggle_ref"]):
            table.loc[i, ["kaggle_ref", "competition"]] = [scored.ref, competition]
            known.add(scored.ref)
        changed += fill(table, [i], scored)
    return changed


def by_file(row: pd.Series, history: list[Submission], known: set[str]) -> Submission | None:
    """The newest not-yet-logged submission of this row's file, if the file is still the one logged."""
    path = Path(str(row["file"]))
    if not path.is_file() or pd.isna(row["sha256"]) or sha256_file(path) != row["sha256"]:
        return None
    return next((s for s in history if s.file_name == path.name and s.ref not in known), None)


def news(row: pd.Series, scored: Submission) -> bool:
    """Does Kaggle know something the row does not (a status, a public or a private score)?"""
    return (str(row["status"]) != scored.status or (scored.public is not None and pd.isna(row["public_lb"]))
            or (scored.private is not None and pd.isna(row["private_lb"])))


def _rows_of(book: SubmissionLog, competition: str) -> int:
    return int((book.read()["competition"].astype(str) == competition).sum())
