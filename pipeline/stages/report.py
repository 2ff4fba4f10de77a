"""`pipeline report EXP` -> runs/<exp>/report.html: one experiment as a self-contained HTML page.

Learning curves per fold, the OOF confusion matrix and per-class scores, the highest-loss OOF images, and
CV against the public LB of every submission (sections: pipeline.reporting.report). The PNGs are also written to
runs/<exp>/report/; the page embeds them, so it can be mailed or uploaded as one file. --screenshot renders the
page to report.png.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.core.config import Config
from pipeline.core.files import write_text
from pipeline.reporting.report import (
    Section,
    _json,
    leaderboard_section,
    learning_section,
    read_oof,
    render,
    summary,
    test_set_sections,
    tuning_section,
    write_screenshot,
)
from pipeline.runs.rundir import RunDir, load_run
from pipeline.runs.tracking import build_tracker
from pipeline.tasks import TASKS, build_task

log = logging.getLogger(__name__)


def run(exp: str, runs_dir: str = "runs", screenshot: bool = False) -> Path:
    """Write runs/<exp>/report.html (and report.png with screenshot=True); return the page's path."""
    cfg = load_run(exp, runs_dir)
    run = RunDir(cfg.run_dir)
    out = run.figures
    scores = _json(run.scores)
    sections = [summary(cfg, scores, TASKS[cfg.task].input_size(cfg)), *test_set_sections(run, scores), learning_section(cfg, out)]
    oof = read_oof(run)
    if oof is not None:
        task = build_task(cfg, run.classes())
        sections += task.report_sections(oof, out)  # confusion matrix, per-class scores; boxes for detection
    sections.append(leaderboard_section(cfg, scores, out))
    tuning = tuning_section(cfg, out)  # when the experiment is a study
    sections += [tuning] if tuning else []
    page = render(cfg.name, sections, embed=True)
    write_text(run.report, page)
    track(cfg, scores, sections)
    log.info("report -> %s (%d figures in %s)", run.report, sum(len(s.figures) for s in sections), out)
    if screenshot:
        png = run.report.with_suffix(".png")
        write_screenshot(render(cfg.name, sections, embed=False), run.path, png)
        log.info("screenshot -> %s", png)
    return run.report


def track(cfg: Config, scores: dict, sections: list[Section]) -> None:
    """The report's figures and the submissions log as one W&B run (job type `report`) in the experiment's group;
    its summary holds cv and public_lb, the two columns a dashboard sorts experiments by."""
    log_path = Path(cfg.submissions_dir) / "log.csv"
    subs = pd.read_csv(log_path) if log_path.is_file() else pd.DataFrame(columns=["exp", "cv", "public_lb"])
    mine = subs[subs["exp"] == cfg.name].dropna(subset=["public_lb"])
    tracker = build_tracker(cfg, "report", "report")
    tracker.summary({"cv": scores.get("cv"), "cv_std": scores.get("cv_std"), "metric": scores.get("metric"),
                     "public_lb": float(mine["public_lb"].iloc[-1]) if len(mine) else None})
    tracker.media({f"report/{f.stem}": f for s in sections for f in s.figures}, {"submissions": subs.astype(str)})
    tracker.finish()
