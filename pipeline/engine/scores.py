"""The CV of a prediction frame: every fold's OOF rows scored by the model that never saw them, with decision
settings (thresholds, cut points) fitted on the other folds; and the score on the most test-like rows.
`predict` and `ensemble` score their OOF through these, so an experiment and a blend mean the same CV."""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.core.config import Config
from pipeline.data.drift import like_test_rows
from pipeline.engine.task import Task
from pipeline.runs.rundir import RunDir

log = logging.getLogger(__name__)


def like_test_score(cfg: Config, task: Task, oof: pd.DataFrame, run: RunDir) -> dict:
    """{cv_like_test: the OOF score on the cv.holdout_like_test share of most test-like rows}, or {} where it is off.
    Every such row is scored by the fold model that never saw it: an honest estimate under a train/test shift."""
    ids = like_test_rows(run.adversarial_csv, cfg.cv.holdout_like_test)
    if ids is None:
        if cfg.cv.holdout_like_test > 0:
            log.warning("cv.holdout_like_test=%s but %s is missing: run `pipeline drift %s`", cfg.cv.holdout_like_test,
                        run.adversarial_csv, run.name)
        return {}
    rows = oof[oof["id"].astype(str).isin(ids)]
    score = fitted_score_frame(task, rows)[0]
    log.info("CV %s on the %.0f%% most test-like training rows (%d, by adversarial validation): %.4f",
             cfg.train.metric, 100 * cfg.cv.holdout_like_test, len(rows), score)
    return {"cv_like_test": {"score": score, "share": cfg.cv.holdout_like_test, "rows": len(rows)}}


def fitted_score_frame(task: Task, frame: pd.DataFrame) -> tuple[float, dict[int, float], dict]:
    """score_frame with decision settings (thresholds, cut points) fitted on OOF: (honest CV, its per-fold
    scores, {decisions, cv_fitted_in_sample, cv_default_decisions}); score_frame's own when nothing is fitted."""
    outputs, truth = task.read_outputs(frame), task.targets(frame)
    fitted = task.fitted_scores(outputs, truth, frame["fold"].to_numpy())
    if not fitted:
        return (*score_frame(task, frame), {})
    cv, per_fold = fitted.pop("cv"), fitted.pop("folds")
    return cv, per_fold, fitted


def describe_fitted(fitted: dict) -> str | None:
    """One line on the decision settings fitted on all OOF rows (what submit applies), or None when none were."""
    if "decisions" not in fitted:
        return None
    def shown(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, (list, tuple)):
            return "[" + " ".join(shown(x) for x in v[:8]) + (" …]" if len(v) > 8 else "]")
        return str(v)
    settings = ", ".join(f"{k} {shown(v)}" for k, v in fitted["decisions"].items())
    empty = f"; {100 * fitted['predicted_empty']:.1f}% of OOF masks predicted empty" \
        if "predicted_empty" in fitted else ""
    return f"decisions fitted on OOF (applied by submit): {settings}{empty}"


def score_frame(task: Task, frame: pd.DataFrame) -> tuple[float, dict[int, float]]:
    """(score on all rows, score per fold) of an OOF prediction frame."""
    per_fold = {int(k): task.evaluate(task.read_outputs(g), task.targets(g))["score"] for k, g in frame.groupby("fold")}
    return task.evaluate(task.read_outputs(frame), task.targets(frame))["score"], per_fold
