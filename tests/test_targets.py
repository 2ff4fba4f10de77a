"""Target types: metrics against scikit-learn (or Kaggle's formula), what auto infers, decisions fitted on OOF,
folds per target, and the five commands end to end for binary, multilabel, regression and ordinal digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.data.folds import run_config
from pipeline.data.labels import infer_target_type
from pipeline.runs.rundir import RunDir
from pipeline.scoring.metrics import get_metric, logloss
from pipeline.scoring.targets import build_target, quantile_bins
from pipeline.tasks import build_task
from tests.conftest import assert_refused, cli, invoke

rng = np.random.default_rng(0)
N = 200
BIN_T, BIN_P = rng.integers(0, 2, N), rng.random(N)
ML_T, ML_P = rng.integers(0, 2, (N, 4)), rng.random((N, 4))
MC_T, MC_P = rng.integers(0, 5, N), rng.dirichlet(np.ones(5), N)
REG_T = rng.normal(30, 10, N).clip(1)
REG_P = REG_T + rng.normal(0, 3, N)


@pytest.mark.parametrize("name, truth, x, expected", [
    ("accuracy", MC_T, MC_T[::-1], skm.accuracy_score(MC_T, MC_T[::-1])),
    ("f1", BIN_T, BIN_P > 0.5, skm.f1_score(BIN_T, BIN_P > 0.5)),
    ("f1_macro", MC_T, MC_T[::-1], skm.f1_score(MC_T, MC_T[::-1], average="macro")),
    ("f1_micro", ML_T, ML_P > 0.5, skm.f1_score(ML_T, ML_P > 0.5, average="micro")),
    ("f1_weighted", MC_T, MC_T[::-1], skm.f1_score(MC_T, MC_T[::-1], average="weighted")),
    ("f1_samples", ML_T, ML_P > 0.5, skm.f1_score(ML_T, ML_P > 0.5, average="samples")),
    ("f2_samples", ML_T, ML_P > 0.5, skm.fbeta_score(ML_T, ML_P > 0.5, beta=2, average="samples")),
    ("roc_auc", BIN_T, BIN_P, skm.roc_auc_score(BIN_T, BIN_P)),
    ("roc_auc", ML_T, ML_P, skm.roc_auc_score(ML_T, ML_P, average="macro")),
    ("roc_auc", MC_T, MC_P, skm.roc_auc_score(MC_T, MC_P, multi_class="ovr", average="macro")),
    ("pr_auc", BIN_T, BIN_P, skm.average_precision_score(BIN_T, BIN_P)),
    ("qwk", MC_T, MC_T[::-1], skm.cohen_kappa_score(MC_T, MC_T[::-1], weights="quadratic")),
    ("rmse", REG_T, REG_P, math.sqrt(skm.mean_squared_error(REG_T, REG_P))),
    ("mcrmse", np.c_[REG_T, REG_T / 2], np.c_[REG_P, REG_P[::-1]],  # Kaggle's mean columnwise RMSE
     np.mean([math.sqrt(np.mean((REG_P - REG_T) ** 2)), math.sqrt(np.mean((REG_P[::-1] - REG_T / 2) ** 2))])),
    ("rmsle", REG_T, REG_P, math.sqrt(skm.mean_squared_log_error(REG_T, REG_P.clip(0)))),
    ("mae", REG_T, REG_P, skm.mean_absolute_error(REG_T, REG_P)),
    ("r2", REG_T, REG_P, skm.r2_score(REG_T, REG_P)),
    ("logloss", BIN_T, BIN_P, skm.log_loss(BIN_T, BIN_P)),
    ("logloss", MC_T, MC_P, skm.log_loss(MC_T, MC_P)),
])
def test_metrics_match_scikit_learn(name, truth, x, expected):
    assert get_metric(name)(truth, np.asarray(x, dtype=np.float64) if name not in ("accuracy",) else x) == \
        pytest.approx(expected, rel=1e-9)


def test_multilabel_logloss_is_the_mean_over_labels():
    expected = np.mean([skm.log_loss(ML_T[:, j], ML_P[:, j]) for j in range(4)])
    assert logloss(ML_T, ML_P) == pytest.approx(expected)


def test_map_at_k_matches_kaggle_formula():
    def apk(actual, predicted, k):  # Kaggle's ml_metrics.apk
        score, hits = 0.0, 0
        for i, p in enumerate(predicted[:k]):
            if p in actual and p not in predicted[:i]:
                hits += 1
                score += hits / (i + 1)
        return score / min(len(actual), k)
    top = np.argsort(-MC_P, axis=1, kind="stable")
    assert get_metric("map@3")(MC_T, MC_P) == pytest.approx(np.mean([apk([t], list(p), 3) for t, p in zip(MC_T, top, strict=True)]))
    tops = np.argsort(-ML_P, axis=1, kind="stable")
    expected = np.mean([apk(list(np.flatnonzero(t)), list(p), 2) if t.any() else 0.0 for t, p in zip(ML_T, tops, strict=True)])
    assert get_metric("map@2")(ML_T, ML_P) == pytest.approx(expected)


def test_a_metric_that_does_not_fit_the_target_is_refused():
    with pytest.raises(UserError, match="roc_auc does not fit a regression target"):
        get_metric("roc_auc", "regression")
    with pytest.raises(UserError, match="did you mean 'rmse'"):
        get_metric("rsme")


@pytest.mark.parametrize("values, sample, expected", [
    (pd.Series([0, 1, 1, 0]), pd.Series([0.5] * 2), "binary"),
    (pd.Series(["sea", "sea trees", "trees", "desert sea"]), pd.Series(["sea"] * 2), "multilabel"),
    (pd.Series([1.5, 2.25, 3.0, 0.1]), pd.Series([0.0] * 2), "regression"),
    (pd.Series([1, 5, 30, 71]), pd.Series([32.9] * 2), "regression"),
    (pd.Series([0, 1, 2, 3, 4]), pd.Series([0] * 2), "multiclass"),
    (pd.Series(["cat", "dog", "bird"]), pd.Series(["cat"] * 2), "multiclass"),
    (pd.Series(["red oak", "white oak", "red maple"]), pd.Series(["red oak"] * 2), "multiclass"),
])
def test_auto_infers_the_target_type_from_the_column_and_the_sample(values, sample, expected):
    cfg = load_config(None, ["data.id_col=id", "data.target_col=y"])
    kind, why = infer_target_type(values, pd.DataFrame({"id": ["a", "b"], "y": sample}), cfg)
    assert kind == expected, why


def test_thresholds_and_cuts_are_fitted_and_scored_on_other_folds():
    from pipeline.tasks import build_task

    cfg = load_config(None, ["data.target_type=binary", "train.metric=f1"])
    task = build_task(cfg, [0, 1])
    truth = rng.integers(0, 2, 400)
    p = np.clip(truth * 0.3 + rng.random(400) * 0.5, 0, 1).astype(np.float32)[:, None]  # best threshold ~0.3-0.5
    folds = np.arange(400) % 4
    fitted = task.fitted_scores(p, truth, folds)
    t = fitted["decisions"]["threshold"]
    assert 0 < t < 1 and fitted["cv_fitted_in_sample"] >= fitted["cv"] - 1e-9
    assert fitted["cv_fitted_in_sample"] == pytest.approx(skm.f1_score(truth, p[:, 0] >= t))

    cfg = load_config(None, ["data.target_type=ordinal", "train.metric=qwk"])
    task = build_task(cfg, [0, 1, 2, 3])
    grade = rng.integers(0, 4, 400).astype(float)
    pred = (grade * 0.6 + 0.4 + rng.normal(0, 0.3, 400)).astype(np.float32)[:, None]  # shrunk: midpoints are off
    fitted = task.fitted_scores(pred, grade, folds)
    assert fitted["cv"] > fitted["cv_default_decisions"]  # fitted cut points help even on held-out folds
    assert sorted(fitted["decisions"]["cuts"]) == fitted["decisions"]["cuts"]


def test_folds_stratify_tags_iteratively_and_values_by_quantile_bins():
    from pipeline.data.folds import assign_folds

    tags = rng.random((300, 5)) < [0.5, 0.2, 0.1, 0.05, 0.3]
    fold = assign_folds(tags.astype(int), None, 5, "stratified", 0)
    per_fold = np.stack([tags[fold == k].sum(axis=0) for k in range(5)])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 2).all()  # every label spread evenly
    values = rng.lognormal(3, 1, 300)
    fold = assign_folds(quantile_bins(values, 5), None, 5, "stratified", 0)
    assert np.ptp([np.median(values[fold == k]) for k in range(5)]) < 0.25 * np.median(values)


def test_blends_per_target():
    cfg = load_config(None, ["data.target_type=regression", "train.metric=rmse"])
    target = build_target(cfg, [])
    from pipeline.scoring.blend import blend_outputs

    truth = REG_T
    good, noisy = (truth + rng.normal(0, 2, N))[:, None], (truth + rng.normal(0, 6, N))[:, None]
    folds = np.arange(N) % 4
    blend = blend_outputs("weighted", [good, noisy], [good, noisy], truth, folds, target.bound_metric(), target)
    assert blend.weights[0] > blend.weights[1]
    stacked = blend_outputs("stack", [good, noisy], [good, noisy], truth, folds, target.bound_metric(), target)
    assert stacked.held_out < math.sqrt(np.mean((noisy[:, 0] - truth) ** 2))
    with pytest.raises(UserError, match="blends values"):
        blend_outputs("rank", [good, noisy], [good, noisy], truth, folds, target.bound_metric(), target)


# -- end to end on the digits --------------------------------------------------------------------------------
def relabel(root, kind: str):
    """The digits competition with another target: binary (digit >= 5, probability asked), tags (even/big/round),
    regression (the digit's value plus a fraction), ordinal grades (digit // 3)."""
    train, sample = pd.read_csv(root / "train.csv"), pd.read_csv(root / "sample_submission.csv")
    digit = train["label"].str.removeprefix("digit_").astype(int)
    if kind == "binary":
        train["label"], sample["label"] = (digit >= 5).astype(int), 0.5
    elif kind == "multilabel":
        tags = (("even", lambda d: d % 2 == 0), ("big", lambda d: d >= 5), ("round", lambda d: d in (0, 6, 8, 9)),
                ("small", lambda d: d < 5))
        train["label"] = [" ".join(t for t, on in tags if on(d)) for d in digit]
        sample["label"] = "even"
    elif kind == "regression":
        train["label"], sample["label"] = digit + 0.25, 4.5
    else:
        train["label"], sample["label"] = digit // 3, 0
    train.to_csv(root / "train.csv", index=False)
    sample.to_csv(root / "sample_submission.csv", index=False)


@pytest.mark.parametrize("kind, extra, column_check", [
    ("binary", [], lambda s: s.between(0, 1).all() and s.nunique() > 2),
    ("multilabel", ["--set", "train.metric=f1_samples", "--set", "data.min_tags=1"],
     lambda s: s.str.len().gt(0).all() and set(" ".join(s).split()) <= {"even", "big", "round", "small"}),
    ("regression", ["--set", "train.metric=mae"], lambda s: pd.to_numeric(s).notna().all() and s.nunique() > 10),
    ("ordinal", ["--set", "data.target_type=ordinal", "--set", "train.metric=qwk"], lambda s: set(s) <= {0, 1, 2, 3}),
])
def test_every_target_type_runs_the_five_commands(competition, make_config, kind, extra, column_check, caplog):
    relabel(competition, kind)
    path, cfg = make_config(competition, train={"epochs": 1})
    cli("prepare", "--config", path, *extra)
    folds = json.loads((cfg.run_dir / "folds.json").read_text())
    assert folds["target_type"] == kind
    cli("train", "--config", path, "--fold", "all", *extra)
    cli("predict", "--config", path, *extra)
    scores = json.loads((cfg.run_dir / "scores.json").read_text())
    assert scores["metric"] == {"binary": "roc_auc", "multilabel": "f1_samples", "regression": "mae",
                                "ordinal": "qwk"}[kind]
    assert math.isfinite(scores["cv"])
    if kind in ("multilabel", "ordinal"):  # decision metrics: settings fitted on OOF, honest score the headline
        assert scores["decisions"] and "cv_fitted_in_sample" in scores
    cli("submit", cfg.name, "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(cfg.submissions_dir + f"/{cfg.name}.csv")
    assert list(sub.columns) == ["image", "label"] and len(sub) == 359
    assert column_check(sub["label"]), sub["label"].head()
    # One epoch from a zeroed head learns almost nothing (test_ordinal_grades_are_learned... checks learning), but
    # the outputs are still the network's, one per image, and the file is their decisions, row by row.
    run = RunDir(cfg.run_dir)
    task = build_task(run_config(run), run.classes())
    oof, test = pd.read_parquet(run.oof), pd.read_parquet(run.test).set_index("id").loc[sub["image"]]
    assert (task.read_outputs(oof).std(axis=0) > 0).all() and (task.read_outputs(test).std(axis=0) > 0).all()
    decided = task.target.decide(task.read_outputs(test), scores.get("decisions"))
    if kind == "binary":  # the sample asks for probabilities
        np.testing.assert_allclose(sub["label"], task.read_outputs(test)[:, 0], rtol=1e-5)
    elif kind == "multilabel":
        tags = np.array(task.target.columns)
        assert list(sub["label"]) == [" ".join(tags[row.astype(bool)]) for row in decided]
    elif kind == "regression":
        np.testing.assert_allclose(sub["label"], task.read_outputs(test)[:, 0], rtol=1e-5)
    else:
        assert list(sub["label"]) == [int(g) for g in decided]
    cli("report", cfg.name, "--runs-dir", cfg.runs_dir)


def test_values_are_standardised_and_bounded_by_the_folds_training_rows():
    import torch

    cfg = load_config(None, ["data.target_type=regression", "train.metric=mae"])
    target = build_target(cfg, [])
    state = target.fit(np.array([1.0, 5.0, 9.0]))
    assert (state["min"], state["max"]) == (1.0, 9.0)
    z = torch.tensor([[-4.0], [0.0], [4.0]])  # standardised outputs: far below, at the mean, far above
    assert target.activate(z).view(-1).tolist() == [1.0, 5.0, 9.0]  # a negative age is never predicted
    target.load({"mean": 5.0, "std": 2.0})  # saved before the range was kept: unbounded, as trained
    assert target.activate(z).view(-1).tolist() == [-3.0, 5.0, 13.0]
    several = build_target(cfg, ["a", "b"])
    several.fit(np.array([[0.0, 10.0], [2.0, 30.0]]))
    assert several.activate(torch.tensor([[5.0, 0.0], [-5.0, 0.5]])).tolist() == [[2.0, 20.0], [0.0, 25.0]]


def test_ordinal_grades_scored_by_a_value_metric_are_scored_on_the_raw_values():
    cfg = load_config(None, ["data.target_type=ordinal", "train.metric=rmse"])
    target = build_target(cfg, [0, 1, 2])
    outputs, truth = np.array([[0.4], [1.4], [1.6]]), np.array([0.0, 1.0, 2.0])
    assert target.score(truth, outputs) == pytest.approx(0.4)  # not 0.0, as the grades cut at midpoints would be


def test_a_regression_column_with_text_is_one_line_naming_the_row(competition, make_config):
    relabel(competition, "regression")
    train = pd.read_csv(competition / "train.csv")
    train["label"] = train["label"].astype(object)
    train.loc[3, "label"] = "ten"
    train.to_csv(competition / "train.csv", index=False)
    path, _ = make_config(competition)
    assert_refused(invoke("prepare", "--config", path, "--set", "data.target_type=regression"),
                   "row 5", "'ten'", "must hold numbers", file="train.csv")


def test_a_multilabel_row_without_tags_is_refused_when_every_row_needs_one(competition, make_config):
    relabel(competition, "multilabel")
    path, _ = make_config(competition)
    train = pd.read_csv(competition / "train.csv")
    train.loc[[4, 9], "label"] = None
    train.to_csv(competition / "train.csv", index=False)
    assert_refused(invoke("prepare", "--config", path), "empty labels", "data.target_type=multilabel")
    assert_refused(invoke("prepare", "--config", path, "--set", "data.target_type=multilabel",
                          "--set", "data.min_tags=1"), "rows 6, 11 have fewer than data.min_tags=1", file="train.csv")
    cli("prepare", "--config", path, "--set", "data.target_type=multilabel")  # rows without tags are allowed


def test_text_tags_from_0_1_columns_through_the_cli(tmp_path, make_config):
    """Jigsaw style: one 0/1 column per label in train.csv, one probability column per label in the sample."""
    from tests.conftest import SEQ

    root = tmp_path / "toxic"
    root.mkdir()
    words = {"rude": ["idiot", "stupid"], "threat": ["hurt", "kill"], "happy": ["great", "lovely"]}
    rows = []
    for i in range(90):
        on = {k: int(rng.random() < 0.4) for k in words}
        text = " ".join(rng.choice(words[k]) for k, v in on.items() if v) + " the a of " * 2
        rows.append({"id": i, "text": text, **on})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = pd.DataFrame({"id": range(90, 100), "text": ["great day"] * 10})
    test.to_csv(root / "test.csv", index=False)
    test[["id"]].assign(rude=0.5, threat=0.5, happy=0.5).to_csv(root / "sample_submission.csv", index=False)
    base = {**SEQ, "data": {"id_col": "id", "text_col": "text", "label_cols": ["rude", "threat", "happy"]},
            "model": {"name": "gru"}, "predict": {"tta": "none"}}
    path, cfg = make_config(root, base=base, train={"epochs": 3}, sequence={"min_freq": 1})
    cli("prepare", "--config", path)
    assert json.loads((cfg.run_dir / "folds.json").read_text())["target_type"] == "multilabel"
    cli("train", "--config", path, "--fold", "all")
    cli("predict", "--config", path)
    cli("submit", cfg.name, "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(cfg.submissions_dir + f"/{cfg.name}.csv")
    assert list(sub.columns) == ["id", "rude", "threat", "happy"]
    values = sub[["rude", "threat", "happy"]].stack()
    assert values.between(0, 1).all() and not values.isin([0, 1]).all()  # the sample asks for probabilities


def write_essays(root):
    """Texts with two values each: cohesion and syntax go up with "clear" and down with "messy"."""
    root.mkdir()
    rows = []
    for i in range(120):
        good, bad = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        text = " ".join(["clear"] * good + ["messy"] * bad + list(rng.choice(["the", "essay", "is", "on", "a"], 4)))
        rows.append({"id": i, "text": text, "cohesion": 1.0 + good - 0.5 * bad, "syntax": 3.0 - bad})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = pd.DataFrame({"id": range(120, 130), "text": ["clear clear the essay"] * 5 + ["messy messy messy"] * 5})
    test.to_csv(root / "test.csv", index=False)
    test[["id"]].assign(syntax=3.0, cohesion=3.0).to_csv(root / "sample_submission.csv", index=False)
    return root, rows


ESSAYS = {"task": "sequence", "data": {"id_col": "id", "text_col": "text", "label_cols": ["cohesion", "syntax"]},
          "model": {"name": "gru"}, "predict": {"tta": "none"}}


def test_several_value_columns_are_checked_at_prepare(tmp_path, make_config):
    from tests.conftest import SEQ

    root, _ = write_essays(tmp_path / "essays")
    path, _ = make_config(root, base={**SEQ, **ESSAYS}, sequence={"min_freq": 1})
    pd.read_csv(root / "sample_submission.csv")[["id", "syntax"]].to_csv(root / "sample_submission.csv", index=False)
    assert_refused(invoke("prepare", "--config", path), "needs one column per value (cohesion, syntax)")
    assert_refused(invoke("prepare", "--config", path, "--set", "data.target_type=ordinal"),
                   "an ordinal target is one grade column")
    assert_refused(invoke("prepare", "--config", path, "--set", "data.target_col=syntax"),
                   "data.target_col='syntax' is also in data.label_cols")
    train = pd.read_csv(root / "train.csv", dtype={"syntax": str})
    train.loc[7, "syntax"] = "n/a"
    train.to_csv(root / "train.csv", index=False)
    assert_refused(invoke("prepare", "--config", path, "--set", "data.target_type=regression"),
                   "row 9, column 'syntax'", "hold numbers", file="train.csv")


def test_text_values_from_several_columns_through_the_cli(tmp_path, make_config):
    """CommonLit/ELL style: several value columns per text (data.label_cols), one output each, scored by MCRMSE;
    the sample's value columns are filled in its order, and a stack blend keeps every column."""
    from tests.conftest import SEQ

    root, rows = write_essays(tmp_path / "essays")
    path, cfg = make_config(root, base={**SEQ, **ESSAYS}, train={"epochs": 10, "metric": "mcrmse", "base_lr": 0.3},
                            sequence={"min_freq": 1})
    cli("prepare", "--config", path)
    meta = json.loads((cfg.run_dir / "folds.json").read_text())
    assert (meta["target_type"], meta["classes"]) == ("regression", ["cohesion", "syntax"])
    cli("train", "--config", path, "--fold", "all")
    cli("predict", "--config", path)
    state = json.loads((cfg.run_dir / "fold0" / "preprocess.json").read_text())["target"]
    assert len(state["mean"]) == len(state["std"]) == 2  # each column standardised on its own
    oof = pd.read_parquet(cfg.run_dir / "oof.parquet")
    truth = pd.DataFrame(rows).set_index("id").loc[oof["id"].astype(int)]
    rmse = [math.sqrt(np.mean((oof[c].to_numpy() - truth[c].to_numpy()) ** 2)) for c in ("cohesion", "syntax")]
    scores = json.loads((cfg.run_dir / "scores.json").read_text())
    assert scores["cv"] == pytest.approx(np.mean(rmse), rel=1e-4)
    assert scores["cv"] < 0.8 * np.mean([truth[c].std() for c in ("cohesion", "syntax")])  # beats the mean
    cli("report", cfg.name, "--runs-dir", cfg.runs_dir)
    assert "Per value column" in (cfg.run_dir / "report.html").read_text()
    cli("ensemble", cfg.name, cfg.name, "--method", "stack", "--name", "stacked", "--runs-dir", cfg.runs_dir)
    cli("submit", "stacked", "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(cfg.submissions_dir + "/stacked.csv")
    assert list(sub.columns) == ["id", "syntax", "cohesion"]
    assert sub.loc[:4, "syntax"].mean() > sub.loc[5:, "syntax"].mean()  # "messy" texts score lower syntax


def test_series_regression_and_its_ensembles(tmp_path, make_config, monkeypatch):
    """A value per series (the sine's amplitude): standardised per fold, weighted and stacked blends of two models.
    Two-epoch members barely beat the mean, and pipeline.scoring.noise would decide each fitted blend by a few rows: both
    blends give way to the mean here (forced), so each is checked as exactly that: the members' values averaged."""
    from pipeline.scoring import noise
    from tests.conftest import SEQ, write_series_competition

    root = write_series_competition(tmp_path / "series")
    labels = pd.read_csv(root / "train_labels.csv")
    labels["label"] = labels["label"].str.removeprefix("class").astype(float) * 1.5 + 0.1
    labels.to_csv(root / "train_labels.csv", index=False)
    sample = pd.read_csv(root / "sample_submission.csv").assign(label=0.5)
    sample.to_csv(root / "sample_submission.csv", index=False)
    names = []
    for model in ("inception", "gru"):
        path, cfg = make_config(root, base=SEQ, name=f"reg-{model}", model={"name": model}, predict={"tta": "none"})
        cli("prepare", "--config", path)
        cli("train", "--config", path, "--fold", "all")
        cli("predict", "--config", path)
        names.append(cfg.name)
    state = json.loads((cfg.run_dir / "fold0" / "preprocess.json").read_text())
    assert set(state["target"]) == {"mean", "std", "min", "max"} and "mean" in state  # the value's and the channels' statistics
    assert json.loads((cfg.run_dir / "scores.json").read_text())["metric"] == "rmse"

    def values(run: str, part: str) -> pd.Series:
        return pd.read_parquet(cfg.run_dir.parent / run / f"{part}.parquet").set_index("id")["prediction"].sort_index()

    truth = labels.set_index("series_id")["label"]
    monkeypatch.setattr(noise, "beats_noise", lambda gain, noise: False)
    for method in ("weighted", "stack"):
        cli("ensemble", *names, "--method", method, "--name", f"blend-{method}", "--runs-dir", cfg.runs_dir)
        scores = json.loads((cfg.run_dir.parent / f"blend-{method}" / "scores.json").read_text())
        assert math.isfinite(scores["cv"])
        assert scores["weights_from"] == "uniform" and scores["fitted_by"] == {"weighted": "hill climbing",
                                                                             "stack": "stacking"}[method]
        for part in ("oof", "test"):  # the mean of the members' values, row by row
            pd.testing.assert_series_equal(values(f"blend-{method}", part),
                                           (values(names[0], part) + values(names[1], part)) / 2, atol=1e-5)
        oof = values(f"blend-{method}", "oof")
        assert oof.std() > 0 and scores["cv"] == pytest.approx(math.sqrt(((oof - truth[oof.index]) ** 2).mean()))
    assert_refused(invoke("ensemble", *names, "--method", "rank", "--runs-dir", cfg.runs_dir), "blends values")
    cli("submit", "blend-stack", "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(cfg.submissions_dir + "/blend-stack.csv")
    assert pd.to_numeric(sub["label"]).notna().all() and sub["label"].nunique() > 1
    test = values("blend-stack", "test")
    np.testing.assert_allclose(sub["label"], test[sub["series_id"]].to_numpy(), rtol=1e-5)  # what the blend predicted


def test_ordinal_grades_are_learned_through_the_five_commands(tmp_path, make_config):
    """Grades the series carry (the sine's frequency: 0, 1, 2), learned by MiniRocket's closed-form ridge head: the
    CV is well above a constant's (QWK 0), and the submitted grades agree with the held-back solution."""
    pytest.importorskip("aeon")
    from tests.conftest import SEQ, write_series_competition

    root = write_series_competition(tmp_path / "series", n_train=45, n_test=12)
    for name in ("train_labels.csv", "solution.csv"):
        frame = pd.read_csv(root / name)
        frame["label"] = frame["label"].str.removeprefix("class").astype(int)
        frame.to_csv(root / name, index=False)
    pd.read_csv(root / "sample_submission.csv").assign(label=0).to_csv(root / "sample_submission.csv", index=False)
    path, cfg = make_config(root, base=SEQ, name="grades", model={"name": "minirocket"},
                            sequence={"rocket_kernels": 336}, predict={"tta": "none"},
                            data={"target_type": "ordinal"}, train={"metric": "qwk"})
    for command in ("prepare", "train", "predict"):
        cli(command, "--config", path)
    scores = json.loads((cfg.run_dir / "scores.json").read_text())
    assert scores["metric"] == "qwk" and scores["cv"] > 0.6, scores
    cli("submit", "grades", "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(cfg.submissions_dir + "/grades.csv")
    solution = pd.read_csv(root / "solution.csv").set_index("series_id").loc[sub["series_id"], "label"]
    assert set(sub["label"]) <= {0, 1, 2} and sub["label"].nunique() > 1
    assert skm.cohen_kappa_score(solution, sub["label"], weights="quadratic") > 0.6
