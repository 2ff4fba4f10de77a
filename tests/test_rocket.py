"""model.name=minirocket|multirocket: aeon's random-kernel features fitted per fold, a logistic or ridge head solved by
inner CV, through the same five commands and files as the networks (and blended with them)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.scoring.targets import build_target
from pipeline.tasks.sequence.rocket import RocketFeatures, logistic
from tests.conftest import SEQ, assert_export_submits_the_same, cli, write_series_competition

pytest.importorskip("aeon")
ROCKET = {"model": {"name": "minirocket"}, "sequence": {"rocket_kernels": 336}, "predict": {"tta": "none"}}


def series(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(5, 30)), 3)).astype(np.float32) for _ in range(n)]


def test_the_fitted_transform_survives_its_saved_state_and_pads_short_series():
    items = series(12)
    fitted = RocketFeatures.fit("minirocket", 336, 0, items)
    assert fitted.length == 29 or fitted.length == max(len(x) for x in items)  # the longest training series
    again = RocketFeatures.from_state(json.loads(json.dumps(fitted.state())))  # preprocess.json's round trip
    others = series(5, seed=1)
    assert np.array_equal(fitted(others), again(others)) and fitted(others).shape == (5, 336)
    short = RocketFeatures.fit("minirocket", 336, 0, [x[:4] for x in items])
    assert short.length == 9  # the kernel's length at least: shorter series are padded


def test_the_logistic_head_is_the_full_problem_solved_in_the_rows_span():
    """Few rows, many features: solving in the rows' span gives the weights sklearn finds on all features."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(30, 200)), rng.integers(0, 3, 30)
    coef, intercept, c = logistic(z, y, np.ones(30), 3)  # c: the C inner CV chose
    full = LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(z, y)
    assert np.allclose(z @ coef.T + intercept, z @ full.coef_.T + full.intercept_, atol=1e-3)


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_minirocket_runs_the_five_commands_and_blends_with_a_network(kind, tmp_path, make_config):
    root = write_series_competition(tmp_path / "series", n_train=45, n_test=12)
    sections = dict(ROCKET)
    if kind == "regression":  # the sine's frequency as a value, to be regressed
        for name in ("train_labels.csv", "solution.csv"):
            frame = pd.read_csv(root / name)
            frame["label"] = frame["label"].str.removeprefix("class").astype(float) + 0.25
            frame.to_csv(root / name, index=False)
        sample = pd.read_csv(root / "sample_submission.csv").assign(label=0.5)
        sample.to_csv(root / "sample_submission.csv", index=False)
        sections |= {"data": {"target_type": "regression"}, "train": {"metric": "rmse"}}
    path, cfg = make_config(root, base=SEQ, name="rocket", **sections)
    for command in ("prepare", "train", "predict"):
        cli(command, "--config", path)
    scores = json.loads((cfg.run_dir / "scores.json").read_text())
    truth = pd.read_csv(root / "train_labels.csv")["label"]
    if kind == "multiclass":
        assert scores["cv"] > 0.8, scores  # three sine frequencies: easy for random kernels
    else:
        assert scores["cv"] < 0.5 * truth.std(), scores  # well under predicting the mean
    metrics = pd.read_csv(cfg.run_dir / "fold0" / "metrics.csv")
    assert len(metrics) == 1  # one closed-form solve, not epochs
    gru, _ = make_config(root, base=SEQ, name="gru", **{**sections, "model": {"name": "gru"},
                                                         "train": {**sections.get("train", {}), "epochs": 1},
                                                         "cv": {"folds_file": str(cfg.run_dir / "folds.csv")}})
    for command in ("prepare", "train", "predict"):
        cli(command, "--config", gru)
    cli("ensemble", "rocket", "gru", "--method", "weighted", "--name", "blend", "--runs-dir", cfg.runs_dir)
    cli("submit", "blend", "--runs-dir", cfg.runs_dir)
    if kind == "multiclass":
        assert_export_submits_the_same(cfg.runs_dir, "rocket", root, tmp_path)  # preprocess.json carries the kernels


def test_minirocket_refuses_soft_targets():
    from pipeline.tasks.sequence.rocket import RocketModel

    cfg = Config()
    cfg.data.target_type = "multiclass"
    target = build_target(cfg, ["a", "b"])
    model = RocketModel(RocketFeatures.fit("minirocket", 84, 0, series(4)), 2)

    class Soft:
        labels = np.full((4, 2), 0.5, np.float32)
        items = [__import__("torch").as_tensor(x) for x in series(4)]

    with pytest.raises(UserError, match="soft targets"):
        model.solve(SimpleNamespace(target=target), Soft())


@pytest.mark.slow  # numba compiles MultiRocket's kernels on first use (about a minute)
def test_multirocket_trains_and_predicts(tmp_path, make_config):
    root = write_series_competition(tmp_path / "series", n_train=30, n_test=6)
    path, cfg = make_config(root, base=SEQ, name="multi", cv={"folds": 2},
                            **{**ROCKET, "model": {"name": "multirocket"}})
    for command in ("prepare", "train", "predict"):
        cli(command, "--config", path)
    assert json.loads((cfg.run_dir / "scores.json").read_text())["cv"] > 0.7


@pytest.mark.parametrize("kind, classes", [("binary", ["no", "yes"]), ("multilabel", ["a", "b", "c"]),
                                           ("ordinal", [1, 2, 3])])
def test_every_target_type_gets_its_head(kind, classes):
    """Binary: one logit for the positive class; tags: a logistic per tag; grades: ridge on the value."""
    import torch

    from pipeline.tasks.sequence.rocket import RocketModel

    rng = np.random.default_rng(0)
    items = [rng.normal(size=(20, 2)).astype(np.float32) for _ in range(40)]
    signal = np.array([x[:, 0].mean() for x in items])
    labels = {"binary": (signal > 0).astype(np.int64),
              "multilabel": np.stack([signal > 0, signal < 0, np.zeros(40, bool)], 1).astype(np.int64),
              "ordinal": np.digitize(signal, [-0.1, 0.1]).astype(np.float64) + 1}[kind]
    for x, s in zip(items, signal, strict=True):  # make the signal loud enough to learn
        x[:, 0] += 3 * s
    cfg = Config()
    cfg.data.target_type, cfg.train.metric = kind, "auto"
    target = build_target(cfg, classes)
    if kind == "ordinal":
        target.fit(labels)  # the grades' mean and spread, as fit_fold sets them

    class Rows:
        def __init__(self, series, y):
            self.items, self.labels = [torch.as_tensor(x) for x in series], y

        def __len__(self):
            return len(self.items)

    model = RocketModel(RocketFeatures.fit("minirocket", 168, 0, items), target.width)
    model.solve(SimpleNamespace(target=target), Rows(items, labels))
    x = torch.nn.utils.rnn.pad_sequence([torch.as_tensor(i) for i in items], batch_first=True)
    outputs = target.activate(model.eval()(x, torch.ones(x.shape[:2], dtype=torch.bool))).detach().numpy()
    assert outputs.shape == (40, target.width)
    assert target.hits(outputs, labels).mean() > 0.8  # in sample: the head learned the signal
