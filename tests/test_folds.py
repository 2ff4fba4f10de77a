import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import load_config
from pipeline.data.folds import assign_folds, make_folds, resolve_strategy


def labels(n_classes=7, per_class=(5, 9, 13, 20, 31, 6, 11)):
    return pd.Series(np.repeat([f"c{i}" for i in range(n_classes)], per_class)).sample(frac=1, random_state=1)


def test_stratified_folds_cover_each_row_once_and_balance_classes():
    y = labels().reset_index(drop=True)
    fold = assign_folds(y, None, k=5, strategy="stratified", seed=0)
    assert fold.shape == (len(y),) and set(fold) == set(range(5))  # each row in exactly one validation fold
    counts = pd.crosstab(y, fold)
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1  # each class split as evenly as possible


def test_folds_are_deterministic_for_a_seed_and_change_with_it():
    y = labels().reset_index(drop=True)
    a, b = (assign_folds(y, None, 5, "stratified", seed=3) for _ in range(2))
    c = assign_folds(y, None, 5, "stratified", seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("strategy", ["group", "stratified_group"])
def test_groups_never_straddle_folds(strategy):
    rng = np.random.default_rng(0)
    groups = pd.Series(rng.integers(0, 30, 300))
    y = pd.Series(rng.integers(0, 3, 300))
    fold = assign_folds(y, groups, 5, strategy, seed=0)
    assert (pd.Series(fold).groupby(groups).nunique() == 1).all()
    assert set(fold) == set(range(5))
    assert not np.array_equal(fold, assign_folds(y, groups, 5, strategy, seed=1))  # the seed matters for groups too


def test_strategy_auto_picks_by_target_and_groups():
    cfg = load_config()
    assert resolve_strategy(cfg, pd.Series(["a", "b"])) == "stratified"
    assert resolve_strategy(cfg, pd.Series([0.3, 1.7])) == "kfold"  # regression target
    assert resolve_strategy(load_config(None, ["data.group_col=g"]), pd.Series([1, 2])) == "stratified_group"


def test_rare_class_warns(caplog):
    cfg = load_config(None, ["cv.folds=5"])
    train = pd.DataFrame({"image": [f"{i}.png" for i in range(23)], "label": ["a"] * 20 + ["rare"] * 3})
    with caplog.at_level(logging.WARNING):
        folds = make_folds(cfg, train)
    assert "fewer rows than cv.folds=5" in caplog.text and "rare: 3" in caplog.text
    assert folds.classes == ["a", "rare"] and list(folds.table.columns) == ["id", "target", "fold"]
