"""Every experiment under runs/ in one table, best CV first, with its public LB: `pipeline runs`.

    pipeline runs            # a table in the terminal
    pipeline runs --json     # the same rows for scripts
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from pipeline.core.config import load_run_config
from pipeline.runs.rundir import RunDir
from pipeline.scoring.metrics import greater_is_better
from pipeline.tasks import TASKS

COLUMNS = ["exp", "model", "size", "folds", "tta", "metric", "cv", "cv_std", "public_lb", "submission"]


def experiments(runs_dir: str | Path, submissions_dir: str | Path) -> pd.DataFrame:
    """One row per run directory (those with a config.yaml), sorted by CV, best first, per metric."""
    runs = Path(runs_dir)
    rows = [_row(d) for d in sorted(runs.iterdir()) if (d / "config.yaml").is_file()] if runs.is_dir() else []
    table = pd.DataFrame(rows, columns=COLUMNS)
    latest = _latest_submissions(Path(submissions_dir) / "log.csv")
    if len(table) and len(latest):
        table = table.drop(columns=["public_lb", "submission"]).merge(latest, on="exp", how="left")[COLUMNS]
    # Better first: negate scores where lower is better; unscored runs go last.
    sign = table["metric"].map(lambda m: 1.0 if _known_greater(m) else -1.0)
    order = (table["cv"].astype(float) * sign).fillna(-math.inf)
    return table.assign(_order=order).sort_values(["_order", "exp"], ascending=[False, True]).drop(columns="_order") \
        .reset_index(drop=True)


def _row(path: Path) -> dict:
    run = RunDir(path)
    cfg = load_run_config(run.path)
    scores = json.loads(run.scores.read_text()) if run.scores.is_file() else {}
    members = json.loads(run.members.read_text()) if run.members.is_file() else None
    done = sum(1 for f in run.fold_dirs() if f.oof.is_file())
    return {
        "exp": run.name,
        "model": f"ensemble of {len(members)}" if members else cfg.model.name,
        "size": None if members else TASKS[cfg.task].input_size(cfg),
        # "+full": a full-data refit is in the test predictions (the CV is still the folds')
        "folds": (f"{len(scores.get('folds', {}))}/{cfg.cv.folds}" if members else f"{done}/{cfg.cv.folds}")
        + ("+full" if "full_refit" in scores else ""),
        "tta": scores.get("method") if members else scores.get("tta"),
        "metric": scores.get("metric", cfg.train.metric),
        "cv": scores.get("cv"),
        "cv_std": scores.get("cv_std"),
        "public_lb": None,
        "submission": None,
    }


def _latest_submissions(log_path: Path) -> pd.DataFrame:
    """Per experiment, its newest submission file and the newest public LB recorded for it."""
    if not log_path.is_file():
        return pd.DataFrame(columns=["exp", "public_lb", "submission"])
    log = pd.read_csv(log_path)
    newest = log.groupby("exp", sort=False).tail(1).set_index("exp")
    lb = log.dropna(subset=["public_lb"]).groupby("exp", sort=False)["public_lb"].last()
    return pd.DataFrame({"exp": newest.index, "public_lb": lb.reindex(newest.index).to_numpy(),
                         "submission": newest["file"].to_numpy()})


def render(table: pd.DataFrame) -> str:
    """The table as aligned text for a terminal."""
    if table.empty:
        return "no experiments yet: run `pipeline prepare` and `pipeline train` first"
    shown = table.assign(
        size=[_integer(v) for v in table["size"]],
        cv=[_score(c, s) for c, s in zip(table["cv"], table["cv_std"], strict=True)],
        public_lb=[_score(v) for v in table["public_lb"]],
    ).drop(columns="cv_std").rename(columns={"cv": "cv ± std", "public_lb": "public LB"})
    return shown.fillna("-").astype(str).replace({"None": "-", "nan": "-"}).to_string(index=False)


def _score(value, std=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" + (f" ± {std:.4f}" if std is not None and not pd.isna(std) else "")


def _integer(value) -> str:
    return "-" if value is None or pd.isna(value) else str(int(value))


def _known_greater(name) -> bool:
    """Direction of a logged metric; an unknown name (an older run's) sorts as greater-is-better."""
    try:
        return greater_is_better(str(name))
    except Exception:
        return True
