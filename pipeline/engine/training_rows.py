"""A fold's training rows, composed in one place for `train` (and so for pseudo and distill experiments alike):
the fold's labelled rows; with pseudo.source, also the test rows the source's fold-k model labelled confidently
(fold{k}/pseudo.parquet, written by `pipeline pseudo`); with distill.teacher, every row's target mixed with fold k's
teachers' outputs (fold{k}/teacher.parquet, written by `pipeline distill`). A full-data refit (`--fold full`)
writes its own file here on first use, from the source's (teacher's) OOF and test predictions.

The thresholds that pick pseudo-labelled rows are fitted here too: on OOF rows that never include the fold being
labelled (pipeline.workflows.pseudo passes the other folds' rows).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.files import parquet_stamp, write_parquet
from pipeline.core.seeding import DrawnRows
from pipeline.engine.task import Task
from pipeline.runs.rundir import FULL, FoldDir, RunDir

log = logging.getLogger(__name__)
TEACHER_FILE = "teacher.parquet"  # in the student's fold folders: id, part (train|test), the teachers' outputs


def training_set(task: Task, cfg: Config, fold: FoldDir, train_rows: pd.DataFrame) -> Dataset:
    """Fold k's training dataset: its labelled rows, with a student's soft targets or a pseudo-label round's test
    rows where the config says so."""
    if cfg.distill.teacher:  # a student (pipeline distill): soft targets from fold k's teachers
        return with_teachers(task, cfg, fold, train_rows)
    if cfg.pseudo.source:  # pipeline pseudo: fold k's rows and the test rows fold k's source model labelled
        return with_pseudo_labels(task, cfg, fold, train_rows)
    return task.build_dataset(train_rows, train=True)


def with_unlabelled(rows: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """Folds-table rows followed by unlabelled ones (test ids) for a training dataset: any real label stands in where
    the dataset reads one, and the caller replaces the dataset's .labels (distillation, pseudo-labels)."""
    extra = pd.DataFrame({"id": ids.to_numpy(), "target": rows["target"].iloc[0], "fold": -1})
    return pd.concat([rows[["id", "target", "fold"]], extra], ignore_index=True)


# -- distillation: fold k's teachers' outputs as targets ----------------------------------------------------
def with_teachers(task: Task, cfg: Config, fold: FoldDir, train_rows: pd.DataFrame):
    """Fold k's training dataset with soft targets: alpha x label + (1 - alpha) x fold k's teachers' prediction per
    row, and (distill.test) the test rows on the teachers' prediction alone."""
    path = fold.path / TEACHER_FILE
    if fold.k == FULL:
        write_full_targets(task, cfg, path)
    if not path.is_file():
        raise UserError(f"{path} missing: the student's targets are written by `pipeline distill "
                        f"{cfg.distill.teacher} --config <student config>` before its folds train")
    frame = pd.read_parquet(path)
    frame["id"] = frame["id"].astype(str)
    on_train = frame[frame["part"] == "train"].set_index("id")
    missing = ~train_rows["id"].astype(str).isin(on_train.index)
    if missing.any():
        raise UserError(f"{path} has no teacher prediction for {missing.sum()} of fold {fold.k}'s training rows "
                        f"(first {train_rows['id'][missing].iloc[0]}); the folds changed since: rerun `pipeline distill`")
    alpha = cfg.distill.alpha
    teach = task.read_outputs(on_train.loc[train_rows["id"].astype(str)].reset_index())
    soft = [task.soft_targets(train_rows, teach, alpha)]
    rows = train_rows
    if cfg.distill.test:
        on_test = frame[frame["part"] == "test"].reset_index(drop=True)
        rows = with_unlabelled(train_rows, on_test["id"])  # the soft targets replace the stand-in labels below
        soft.append(task.soft_targets(None, task.read_outputs(on_test), alpha))
    dataset = task.build_dataset(rows, train=True)
    dataset.labels = np.concatenate(soft).astype(np.float32)  # every row's training target (datasets index .labels)
    log.info("fold %s: distilling from %s (alpha %.2f): %d training rows%s", fold.k, cfg.distill.teacher, alpha,
             len(train_rows), f" + {len(rows) - len(train_rows)} test rows" if cfg.distill.test else "")
    return dataset


def write_full_targets(task: Task, cfg: Config, path: Path) -> None:
    """full/teacher.parquet for the student's full-data refit (`train --fold full`): the teacher's OOF outputs on
    every training row (each from the models that did not train on it) and its test outputs. The refit has no CV
    of its own, so nothing here is scored."""
    teacher = RunDir(cfg.distill.teacher)
    stamp = teacher.read_scores("oof", "test").get("stamp")
    if path.is_file() and parquet_stamp(path) == stamp:
        return
    oof, test = pd.read_parquet(teacher.oof), pd.read_parquet(teacher.test)
    frame = task.prediction_frame(pd.concat([oof[["id"]], test[["id"]]], ignore_index=True),
                                  np.concatenate([task.read_outputs(oof), task.read_outputs(test)]))
    frame.insert(1, "part", ["train"] * len(oof) + ["test"] * len(test))
    write_parquet(path, frame, stamp)
    log.info("full-data refit: teacher targets from %s's OOF (%d rows) and test (%d rows) -> %s", teacher.name,
             len(oof), len(test), path)


# -- pseudo-labels: test rows fold k's source model is sure of ----------------------------------------------
def with_pseudo_labels(task: Task, cfg: Config, fold: FoldDir, train_rows: pd.DataFrame):
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
