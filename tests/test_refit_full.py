"""`pipeline train --fold full`: one model on every row for the folds' mean best epoch count, with no validation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.runs import checkpoint
from pipeline.runs.rundir import RunDir
from pipeline.stages import train
from tests.conftest import assert_export_submits_the_same, assert_refused, cli, invoke, write_config


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


def test_the_refit_joins_the_test_mean_as_one_more_model_and_leaves_the_cv_alone(copy_run, digits_root, tmp_path):
    from pipeline.stages import predict, report
    from pipeline.tasks import build_task

    cfg = copy_run()
    run = RunDir(cfg.run_dir)
    before = json.loads(run.scores.read_text())
    train.run(cfg, fold="full")
    scores = predict.run(cfg, fold="full")  # the refit's test rows alone, then the folds' files combined again
    after = json.loads(run.scores.read_text())
    assert after["cv"] == before["cv"] and after["folds"] == before["folds"]  # the OOF is the folds'
    assert scores["test_models"] == [0, 1, "full"] and "no CV of its own" in scores["full_refit"]["note"]
    assert not run.full.oof.is_file() and json.loads(run.full.predict_json.read_text())["score"] is None
    task = build_task(cfg, run.classes())
    parts = [task.read_outputs(pd.read_parquet(f.test)) for f in (run.fold(0), run.fold(1), run.full)]
    np.testing.assert_allclose(task.read_outputs(pd.read_parquet(run.test)), np.mean(parts, axis=0), atol=1e-6)
    assert "no CV of its own" in report.run("exp", runs_dir=cfg.runs_dir).read_text()

    # predict.full_refit=false: the test mean is the folds' again, and scores.json says nothing of a refit
    cfg.predict.full_refit = False
    assert "full_refit" not in predict.combine_folds(cfg)
    cfg.predict.full_refit = True
    predict.combine_folds(cfg)

    # exported as one more fold (full/), and infer submits what submit does, byte for byte
    export = assert_export_submits_the_same(cfg.runs_dir, "exp", digits_root, tmp_path)
    manifest = json.loads((export / "manifest.json").read_text())
    node = manifest["nodes"]["exp"]
    assert [f["k"] for f in node["folds"]] == [0, 1, "full"] and "no CV of its own" in node["full_refit"]
    assert (export / "exp" / "full" / "model.safetensors").is_file() and manifest["cv_reproduced"]
    cli("export", "exp", "--runs-dir", cfg.runs_dir, "--out", tmp_path / "folds-only", "--folds", "0,1")
    assert "full_refit" not in json.loads((tmp_path / "folds-only" / "manifest.json").read_text())["nodes"]["exp"]
    assert_refused(invoke("export", "exp", "--runs-dir", cfg.runs_dir, "--out", tmp_path / "x", "--folds", "0,ful"),
                   "expected comma-separated fold numbers")


def test_an_unfinished_refit_is_left_out_of_the_test_mean(copy_run, monkeypatch):
    from pipeline.stages import predict
    from tests.conftest import interrupt_at_epoch

    cfg = copy_run()
    run = RunDir(cfg.run_dir)
    monkeypatch.setattr(train, "refit_plan", lambda cfg: (2, "model"))  # two epochs, killed in the second
    interrupt_at_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, fold="full")
    assert run.full.best.is_file() and not checkpoint.load(run.full.best)["progress"]["done"]
    assert "full_refit" not in predict.combine_folds(cfg)
    assert_refused(invoke("predict", "-c", str(run.config), "--fold", "full"), "no finished full-data refit")
