"""Stage 1: validate the raw competition files and assign folds.

    pipeline prepare --config configs/leaves.yaml
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.files import write_csv
from pipeline.data import drift, duplicates
from pipeline.data.folds import folds_from_file, make_folds, resolve_strategy, save_folds, stale_reasons
from pipeline.data.submission import read_sample
from pipeline.runs.provenance import write_run_header
from pipeline.runs.rundir import RunDir
from pipeline.tasks import TASKS, Task

log = logging.getLogger(__name__)


def run(cfg: Config, force: bool = False) -> None:
    """Check train/test/sample_submission and every image, then write folds.csv (skipped when up to date)."""
    task, run_dir = TASKS[cfg.task], RunDir(cfg.run_dir)
    made = run_dir.folds_json.is_file() and run_dir.folds_csv.is_file()
    changed = stale_reasons(cfg, json.loads(run_dir.folds_json.read_text())) if made else []
    current = made and not changed and not force
    test = task.test_table(cfg, check=not current)  # images are decoded only when the folds are redone
    sample_path = cfg.data_path("sample_submission")
    sample = read_sample(cfg)  # unique, non-empty ids: caught here, not at the end of the pipeline
    if not cfg.data.sample_id_col and set(sample[cfg.data.id_col]) != set(test[cfg.data.id_col]):
        log.warning("%s and %s list different ids; submit checks against the sample submission", sample_path, cfg.data_path("test_csv"))
    if current:
        log.info("folds in %s are up to date with %s and the CV settings (use --force to redo them)", run_dir,
                 cfg.data_path("train_csv"))
        return
    if changed and not force:
        trained = [f.k for f in run_dir.fold_dirs() if f.last.is_file()]
        if trained:
            raise UserError(f"the folds in {run_dir} were made with other settings ({'; '.join(changed)}) and folds "
                            f"{trained} were trained on them; rerun with --force to remake the folds (then retrain "
                            "with --force), or undo the change")
        log.warning("remaking the folds in %s: %s", run_dir, "; ".join(changed))
    log.info("checking %s ...", cfg.data_path("train_csv"))
    samples, classes = task.sample_table(cfg)  # one row per sample, every image and label checked
    hashes, found = find_duplicates(cfg, task, samples, test)
    strata = task.strata(cfg, samples[cfg.data.target_col], classes)  # what stratified folds balance
    if cfg.cv.folds_file:
        folds, strategy = folds_from_file(cfg, samples, classes, strata), f"file {cfg.cv.folds_file}"
    else:
        folds = make_folds(cfg, samples, classes, hashes, strata)
        strategy = resolve_strategy(cfg, samples[cfg.data.target_col])
    write_run_header(cfg, "prepare")
    write_csv(run_dir.duplicates, found)  # before folds.csv, which marks a finished prepare
    if cfg.cv.adversarial:  # does the test set look like train? (runs/<exp>/adversarial.json, .csv)
        drift.check(cfg, task, samples, test)
    save_folds(cfg, folds, strategy)
    sizes = folds.table["fold"].value_counts().sort_index().tolist()
    log.info("%d rows, %s, %s %d-fold (sizes %s, cv.seed %d) -> %s", len(samples),
             task.describe_targets(cfg, folds.classes), strategy, cfg.cv.folds, sizes, cfg.cv.seed, run_dir.folds_csv)


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
