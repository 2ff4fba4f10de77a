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
import math

import numpy as np
import pandas as pd

from pipeline.config import Config, check_name, load_run_config
from pipeline.errors import UserError
from pipeline.files import parquet_stamp, write_json, write_parquet
from pipeline.fold_model import run_config
from pipeline.provenance import write_run_header
from pipeline.rundir import FULL, FoldDir, RunDir, resolve
from pipeline.seeding import DrawnRows
from pipeline.stages import prepare
from pipeline.tasks import Task, build_task

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
    write_run_header(cfg, "pseudo")  # meta.json carries pseudo.json (pipeline.provenance), at every later stage too
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
    if cfg.task == "detection" and p.soft:
        raise UserError("--soft: detection pseudo-labels are boxes, kept or not; drop --soft")
    cfg.distill.teacher = None  # NEW learns labels, EXP's decisions; a student's teacher would be a second source
    cfg.cv.folds_file = str(source.folds_csv)  # EXP's folds: fold k's labeller is EXP's fold k
    cfg.cv.folds = run_config(source).cv.folds
    return cfg


def fit_threshold(task: Task, cfg: Config, oof: pd.DataFrame) -> dict:
    """The confidence cut and the OOF precision behind it, from these OOF rows (never the fold being labelled)."""
    outputs = task.read_outputs(oof)
    confidence = task.confidence(outputs)
    if confidence is None:
        return {"threshold": None, "note": "values carry no confidence: every test row is kept"}
    hits = task.hits(outputs, task.targets(oof))
    p = cfg.pseudo
    if p.threshold == "auto":
        return precision_threshold(confidence, hits, p.precision, p.min_rows)
    kept = confidence >= p.threshold
    return {"threshold": float(p.threshold), "oof_precision": float(hits[kept].mean()) if kept.any() else None,
            "oof_kept": int(kept.sum()), "oof_units": len(hits)}


def precision_threshold(confidence: np.ndarray, hits: np.ndarray, target: float, min_rows: int) -> dict:
    """The lowest confidence t such that the units at or above t (at least min_rows of them) are right `target` of
    the time; none reaching it: t = inf (nothing kept)."""
    order = np.argsort(-confidence, kind="stable")
    c, right = confidence[order], hits[order].astype(np.float64)
    n = np.arange(1, len(c) + 1)
    precision = np.cumsum(right) / n
    cut = np.r_[c[1:] != c[:-1], True] if len(c) else np.zeros(0, bool)  # a threshold keeps all of a tie or none
    ok = np.flatnonzero((precision >= target) & cut & (n >= min_rows))
    if not len(ok):
        best = float(precision[min_rows - 1:].max()) if len(c) >= min_rows else None
        return {"threshold": math.inf, "oof_precision": best, "oof_kept": 0, "oof_units": len(c),
                "note": f"no confidence keeps {min_rows}+ OOF units right {target:.0%} of the time (best "
                        f"{'-' if best is None else f'{best:.3f}'}), so no test row is kept: lower pseudo.precision "
                        "or pass --threshold"}
    i = int(ok[-1])
    return {"threshold": float(c[i]), "oof_precision": float(precision[i]), "oof_kept": i + 1, "oof_units": len(c)}


def write_labels(task: Task, fitted: dict, test_path, fold: FoldDir, stamp: str | None) -> dict:
    """fold/pseudo.parquet: the test rows (boxes) of test_path that pass the fitted threshold; what was kept."""
    test = pd.read_parquet(test_path)
    kept = task.keep_confident(test, fitted["threshold"])
    fold.path.mkdir(parents=True, exist_ok=True)
    write_parquet(fold.pseudo, kept, stamp)
    if fitted["threshold"] == math.inf:  # JSON has no infinity: no threshold, and the note says why
        fitted = {**fitted, "threshold": None}
    return {**fitted, "from": str(test_path), "rows": len(kept), "of": len(test), "per_class": task.pseudo_counts(kept)}


def describe(entry: dict, cfg: Config) -> str:
    t = entry["threshold"]
    if t is None:
        how = entry["note"]
    else:
        precision = "-" if entry.get("oof_precision") is None else f"{entry['oof_precision']:.3f}"
        how = (f"threshold {t:.4f} ({'auto, ' if cfg.pseudo.threshold == 'auto' else ''}OOF precision {precision} on "
               f"{entry['oof_kept']} of {entry['oof_units']} OOF units of the other folds)")
    return f"{entry['rows']} of {entry['of']} test rows kept; {how}"


def source_round(source: RunDir) -> int:
    """Which round of pseudo-labels the source was (0: trained on labels alone)."""
    return int(json.loads(source.pseudo.read_text())["round"]) if source.pseudo.is_file() else 0


def write_full_labels(task: Task, cfg: Config, fold: FoldDir) -> None:
    """full/pseudo.parquet for NEW's full-data refit: EXP's test mean, cut at a threshold fitted on all its OOF rows
    (the refit has no CV of its own, so nothing here is scored)."""
    source = RunDir(cfg.pseudo.source)
    stamp = source.read_scores("oof", "test").get("stamp")
    if fold.pseudo.is_file() and parquet_stamp(fold.pseudo) == stamp:
        return
    fitted = fit_threshold(task, cfg, pd.read_parquet(source.oof))
    entry = write_labels(task, fitted, source.test, fold, stamp)
    log.info("full-data refit: %s", describe(entry, cfg))


def training_set(task: Task, cfg: Config, fold: FoldDir, train_rows: pd.DataFrame):
    """Fold k's training rows and its pseudo-labelled test rows (fold{k}/pseudo.parquet), the latter drawn at
    pseudo.weight per epoch."""
    if fold.k == FULL:
        write_full_labels(task, cfg, fold)
    if not fold.pseudo.is_file():
        raise UserError(f"{fold.pseudo} missing: pseudo-labels are written by `pipeline pseudo {cfg.pseudo.source} --name "
                        f"{cfg.name}` before its folds train")
    pseudo = pd.read_parquet(fold.pseudo)
    dataset = task.pseudo_dataset(train_rows, pseudo, cfg.pseudo.soft)
    if cfg.pseudo.weight < 1:
        dataset.drawn = DrawnRows(len(train_rows), cfg.pseudo.weight)
    log.info("fold %s: %d training rows + %d pseudo-labelled test rows from %s (%s, weight %.2f)", fold.k,
             len(train_rows), len(pseudo), RunDir(cfg.pseudo.source).name,
             "soft targets" if cfg.pseudo.soft else "its decisions", cfg.pseudo.weight)
    return dataset
