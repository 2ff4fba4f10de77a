"""`pipeline train --fold full`: one model on every row for the folds' mean best epoch count, with no validation."""

from __future__ import annotations

import pandas as pd

from pipeline import checkpoint
from pipeline.rundir import RunDir
from pipeline.stages import train
from tests.conftest import assert_refused, invoke, write_config


def test_the_refit_trains_on_every_row_for_the_folds_mean_best_epoch(copy_run):
    cfg = copy_run()
    run = RunDir(cfg.run_dir)
    best = [checkpoint.load(f.best)["progress"]["best_epoch"] + 1 for f in run.fold_dirs()]
    epochs = max(1, round(sum(best) / len(best)))
    train.run(cfg, fold="full")
    state = checkpoint.load(run.full.best)
    assert state["progress"]["done"] and state["progress"]["epoch"] + 1 == epochs
    assert state["progress"]["best_score"] is None  # nothing was scored: it has no validation rows
    metrics = pd.read_csv(run.full.metrics)
    assert len(metrics) == epochs and not any(c.startswith("valid") for c in metrics.columns)
    assert not run.full.oof.is_file()
    assert all(f.path.name.startswith("fold") for f in run.fold_dirs())  # full/ is not counted as a fold


def test_the_refit_needs_trained_folds(digits_root, tmp_path):
    from pipeline.stages import prepare

    path, cfg = write_config(tmp_path, digits_root)
    prepare.run(cfg)
    assert_refused(invoke("train", "-c", str(path), "--fold", "full"), "no trained fold")
