"""`pipeline pseudo EXP --name NEW`: a new experiment on EXP's folds whose fold k also trains on the test rows that
EXP's fold-k model labels confidently.

    pipeline pseudo leaves --name leaves-pl [--threshold auto|0.9] [--soft] [--weight 0.5] [--set train.epochs=8]
    pipeline train --config runs/leaves-pl/config.yaml --fold all
    pipeline predict --config runs/leaves-pl/config.yaml && pipeline submit leaves-pl

The leak this avoids: test labels from the K-fold mean come partly from models that trained on fold k's validation
rows, and a fold-k model trained on them learns those rows' labels second-hand, so its CV rises without the
leaderboard. Here fold k's pseudo-labels come from fold{k}/test.parquet alone (the model that never saw fold k's
validation rows), and fold k's confidence threshold is fitted on the OOF rows of the other folds: with
--threshold auto, the lowest confidence at which the kept OOF rows are right pseudo.precision (0.95) of the time.
Validation rows are untouched, so NEW's CV is comparable with EXP's. Detection keeps boxes by score, calibrated the
same way on OOF boxes (a box is right when it matches a truth of its class at IoU 0.5). Values (regression) carry
no confidence: every test row is kept. Rounds: NEW is an ordinary experiment and can be the EXP of the next one.
Provenance (source, thresholds, rows kept per fold and class): runs/NEW/pseudo.json, meta.json and the report.
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from pipeline.core.config import Config, check_name, load_run_config
from pipeline.core.errors import UserError
from pipeline.core.files import write_json
from pipeline.data.folds import run_config
from pipeline.engine.training_rows import describe, fit_threshold, write_labels
from pipeline.runs.provenance import write_run_header
from pipeline.runs.rundir import RunDir, resolve
from pipeline.stages import prepare
from pipeline.tasks import TASKS, build_task

log = logging.getLogger(__name__)


def run(source_ref: str, name: str, overrides: list[str] | tuple[str, ...] = (), runs_dir: str = "runs",
        threshold: str | None = None, soft: bool | None = None, weight: float | None = None) -> dict:
    """Make runs/<name>/ (config, folds, fold{k}/pseudo.parquet, pseudo.json); training is the usual command."""
    source = check_source(resolve(source_ref, runs_dir))
    cfg = new_config(source, name, overrides, threshold, soft, weight)
    run_dir = RunDir(cfg.run_dir)
    trained = [f.k for f in run_dir.fold_dirs() if f.last.is_file()]
    if trained:  # new labels under folds trained on the old ones would make one experiment of two
        raise UserError(f"{run_dir} already has trained folds {trained}; pseudo-label into a new --name, or delete "
                        f"{run_dir} first")
    prepare.run(cfg)
    if run_dir.classes() != source.classes():
        raise UserError(f"{name}'s classes differ from {source.name}'s ({source.folds_json}); pseudo-label on the "
                        "same competition files and target settings")
    task = build_task(run_config(run_dir), source.classes())
    scores = source.read_scores("oof")
    oof = pd.read_parquet(source.oof)
    folds = []
    for k in range(cfg.cv.folds):
        test = source.fold(k).test
        if not test.is_file():
            raise UserError(f"{test} missing: fold {k}'s pseudo-labels come from fold {k}'s own test predictions; "
                            f"run `pipeline predict --config {source.config}` first")
        fitted = fit_threshold(task, cfg, oof[oof["fold"] != k])
        folds.append({"fold": k, **write_labels(task, fitted, test, run_dir.fold(k), scores.get("stamp"))})
        log.info("fold %d: %s", k, describe(folds[-1], cfg))
    provenance = {"source": source.name, "source_run": str(source.path), "source_cv": scores["cv"],
                  "metric": scores["metric"], "round": source_round(source) + 1, "threshold": cfg.pseudo.threshold,
                  "precision_target": cfg.pseudo.precision, "soft": cfg.pseudo.soft, "weight": cfg.pseudo.weight,
                  "folds": folds}
    write_json(run_dir.pseudo, provenance)
    write_run_header(cfg, "pseudo")  # meta.json carries pseudo.json (pipeline.runs.provenance), at every later stage too
    log.info("%s: round %d of pseudo-labels from %s (CV %s %.4f) -> %s; now: pipeline train --config %s --fold all",
             name, provenance["round"], source.name, scores["metric"], scores["cv"], run_dir.pseudo, run_dir.config)
    return provenance


def check_source(source: RunDir) -> RunDir:
    if source.members.is_file():
        raise UserError(f"{source.name} is an ensemble: pseudo-labels come from one experiment's fold models (fold k's "
                        "from fold k's); pseudo-label from one of its members")
    for path in (source.oof, source.scores):
        if not path.is_file():
            raise UserError(f"{source.name}: {path} missing; run `pipeline predict --config {source.config}` first")
    return source


def new_config(source: RunDir, name: str, overrides, threshold, soft, weight) -> Config:
    """EXP's config as NEW's: same data, model and folds; the pseudo settings given; a plain (not distilled) one."""
    if check_name(name, "--name") == source.name:
        raise UserError(f"--name {name}: the new experiment needs its own name (the source is {source.path})")
    cfg = load_run_config(source.path, overrides)  # beside EXP, where it is now, unless --set runs_dir=...
    cfg.name = name
    RunDir(cfg.run_dir).claim("pseudo", "pseudo-label into a new --name (pipeline pseudo never overwrites another run)")
    p = cfg.pseudo
    p.source = str(source.path)
    p.soft = p.soft if soft is None else soft
    p.weight = p.weight if weight is None else weight
    if threshold is not None:
        try:
            p.threshold = "auto" if threshold == "auto" else float(threshold)
        except ValueError:
            raise UserError(f"--threshold {threshold!r}: 'auto' or a confidence such as 0.9") from None
    if not 0 < p.weight <= 1:
        raise UserError(f"--weight {p.weight}: the share of pseudo rows drawn into each epoch, in (0, 1]")
    if not 0 < p.precision <= 1:
        raise UserError(f"pseudo.precision={p.precision}: the share of kept OOF rows that must be right, in (0, 1]")
    if p.threshold != "auto" and not p.threshold >= 0:
        raise UserError(f"--threshold {p.threshold}: a confidence at or above 0, or 'auto'")
    if p.soft and not TASKS[cfg.task].learns_soft_targets:
        raise UserError("--soft: detection pseudo-labels are boxes, kept or not; drop --soft")
    cfg.distill.teacher = None  # NEW learns labels, EXP's decisions; a student's teacher would be a second source
    cfg.cv.folds_file = str(source.folds_csv)  # EXP's folds: fold k's labeller is EXP's fold k
    cfg.cv.folds = run_config(source).cv.folds
    return cfg










def source_round(source: RunDir) -> int:
    """Which round of pseudo-labels the source was (0: trained on labels alone)."""
    return int(json.loads(source.pseudo.read_text())["round"]) if source.pseudo.is_file() else 0




