"""Stage 1: validate the raw competition files and assign folds.

    pipeline prepare --config configs/leaves.yaml
"""

from __future__ import annotations

import logging

import pandas as pd

from pipeline import duplicates
from pipeline.config import Config
from pipeline.files import write_csv
from pipeline.folds import folds_current, make_folds, resolve_strategy, save_folds
from pipeline.provenance import write_run_header
from pipeline.rundir import RunDir
from pipeline.submission import read_sample
from pipeline.tasks import TASKS, Task

log = logging.getLogger(__name__)


def run(cfg: Config, force: bool = False) -> None:
    """Check train/test/sample_submission and every image, then write folds.csv (skipped when up to date)."""
    task = TASKS[cfg.task]
    current = folds_current(cfg) and not force
    test = task.test_table(cfg, check=not current)  # images are decoded only when the folds are redone
    sample_path = cfg.data_path("sample_submission")
    sample = read_sample(cfg)  # unique, non-empty ids: caught here, not at the end of the pipeline
    if set(sample[cfg.data.id_col]) != set(test[cfg.data.id_col]):
        log.warning("%s and %s list different ids; submit checks against the sample submission", sample_path, cfg.data_path("test_csv"))
    if current:
        log.info("folds in %s are up to date with %s (use --force to redo them)", cfg.run_dir, cfg.data_path("train_csv"))
        return
    log.info("checking %s ...", cfg.data_path("train_csv"))
    samples, classes = task.sample_table(cfg)  # one row per sample, every image and label checked
    hashes, found = find_duplicates(cfg, task, samples, test)
    folds = make_folds(cfg, samples, classes, hashes)
    strategy = resolve_strategy(cfg, samples[cfg.data.target_col])
    write_run_header(cfg, "prepare")
    write_csv(RunDir(cfg.run_dir).duplicates, found)  # before folds.csv, which marks a finished prepare
    save_folds(cfg, folds, strategy)
    sizes = folds.table["fold"].value_counts().sort_index().tolist()
    log.info("%d rows, %d classes, %s %d-fold (sizes %s) -> %s", len(samples), len(folds.classes), strategy,
             cfg.cv.folds, sizes, RunDir(cfg.run_dir).folds_csv)


def find_duplicates(cfg: Config, task: type[Task], samples: pd.DataFrame, test: pd.DataFrame) -> tuple[list | None, pd.DataFrame]:
    """Content hashes of the train samples and the duplicates report (data.dedupe; tasks without
    fingerprints, such as series, report nothing)."""
    d = cfg.data
    train_hashes = task.fingerprints(cfg, samples) if d.dedupe else None
    if train_hashes is None:
        return None, pd.DataFrame(columns=["hash", "split", "id", "label"])
    found = duplicates.report(samples[d.id_col], train_hashes, samples[d.target_col],
                              test[d.id_col], task.fingerprints(cfg, test))
    for line in duplicates.summarise(found):
        log.warning("%s (%s)", line, RunDir(cfg.run_dir).duplicates)
    return train_hashes, found
