"""`pipeline train --fold full`: one model on every row for the folds' mean best epoch count, with no validation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.runs import checkpoint
from pipeline.runs.rundir import RunDir, best_weights
from pipeline.stages import train
from tests.conftest import assert_export_submits_the_same, assert_refused, cli, invoke, write_config


def set_best(run: RunDir, picks: dict) -> None:
    """Rewrite fold k's best.pt as if its best epoch (1-based) and weights had been picks[k] = (epochs, source)."""
    for k, (epochs, source) in picks.items():
        state = checkpoint.load(run.fold(k).best)
        state["progress"].update(best_epoch=epochs - 1, best_source=source)
        checkpoint.save(run.fold(k).best, state)


def test_the_refit_trains_on_every_row_for_the_folds_mean_best_epoch(copy_run, monkeypatch):
    cfg = copy_run()
    run = RunDir(cfg.run_dir)
    set_best(run, {0: (2, "ema"), 1: (4, "ema")})  # (2 + 4) / 2 = 3 epochs, not train.epochs (2); EMA in both
    epochs = 3
    seen = []
    real_fit = train.fit

    def spy(job, *args, **kwargs):
        seen.append((job.train_loader.dataset, job.valid_loader))
        return real_fit(job, *args, **kwargs)

    monkeypatch.setattr(train, "fit", spy)
    train.run(cfg, fold="full")
    state = checkpoint.load(run.full.best)
    assert state["progress"]["done"] and state["progress"]["epoch"] + 1 == epochs
    assert state["progress"]["best_score"] is None  # nothing was scored: it has no validation rows
    metrics = pd.read_csv(run.full.metrics)
    assert len(metrics) == epochs and not any(c.startswith("valid") for c in metrics.columns)
    assert not run.full.oof.is_file()
    assert all(f.path.name.startswith("fold") for f in run.fold_dirs())  # full/ is not counted as a fold

    # every training row, each once, with its own label: 150 digits, 9 full batches of 16 per epoch
    ((dataset, valid),) = seen
    train_csv = pd.read_csv(cfg.data_path("train_csv"))
    assert valid is None and len(dataset) == len(train_csv) == 150
    images = [p.relative_to(cfg.data.root).as_posix() for p in dataset.images.paths]
    assert sorted(images) == sorted(train_csv["image"])
    label = dict(zip(train_csv["image"], train_csv["label"], strict=True))
    assert [run.classes()[y] for y in dataset.labels] == [label[i] for i in images]
    assert state["progress"]["step"] == epochs * (150 // 16)  # fold 0's 75 rows alone would take 4 steps an epoch

    # the weights kept are the EMA's, as both folds' best were, and predict reads those
    assert state["progress"]["best_source"] == "ema" and best_weights(state) is state["ema"]
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])  # the choice matters


def test_the_refit_keeps_the_ema_weights_only_where_most_folds_best_epoch_was_the_emas(copy_run):
    cfg = copy_run()
    run = RunDir(cfg.run_dir)
    set_best(run, {0: (1, "ema"), 1: (3, "ema")})
    assert train.refit_plan(cfg) == (2, "ema")
    set_best(run, {0: (1, "ema"), 1: (3, "model")})  # one of two is no majority
    assert train.refit_plan(cfg) == (2, "model")
    set_best(run, {0: (5, "model"), 1: (6, "model")})  # 5.5 rounds to even
    assert train.refit_plan(cfg) == (6, "model")
    set_best(run, {0: (1, "ema"), 1: (1, "ema")})
    cfg.train.ema = False  # no EMA trained this time: the raw weights, whatever the folds picked
    assert train.refit_plan(cfg) == (1, "model")


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


def test_an_ensemble_whose_member_has_a_refit_exports_and_infers_what_submit_does(copy_run, digits_root, tmp_path):
    """Member a with a full-data refit in its test mean, member b without: the export carries a's full/ beside its
    folds, and infer, without train data, predicts the blend's test.parquet and submits submit's file."""
    from pipeline.stages import ensemble, predict
    from pipeline.stages.infer import predict_export

    a = copy_run("a")
    copy_run("b")  # the same folds, no refit
    train.run(a, fold="full")
    predict.run(a, fold="full")
    assert json.loads(RunDir(a.run_dir).scores.read_text())["test_models"] == [0, 1, "full"]
    ensemble.run(["a", "b"], method="weighted", name="blend", runs_dir=a.runs_dir)
    export = assert_export_submits_the_same(a.runs_dir, "blend", digits_root, tmp_path)
    nodes = json.loads((export / "manifest.json").read_text())["nodes"]
    assert nodes["blend"]["kind"] == "ensemble" and nodes["blend"]["members"] == ["a", "b"]
    assert [f["k"] for f in nodes["a"]["folds"]] == [0, 1, "full"] and "full_refit" in nodes["a"]
    assert [f["k"] for f in nodes["b"]["folds"]] == [0, 1] and "full_refit" not in nodes["b"]
    assert (export / "a" / "full" / "model.safetensors").is_file() and not (export / "b" / "full").exists()
    inferred = predict_export(export, tmp_path / "blend-test-only")[0].sort_values("id", ignore_index=True)
    blended = pd.read_parquet(RunDir(a.run_dir.parent / "blend").test).sort_values("id", ignore_index=True)
    pd.testing.assert_frame_equal(inferred, blended, check_exact=False, atol=1e-6)
