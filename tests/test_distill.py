"""pipeline distill: a student learns fold k's teachers beside the labels, and nothing that saw fold k's validation
rows (their images through a teacher, their labels through a fitted blend) reaches fold k's student."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import Config, load_config
from pipeline.data.folds import load_folds
from pipeline.scoring import noise
from pipeline.scoring.targets import build_target
from pipeline.stages import ensemble, predict
from pipeline.workflows import distill
from tests.conftest import TINY, assert_refused, copy_run_to, invoke, write_config


@pytest.fixture(scope="module")
def teachers(trained_run, tmp_path_factory):
    """runs/ with experiments a, b (b predicted with flips TTA) and their weighted and rank ensembles."""
    folder = tmp_path_factory.mktemp("teachers")
    copy_run_to(trained_run, folder, "a")
    predict.run(copy_run_to(trained_run, folder, "b"), tta="flips")
    for method in ("weighted", "stack", "rank"):
        ensemble.run(["a", "b"], method=method, name=method, runs_dir=str(folder / "runs"))
    return folder / "runs"


def student(digits_root, folder, name="student", **sections):
    return write_config(folder, digits_root, TINY, name, **sections)


def test_soft_labels_mix_the_label_and_the_teacher():
    cfg = Config()
    cfg.data.target_type, cfg.train.label_smoothing = "multiclass", 0.1
    target = build_target(cfg, ["a", "b", "c"])
    teacher = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]], dtype=np.float32)
    soft = target.soft_labels(np.array([0, 2]), teacher, alpha=0.5)
    assert np.allclose(soft.sum(1), 1) and np.allclose(soft[0], 0.5 * np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]) +
                                                         0.5 * teacher[0])
    assert np.array_equal(target.soft_labels(None, teacher, 0.5), teacher)  # unlabelled rows: the teacher alone
    cfg.data.target_type = "regression"
    values = build_target(cfg, [])
    assert np.allclose(values.soft_labels(np.array([10.0, 20.0]), np.array([[12.0], [16.0]]), 0.25), [[11.5], [17.0]])


def test_a_student_trains_on_its_teachers_folds_and_scores_honestly(teachers, digits_root, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    path, cfg = student(digits_root, tmp_path)
    scores = distill.run("weighted", cfg, runs_dir=str(teachers), test=True)
    run = cfg.run_dir
    assert pd.read_csv(run / "folds.csv").equals(pd.read_csv(teachers / "weighted/folds.csv"))
    folds = load_folds(load_config(run / "config.yaml"))
    for k in (0, 1):
        targets = pd.read_parquet(run / f"fold{k}/teacher.parquet")
        train_ids = set(folds.split(k)[0]["id"])
        assert set(targets.loc[targets["part"] == "train", "id"]) == train_ids  # never a validation row of fold k
        assert (targets["part"] == "test").sum() == len(pd.read_csv(digits_root / "test.csv"))
        probs = targets.drop(columns=["id", "part"]).to_numpy()
        assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert json.loads((run / "scores.json").read_text())["cv"] == scores["cv"] and 0 <= scores["cv"] <= 1
    saved = load_config(run / "config.yaml")
    assert saved.distill.teacher == str(teachers / "weighted") and saved.distill.test
    tests = len(pd.read_csv(digits_root / "test.csv"))
    assert f"fold 0: distilling from {teachers / 'weighted'} (alpha 0.50): 75 training rows + {tests} test rows" \
        in caplog.text


def test_fold_k_targets_do_not_see_fold_k_labels(trained_run, digits_root, tmp_path, monkeypatch):
    """Fold k's targets are blended by the stacker's meta-model fitted without fold k: changing fold 0's labels
    (which enter a blend only through its fit) and re-fitting the ensemble leaves fold 0's targets exactly as they
    were, while fold 1's, blended by a meta-model fitted on fold 0's rows, move. The stacker is kept whatever its
    gain over the mean (pipeline.scoring.noise's choice, made on every fold, would otherwise switch with the relabelling)."""
    monkeypatch.setattr(noise, "beats_noise", lambda gain, se: True)
    runs = tmp_path / "runs"  # teachers of this test's own: their OOF files are changed below
    copy_run_to(trained_run, tmp_path, "a")
    predict.run(copy_run_to(trained_run, tmp_path, "b"), tta="flips")
    ensemble.run(["a", "b"], method="stack", name="stack", runs_dir=str(runs))
    _, cfg = student(digits_root, tmp_path, "s1")
    distill.run("stack", cfg, runs_dir=str(runs))
    before = {k: pd.read_parquet(cfg.run_dir / f"fold{k}/teacher.parquet") for k in (0, 1)}
    for member in ("a", "b"):  # fold 0's labels changed in the members' OOF, where the stacker learns them
        oof = pd.read_parquet(runs / member / "oof.parquet")
        held = oof["fold"] == 0
        two = sorted(oof["target"].unique())[:2]  # fold 0 relabelled with two classes alone
        oof.loc[held, "target"] = [two[i % 2] for i in range(held.sum())]
        oof.to_parquet(runs / member / "oof.parquet")
    ensemble.run(["a", "b"], method="stack", name="stack", runs_dir=str(runs))  # re-fitted on them
    teacher = distill.resolve("stack", str(runs))
    members = distill.teacher_members(teacher, str(runs))
    folds = load_folds(load_config(cfg.run_dir / "config.yaml"))
    for k in (0, 1):
        distill.write_targets(cfg, teacher, members, folds, k, teacher.read_scores()["stamp"])
    after = {k: pd.read_parquet(cfg.run_dir / f"fold{k}/teacher.parquet") for k in (0, 1)}
    pd.testing.assert_frame_equal(before[0], after[0])
    assert not before[1].equals(after[1])  # fold 1's stacker was fitted on fold 0's rows: it sees the change


def test_distill_refuses_what_cannot_teach(teachers, digits_root, tmp_path):
    path, _ = student(digits_root, tmp_path)
    assert_refused(invoke("distill", "rank", "--config", path, "--runs-dir", teachers), "rank ensemble")
    same, _ = student(digits_root, tmp_path, "weighted")
    assert_refused(invoke("distill", "weighted", "--config", same, "--runs-dir", teachers), "its own name")
    member, _ = student(digits_root, tmp_path, "a")
    assert_refused(invoke("distill", "weighted", "--config", member, "--runs-dir", teachers), "its own name",
                   "a member of the teacher weighted")
    assert_refused(invoke("distill", "weighted", "--config", path, "--runs-dir", teachers, "--alpha", "1.5"),
                   "distill.alpha=1.5")
    assert_refused(invoke("distill", "nothing", "--config", path, "--runs-dir", teachers), "no experiment 'nothing'")
