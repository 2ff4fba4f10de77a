"""CV you can trust: each fold predicts with its own recipe, folds belong to the competition (seed-averaged and
other-model experiments blend), fitted blends report their held-out score as CV, and stale folds are caught."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.runs import checkpoint
from pipeline.runs.rundir import RunDir
from pipeline.stages import ensemble, predict, prepare, train


def test_predict_uses_each_folds_own_recipe(competition, make_config, tmp_path):
    """Fold 0 trained at 48 px, then predicted with a config that says 32 px: the OOF and test predictions are
    those of predicting with the explicit 48 px override; a changed model.name is no traceback either."""
    path, cfg = make_config(competition, train={"epochs": 1})
    prepare.run(cfg)
    train.run(load_config(path, ["image.size=48"]), fold=0)
    predict.run(load_config(path, ["model.name=test_efficientnet"]), fold=0)  # today's config differs twice
    fold = RunDir(cfg.run_dir).fold(0)
    recipe_run = {p: pd.read_parquet(getattr(fold, p)) for p in ("oof", "test")}
    assert json.loads(fold.predict_json.read_text())["image_size"] == 48
    predict.run(load_config(path, ["image.size=48"]), fold=0)
    for part, frame in recipe_run.items():
        pd.testing.assert_frame_equal(frame, pd.read_parquet(getattr(fold, part)))
    predict.run(load_config(path, ["predict.image_size=40"]), fold=0)  # a deliberate test-time resolution
    assert json.loads(fold.predict_json.read_text())["image_size"] == 40


def test_a_checkpoint_without_its_recipe_is_a_clear_error(competition, make_config):
    _, cfg = make_config(competition, train={"epochs": 1})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    best = RunDir(cfg.run_dir).fold(0).best
    state = checkpoint.load(best)
    del state["config"]
    torch.save(state, best)
    with pytest.raises(UserError, match="holds no training recipe.*--fold 0 --force"):
        predict.run(cfg, fold=0)


def test_a_recipe_key_newer_than_the_checkpoint_takes_its_default(competition, make_config):
    """A fold saved before image.interpolation existed was trained with the default (linear) resampling: predict
    frames its images so, whatever today's config says."""
    from pipeline.core.config import to_dict
    from pipeline.runs.recipe import differences, fold_recipe

    _, cfg = make_config(competition, train={"epochs": 1})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    fold = RunDir(cfg.run_dir).fold(0)
    state = checkpoint.load(fold.best)
    del state["config"]["image"]["interpolation"]
    torch.save(state, fold.best)
    today = load_config(cfg.run_dir / "config.yaml", ["image.interpolation=cubic"])
    assert fold_recipe(today, fold).image.interpolation == "linear"
    assert differences(state["config"], to_dict(load_config(cfg.run_dir / "config.yaml"))) == []  # no false warning
    predict.run(today, fold=0)


def test_experiments_that_differ_only_in_seed_share_folds_and_blend(competition, make_config):
    runs = {}
    for seed in (1, 2):
        _, cfg = make_config(competition, name=f"s{seed}", seed=seed, train={"epochs": 1})
        prepare.run(cfg)
        train.run(cfg, fold="all")
        predict.run(cfg)
        runs[seed] = cfg
    a, b = (pd.read_csv(RunDir(c.run_dir).folds_csv) for c in runs.values())
    pd.testing.assert_frame_equal(a, b)
    weights = [checkpoint.load(RunDir(c.run_dir).fold(0).best)["model"] for c in runs.values()]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the seed still seeds training
    scores = ensemble.run(["s1", "s2"], method="mean", name="seeds", runs_dir=runs[1].runs_dir)
    assert np.isfinite(scores["cv"])


def test_a_fitted_blend_reports_its_held_out_score_as_cv(competition, make_config, monkeypatch):
    """Both sides of pipeline.scoring.noise's verdict, each forced (three digits models of one or two epochs rarely beat the
    mean by more than noise, and a test must not hang on which way a few rows fall): climbed weights kept, their
    held-out OOF and score the headline; given way to the mean, no held-out or in-sample score at all."""
    from pipeline.scoring import noise
    from pipeline.scoring.blend import combine, held_out_weights_score
    from pipeline.tasks import build_task

    names = []
    for name, model in (("a", "test_resnet"), ("b", "test_efficientnet"), ("c", "test_resnet")):
        _, cfg = make_config(competition, name=name, model={"name": model}, train={"epochs": 1 if name == "c" else 2})
        prepare.run(cfg)
        train.run(cfg, fold="all")
        predict.run(cfg)
        names.append(name)
    task = build_task(cfg, RunDir(cfg.run_dir).classes())
    members = [pd.read_parquet(RunDir(cfg.run_dir.parent / n).oof).sort_values("id", ignore_index=True) for n in names]
    truth, folds = task.targets(members[0]), members[0]["fold"].to_numpy()
    outputs = [task.read_outputs(m) for m in members]

    def blended(name: str) -> tuple[dict, pd.DataFrame, list]:
        scores = ensemble.run(names, method="weighted", name=name, runs_dir=cfg.runs_dir)
        run = RunDir(cfg.run_dir.parent / name)
        saved = json.loads(run.scores.read_text())
        oof = pd.read_parquet(run.oof).sort_values("id", ignore_index=True)
        classes = [c for c in oof.columns if c.startswith("digit_")]
        recomputed = float((oof[classes].to_numpy().argmax(1) == oof["target"].map(classes.index).to_numpy()).mean())
        assert saved["cv"] == pytest.approx(recomputed)  # the headline is the score of the stored OOF
        assert scores["cv"] == saved["cv"]
        weights = json.loads(run.weights.read_text())["weights"]
        return saved, oof, [weights[n] for n in names]

    monkeypatch.setattr(noise, "beats_noise", lambda gain, noise: True)  # the climbed weights are kept
    saved, oof, weights = blended("blend")
    assert saved["weights_from"] == "hill climbing"
    assert saved["cv"] == saved["cv_held_out"] and "cv_in_sample" in saved
    # the stored OOF is each fold's rows blended by weights climbed on the other folds: never the in-sample blend
    held_out, rows = held_out_weights_score("weighted", outputs, truth, folds, task.metric)
    np.testing.assert_allclose(task.read_outputs(oof), rows, atol=1e-6)
    assert saved["cv_held_out"] == pytest.approx(held_out)
    assert saved["cv_in_sample"] == pytest.approx(task.metric(truth, combine("weighted", outputs, np.array(weights))))

    monkeypatch.setattr(noise, "beats_noise", lambda gain, noise: False)  # the mean wins
    saved, oof, weights = blended("mean")
    assert saved["weights_from"] == "uniform" and weights == pytest.approx([1 / 3] * 3)
    # nothing was fitted: the mean is the blend, and there is no in-sample score to report
    assert saved["cv_held_out"] is None and "cv_in_sample" not in saved
    np.testing.assert_allclose(task.read_outputs(oof), combine("mean", outputs, np.full(3, 1 / 3)), atol=1e-6)


def test_changed_cv_settings_are_never_up_to_date(competition, make_config, caplog):
    path, cfg = make_config(competition, train={"epochs": 1})
    prepare.run(cfg)
    prepare.run(load_config(path, ["cv.strategy=kfold"]))  # nothing trained yet: remade, with the reason
    assert "cv.strategy is 'kfold', was 'auto'" in caplog.text
    assert json.loads(RunDir(cfg.run_dir).folds_json.read_text())["strategy"] == "kfold"
    changed = load_config(path, ["cv.strategy=kfold", "cv.seed=7"])
    train.run(load_config(path, ["cv.strategy=kfold"]), fold=0)
    with pytest.raises(UserError, match=r"cv.seed is 7, was 42.*--force"):
        prepare.run(changed)  # fold 0 is trained on the old folds: refused without --force
    with pytest.raises(UserError, match=r"other CV settings \(cv.seed is 7"):
        train.run(changed, fold=1)
    prepare.run(changed, force=True)
    assert json.loads(RunDir(cfg.run_dir).folds_json.read_text())["key"]["seed"] == 7


def test_folds_file_reuses_another_experiments_folds(competition, make_config):
    _, first = make_config(competition, name="first", cv={"seed": 3})
    prepare.run(first)
    _, second = make_config(competition, name="second", cv={"folds_file": str(RunDir(first.run_dir).folds_csv)})
    prepare.run(second)
    a, b = (pd.read_csv(RunDir(c.run_dir).folds_csv) for c in (first, second))
    assert a["fold"].tolist() == b["fold"].tolist()
    broken = RunDir(first.run_dir).folds_csv.parent / "broken.csv"
    a.iloc[1:].to_csv(broken, index=False)
    _, third = make_config(competition, name="third", cv={"folds_file": str(broken)})
    with pytest.raises(UserError, match="no fold for 1 ids of train"):
        prepare.run(third)


def test_view_search_keeps_helpful_views_and_drops_harmful_ones_choosing_on_other_folds():
    from pipeline.scoring.metrics import CLASS_METRICS as METRICS
    from pipeline.scoring.metrics import logloss
    from pipeline.scoring.tta import choose_views

    rng = np.random.default_rng(0)
    outputs = {}
    for k in range(3):
        truth = rng.integers(0, 4, 300)
        clean = np.eye(4)[truth] * 2.0

        def probs(noise, flip=False, truth=truth, clean=clean):
            logits = (np.eye(4)[(truth + 1) % 4] * 2.0 if flip else clean) + rng.normal(0, noise, (len(truth), 4))
            e = np.exp(logits - logits.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)
        # identity, a view as good (another noisy look), a view the model never trained on (wrong class)
        outputs[k] = ([probs(2.0), probs(2.0), probs(2.0, flip=True)], truth)
    metric = METRICS["accuracy"]
    chosen = choose_views(outputs, ["identity", "good", "never_trained"], lambda o: np.mean(o, axis=0),
                          lambda o, t: {"score": metric(t, o), "loss": logloss(t, o)}, metric)
    assert chosen == {0: [0, 1], 1: [0, 1], 2: [0, 1]}


def test_tta_search_through_predict(competition, make_config):
    _, cfg = make_config(competition, train={"epochs": 1}, augment={"hflip": 0.0})
    prepare.run(cfg)
    train.run(cfg, fold="all")
    with pytest.raises(UserError, match="at least two folds"):
        predict.run(cfg, fold=0, tta="search")
    scores = predict.run(cfg, tta="search")
    run = RunDir(cfg.run_dir)
    for k in range(3):
        record = json.loads(run.fold(k).predict_json.read_text())
        assert record["views"][0] == "identity" and set(record["views"]) <= set(record["searched"])
        assert "shift_left" in record["searched"] and "scale115" in record["searched"]
    assert scores["tta"] == "search" and np.isfinite(scores["cv"])


def test_averaged_weights_are_the_same_built_or_read_back(competition, make_config):
    """The averaged weights predict alike when just built and when read from avg.pt; scoring them against the
    best epoch (predict.json) must not swap one for the other."""
    _, cfg = make_config(competition, train={"epochs": 3, "keep_top": 3}, predict={"weights": "avg", "tta": "none"},
                         cv={"folds": 2})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    fold = RunDir(cfg.run_dir).fold(0)
    predict.run(cfg, fold=0)  # builds avg.pt
    built, record = pd.read_parquet(fold.oof), json.loads(fold.predict_json.read_text())
    predict.run(cfg, fold=0)  # reads it back
    pd.testing.assert_frame_equal(built, pd.read_parquet(fold.oof))
    assert record["weights_used"] == "avg" and record["score_no_tta"] == pytest.approx(record["score_avg_no_tta"])
