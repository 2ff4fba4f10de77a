"""`pipeline tune`: the sampling, the stages, the border warning, and a real search on the digits through the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.workflows.tune import Param, default_space, parse_param, parse_stages, warn_edges
from tests.conftest import assert_refused, cli, invoke


def test_log_uniform_gives_every_decade_the_same_chance():
    p = parse_param("train.base_lr=log:1e-5:1e-1")
    draws = np.array([p.sample(np.random.default_rng(i)) for i in range(4000)])
    assert draws.min() >= 1e-5 and draws.max() <= 1e-1
    per_decade = np.histogram(np.log10(draws), bins=[-5, -4, -3, -2, -1])[0] / len(draws)
    assert np.allclose(per_decade, 0.25, atol=0.03), per_decade  # uniform sampling would put ~90% in the last decade
    u = parse_param("model.drop_rate=uniform:0:0.5")
    assert np.mean([u.sample(np.random.default_rng(i)) for i in range(4000)]) == pytest.approx(0.25, abs=0.01)
    assert {parse_param("model.name=choice:test_resnet|test_efficientnet").sample(np.random.default_rng(i))
            for i in range(50)} == {"test_resnet", "test_efficientnet"}
    assert {parse_param("train.epochs=int:2:4").sample(np.random.default_rng(i)) for i in range(50)} == {2, 3, 4}


@pytest.mark.parametrize("text", ["train.base_lr", "train.base_lr=log:1e-3", "train.base_lr=log:0:1",
                                  "train.base_lr=normal:0:1", "train.base_lr=uniform:1:0", "=log:1:2"])
def test_bad_params_are_refused_with_the_syntax(text):
    with pytest.raises(UserError, match="--param"):
        parse_param(text)


def test_stages_and_default_space_follow_the_config():
    cfg = load_config(None, ["train.epochs=12", "cv.folds=4", "train.base_lr=1e-3", "train.weight_decay=0"])
    assert [(s.epochs, s.folds) for s in parse_stages(["1x1", "fullx1", "fullxall"], cfg)] == [(1, 1), (12, 1), (12, 4)]
    for bad in (["2"], ["1x5"], ["0x1"], []):
        with pytest.raises(UserError, match="stage"):
            parse_stages(bad, cfg)
    space = {p.key: p for p in default_space(cfg)}
    assert (space["train.base_lr"].low, space["train.base_lr"].high) == pytest.approx((1e-4, 1e-2))
    assert space["train.weight_decay"].low > 0  # a log range cannot start at zero decay
    assert "model.drop_rate" in space and "train.label_smoothing" in space
    assert set(p.key for p in default_space(load_config(None, ["task=detection"]))) == {"train.base_lr",
                                                                                      "train.weight_decay"}


def test_border_warning_names_the_side_and_a_wider_range():
    space = [Param("train.base_lr", "log", 1e-4, 1e-2), Param("model.drop_rate", "uniform", 0.0, 0.5),
             Param("train.weight_decay", "log", 1e-3, 1e-1)]
    best = pd.Series({"train.base_lr": 9.5e-3, "model.drop_rate": 0.01, "train.weight_decay": 1e-2})
    (warning,) = warn_edges(best, space, edge=0.1)  # drop_rate at 0: zero is a floor, nothing beyond it
    assert "train.base_lr=0.0095 is at the high end" in warning and "train.base_lr=log:0.0001:0.1" in warning
    best["model.drop_rate"] = 0.49
    assert "model.drop_rate=uniform:0:0.75" in warn_edges(best, space, edge=0.1)[1]


def test_tune_runs_stages_resumes_and_refuses_another_plan(competition, make_config, tmp_path):
    path, cfg = make_config(competition, name="tuned", cv={"folds": 2}, train={"epochs": 2}, data={"cache": True})
    args = ["tune", "--config", str(path), "--trials", "3", "--stages", "1x1,fullxall",
            "--param", "train.base_lr=log:3e-2:3e-1", "--param", "model.drop_rate=uniform:0:0.3"]
    result = cli(*args)
    root = cfg.run_dir / "tune"
    trials = pd.read_csv(root / "trials.csv")
    assert len(trials) == 3 + 1 and (trials["status"] == "ok").all()  # 3 trials, then the best third: 1
    first, second = trials[trials["stage"] == 1], trials[trials["stage"] == 2]
    assert (first[["epochs", "folds"]] == [1, 1]).all().all() and (second[["epochs", "folds"]] == [2, 2]).all().all()
    assert second["trial"].item() == first.loc[first["score"].idxmax(), "trial"]  # accuracy: higher is better
    assert first["train.base_lr"].between(3e-2, 3e-1).all() and first["train.base_lr"].nunique() == 3
    best = yaml.safe_load((root / "best.yaml").read_text())
    assert best["set"]["train.base_lr"] == second["train.base_lr"].item() and math.isfinite(best["score"])
    assert best["trial"] == second["trial"].item() and best["score"] == pytest.approx(second["score"].item())
    trial_dir = root / f"tuned-s2-t{second['trial'].item():02d}"
    trained = load_config(trial_dir / "config.yaml")
    assert trained.train.epochs == 2 and trained.train.base_lr == best["set"]["train.base_lr"]
    assert {p.name for p in trial_dir.glob("fold*/oof.parquet")} == {"oof.parquet"} and len(
        list(trial_dir.glob("fold*/oof.parquet"))) == 2
    assert "t0" in result.output and "accuracy" in result.output  # the table
    assert list((tmp_path / "runs/cache").glob("*.npy")) and not (root / "cache").exists()  # one decoded cache

    stamp = (trial_dir / "fold0" / "best.pt").stat().st_mtime_ns
    cli(*args)  # resumes: same draws, finished folds skipped
    assert (trial_dir / "fold0" / "best.pt").stat().st_mtime_ns == stamp
    assert pd.read_csv(root / "trials.csv")[["trial", "stage", "train.base_lr"]].equals(
        trials[["trial", "stage", "train.base_lr"]])

    other = invoke(*args[:-4], "--param", "train.base_lr=log:1e-4:1e-3")
    assert other.exit_code == 2 and "--force" in other.output


def test_a_failing_trial_is_recorded_ranked_last_and_the_search_goes_on(competition, make_config, monkeypatch):
    """A trial whose loss goes NaN (loop.Diverged, a UserError) is a row with its reason and no score; the others
    train on, it is never promoted, and a last stage where every trial failed is refused with the file to read."""
    from pipeline.engine import loop

    real_epoch, failing = loop.train_epoch, {"tuned-s1-t01"}

    def diverging(task, state, loader, cfg, epoch, *args, **kwargs):
        if cfg.name in failing or (cfg.name.startswith("doomed") and "-s1-" in cfg.name):
            raise loop.Diverged(f"training loss is nan at epoch {epoch + 1} ({cfg.name})")
        return real_epoch(task, state, loader, cfg, epoch, *args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", diverging)
    path, cfg = make_config(competition, name="tuned", cv={"folds": 2}, train={"epochs": 1})
    result = cli("tune", "--config", path, "--trials", "3", "--stages", "1x1,1x1", "--param",
                 "model.drop_rate=uniform:0:0.3")
    trials = pd.read_csv(cfg.run_dir / "tune" / "trials.csv")
    first = trials[trials["stage"] == 1].set_index("trial")
    assert list(first.index) == [0, 1, 2]
    assert first.loc[1, "status"] == "training loss is nan at epoch 1 (tuned-s1-t01)" and math.isnan(first.loc[1, "score"])
    ran = first.drop(index=1)
    assert (ran["status"] == "ok").all() and ran["score"].notna().all()
    (promoted,) = trials.loc[trials["stage"] == 2, "trial"]  # 3 x promote 0.33: one, the best of those that ran
    assert promoted == ran["score"].idxmax()
    assert yaml.safe_load((cfg.run_dir / "tune" / "best.yaml").read_text())["trial"] == promoted
    assert "t01" in result.output and "failed" in result.output  # the table says so

    doomed, _ = make_config(competition, name="doomed", cv={"folds": 2}, train={"epochs": 1})
    assert_refused(invoke("tune", "--config", doomed, "--trials", "2", "--stages", "1x1", "--param",
                          "model.drop_rate=uniform:0:0.3"), "every trial of the last stage failed", "trials.csv")
