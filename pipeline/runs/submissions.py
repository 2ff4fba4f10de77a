"""`submissions/log.csv`: one row per submission file, its CV and the leaderboard's answer.

Every change is a read-modify-write under a file lock (`log.csv.lock`, filelock), written to a temporary file
and renamed: two `pipeline submit` at once both land, and a crash leaves the old file, never half of a new one.

Columns (older logs, with the first seven only, are read and extended in place):
    exp, cv, metric, file, created, message, public_lb   the log as it always was
    private_lb        filled by `pipeline lb` once the competition has ended
    competition       the Kaggle competition it was uploaded to ("" for a file not uploaded)
    kaggle_ref        Kaggle's submission id, the key `pipeline lb` matches on
    status            pending | complete | error ("" for a file not uploaded)
    sha256            of the CSV: the fallback key when a ref is missing (a file uploaded by hand)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.files import write_csv
from pipeline.runs.tracking import publish_leaderboard, publish_scores

log = logging.getLogger(__name__)
COLUMNS = ["exp", "cv", "metric", "file", "created", "message", "public_lb", "private_lb", "competition",
           "kaggle_ref", "status", "sha256"]
SCORES = ("public_lb", "private_lb")
T = TypeVar("T")
LOCK_SECONDS = 60.0  # a submit holds the lock for a read and a write: a minute means a stuck process


class SubmissionLog:
    def __init__(self, submissions_dir: str | Path):
        self.path = Path(submissions_dir) / "log.csv"

    def read(self) -> pd.DataFrame:
        """The log with every column (missing ones added empty); an empty table when there is no log yet."""
        if not self.path.is_file():
            return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("cv", *SCORES) else "object")
                                 for c in COLUMNS})
        try:
            # every cell as its text (an experiment named 1e3 or NA stays that name); only empty cells are missing
            table = pd.read_csv(self.path, dtype=str, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserError(f"{self.path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); "
                            "fix or move it away") from None
        for column in COLUMNS:
            if column not in table:
                table[column] = pd.NA
        for column in ("cv", *SCORES):
            table[column] = pd.to_numeric(table[column], errors="coerce").astype("float64")
        extra = [c for c in table.columns if c not in COLUMNS]  # a user's own columns survive
        return table[COLUMNS + extra]

    def edit(self, change: Callable[[pd.DataFrame], tuple[pd.DataFrame, T]]) -> T:
        """Under the lock: read the table, `table, result = change(table)`, write the table; returns result.
        When change raises, nothing is written."""
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.path) + ".lock", timeout=LOCK_SECONDS):
                table, result = change(self.read())
                write_csv(self.path, table)
                return result
        except Timeout:
            raise UserError(f"{self.path}.lock held for over {LOCK_SECONDS:.0f} s by another process; "
                            "if none is running, delete the .lock file") from None

    def append(self, entry: dict) -> int:
        """Add one row; returns its index."""
        def change(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
            row = pd.DataFrame([{c: entry.get(c) for c in COLUMNS}])
            table = pd.concat([table, row], ignore_index=True) if len(table) else row
            return table, len(table) - 1

        return self.edit(change)

    def update(self, change: Callable[[pd.DataFrame], list[int]]) -> list[dict]:
        """change(table) edits rows in place and returns their indices; returns those rows as written."""
        def apply(table: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
            return table, [table.loc[i].to_dict() for i in change(table)]

        return self.edit(apply)


def record_public(log_: SubmissionLog, exp: str, lb: float) -> dict:
    """`pipeline submit EXP --lb SCORE`: the score typed by hand goes on the newest row of `exp`."""
    if not log_.path.is_file():
        raise UserError(f"{log_.path} not found: submit {exp} before recording its leaderboard score")

    def change(table: pd.DataFrame) -> list[int]:
        rows = table.index[table["exp"].astype(str) == exp]
        if not len(rows):
            raise UserError(f"{log_.path} has no submission of {exp}")
        table.loc[rows[-1], "public_lb"] = lb
        return [rows[-1]]

    return log_.update(change)[0]


def fill(table: pd.DataFrame, rows: list[int], scored) -> list[int]:
    """Write a Kaggle submission's status and scores on `rows` of the log."""
    for i in rows:
        table.loc[i, "status"] = scored.status
        if scored.public is not None:
            table.loc[i, "public_lb"] = scored.public
        if scored.private is not None:
            table.loc[i, "private_lb"] = scored.private
    return rows


def publish(cfg: Config, row: dict, book: SubmissionLog) -> None:
    """A recorded score into W&B: the experiment's predict/ensemble summary and the leaderboard table."""
    if publish_row(cfg, row):
        publish_leaderboard(cfg, book.read(), book.path.parent)


def publish_row(cfg: Config, row: dict) -> bool:
    """A row's scores into the summary of its experiment's predict/ensemble run; False when it has none."""
    values = {k: float(row[k]) for k in SCORES if pd.notna(row.get(k))}
    if values:
        publish_scores(cfg, values)
    return bool(values)
