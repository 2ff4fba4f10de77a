"""pipeline pseudo: fold k of the new experiment trains on the test rows fold k's model labelled, cut at a threshold
fitted on the other folds' OOF rows, so nothing fitted on fold k's validation rows reaches fold k."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import Config, load_config
from pipeline.core.seeding import DrawnRows, DrawSampler
from pipeline.data.folds import load_folds, run_config
from pipeline.engine import training_rows
from pipeline.runs.rundir import RunDir
from pipeline.scoring.targets import build_target
from pipeline.stages import ensemble
from pipeline.tasks import build_task
from pipeline.tasks.detection.boxes import Detections, box_hits
from pipeline.workflows import pseudo
from tests.conftest import assert_refused, cli, copy_run_to, invoke


@pytest.fixture
def source(trained_run, tmp_path):
    """A private copy of the session's trained, predicted digits run (2 folds) as tmp_path/runs/src."""
    return copy_run_to(trained_run, tmp_path, "src")


def confident(frame: pd.DataFrame, classes: list, label: str, p: float = 0.99) -> pd.DataFrame:
    """The prediction frame with every row's probabilities put on one class."""
    frame = frame.copy()
    for c in classes:
        frame[str(c)] = p if str(c) == label else (1 - p) / (len(classes) - 1)
    return frame


def test_the_threshold_is_the_lowest_confidence_whose_kept_rows_reach_the_precision():
    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.90, 0.80, 0.70])
    hits = np.array([1, 1, 1, 1, 1, 0, 1, 0], bool)
    found = training_rows.precision_threshold(conf, hits, target=0.8, min_rows=2)
    # 0.80 keeps 7 rows, 6 right (0.857); 0.70 keeps 8 with 6 right (0.75 < 0.8)
    assert found["threshold"] == 0.80 and found["oof_kept"] == 7 and math.isclose(found["oof_precision"], 6 / 7)
    assert training_rows.precision_threshold(conf, hits, target=1.0, min_rows=2)["threshold"] == 0.95
    assert training_rows.precision_threshold(conf, hits, target=1.0, min_rows=6)["threshold"] == math.inf  # never reached
    tie = training_rows.precision_threshold(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1], bool), target=1.0, min_rows=1)
    assert tie["threshold"] == math.inf  # a cut keeps both tied rows or neither: 0.9 keeps one wrong one


@pytest.mark.parametrize("kind, outputs, truth, conf, hits", [
    ("binary", [[0.9], [0.2], [0.55]], [1, 1, 0], [0.9, 0.8, 0.55], [True, False, False]),
    ("multilabel", [[0.9, 0.05], [0.6, 0.99]], [[1, 0], [1, 0]], [0.9, 0.6], [True, False]),
    ("ordinal", [[1.1], [1.45], [2.9]], [1, 2, 3], [0.4, 0.05, 0.4], [True, False, True]),
])
def test_each_target_type_says_how_sure_and_how_right_a_row_is(kind, outputs, truth, conf, hits):
    cfg = Config()
    cfg.data.target_type = kind
    target = build_target(cfg, ["a", "b"] if kind != "ordinal" else [1, 2, 3])
    outputs = np.asarray(outputs, np.float32)
    assert np.allclose(target.confidence(outputs), conf)
    assert target.hits(outputs, np.asarray(truth)).tolist() == hits


def test_a_regression_keeps_every_test_row():
    cfg = Config()
    cfg.data.target_type = "regression"
    assert build_target(cfg, []).confidence(np.ones((3, 1), np.float32)) is None


def test_box_hits_match_as_the_map_does():
    truths = [(np.array([[0, 0, 0.5, 0.5]], np.float32), np.array([0])),
              (np.array([[0.5, 0.5, 1, 1]], np.float32), np.array([1]))]
    dets = [Detections(np.array([[0.6, 0.6, 0.9, 0.9], [0, 0, 0.5, 0.52], [0, 0, 0.5, 0.5]], np.float32),
                       np.array([0.3, 0.8, 0.9], np.float32), np.array([0, 0, 0]), (10, 10)),
            Detections(np.array([[0.5, 0.5, 1, 1]], np.float32), np.array([0.7], np.float32), np.array([0]), (10, 10))]
    # image 0: the 0.9 box takes the truth, the 0.8 duplicate and the far box miss; image 1: the class is wrong
    assert box_hits(dets, truths).tolist() == [False, False, True, False]


def test_drawn_rows_are_a_fresh_share_of_the_pseudo_rows_each_epoch():
    from torch.utils.data import DistributedSampler

    drawn = DrawnRows(start=10, share=0.5)
    length = drawn.epoch_length(30)
    assert length == 20
    sampler = DrawSampler(DistributedSampler(range(length), num_replicas=1, rank=0, seed=3), drawn, 30, seed=3)
    epochs = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == 20 and sorted(i for i in order if i < 10) == list(range(10))
        assert len({i for i in order if i >= 10}) == 10  # ten distinct pseudo rows, none twice
        epochs.append(order)
    assert epochs[0] == epochs[2] and set(epochs[0]) != set(epochs[1])  # repeatable per epoch, new draws per epoch


def test_fold_k_trains_on_fold_k_predictions_alone(source, caplog):
    """The no-leak rule: fold 0's pseudo rows are fold 0's model's test predictions, fold 1's fold 1's, and fold
    k's threshold does not move when fold k's own OOF rows change."""
    run = RunDir(source.run_dir)
    classes = run.classes()
    labels = {0: str(classes[3]), 1: str(classes[7])}
    for k, label in labels.items():  # each fold's model says something only it says
        frame = pd.read_parquet(run.fold(k).test)
        confident(frame, classes, label).to_parquet(run.fold(k).test)
    made = pseudo.run("src", "pl", runs_dir=str(source.runs_dir), threshold="0.5")
    new = RunDir(source.runs_dir + "/pl")
    for k, label in labels.items():
        kept = pd.read_parquet(new.fold(k).pseudo)
        assert len(kept) == made["folds"][k]["of"] > 0
        assert kept[[str(c) for c in classes]].idxmax(axis=1).eq(label).all()
        assert made["folds"][k]["per_class"] == {label: len(kept)}
    # the fold-0 training set: fold 0's labelled rows, then the test rows as fold 0's model decided them
    cfg = run_config(new)
    task = build_task(cfg, classes)
    train_rows, valid_rows = load_folds(cfg).split(0)
    task.fit_fold(train_rows)
    task.build_model()
    dataset = training_rows.training_set(task, cfg, new.fold(0), train_rows)
    assert np.array_equal(dataset.labels[: len(train_rows)], task.labels(train_rows))
    assert (dataset.labels[len(train_rows):] == 3).all()
    assert len(dataset) == len(train_rows) + len(kept)
    assert pd.read_csv(new.folds_csv).equals(pd.read_csv(run.folds_csv))  # the same folds: the CVs compare

    # fold k's auto threshold is fitted without fold k's OOF rows: spoil fold 0's rows and only fold 1's moves
    oof = pd.read_parquet(run.oof)
    before = [training_rows.fit_threshold(task, cfg, oof[oof["fold"] != k]) for k in (0, 1)]
    spoiled = oof.copy()
    zero = spoiled["fold"] == 0
    spoiled.loc[zero, [str(c) for c in classes]] = confident(spoiled[zero], classes, str(classes[0]), 1.0)[
        [str(c) for c in classes]].to_numpy()
    after = [training_rows.fit_threshold(task, cfg, spoiled[spoiled["fold"] != k]) for k in (0, 1)]
    assert after[0] == before[0] and after[1] != before[1]


def test_pseudo_then_train_predict_report_and_a_second_round(source, tmp_path):
    runs = source.runs_dir
    cli("pseudo", "src", "--name", "pl", "--threshold", "0", "--weight", "0.5", "--runs-dir", runs,
        "--set", "train.epochs=1")
    new = RunDir(f"{runs}/pl")
    info = json.loads(new.pseudo.read_text())
    assert info["source"] == "src" and info["round"] == 1 and info["weight"] == 0.5 and len(info["folds"]) == 2
    for entry in info["folds"]:  # threshold 0 keeps every test row; the OOF precision behind it is the accuracy
        assert entry["rows"] == entry["of"] == len(pd.read_parquet(new.fold(entry["fold"]).pseudo)) > 0
        assert entry["oof_kept"] == entry["oof_units"] and 0 <= entry["oof_precision"] <= 1
    assert load_config(new.config).pseudo.source == str(RunDir(f"{runs}/src").path)
    cli("train", "--config", new.config, "--fold", "all")
    cli("train", "--config", new.config, "--fold", "full")  # the refit: the source's test mean, all its OOF's cut
    assert len(pd.read_parquet(new.full.pseudo)) == info["folds"][0]["of"]  # threshold 0 keeps every test row
    cli("predict", "--config", new.config)
    assert json.loads(new.meta.read_text())["pseudo"]["source"] == "src"  # kept through train and predict
    cli("report", "pl", "--runs-dir", runs)
    page = new.report.read_text()
    assert "Pseudo-labels" in page and "CV before" in page
    cli("pseudo", "pl", "--name", "pl2", "--soft", "--threshold", "auto", "--runs-dir", runs)  # else pl's 0
    second = json.loads(RunDir(f"{runs}/pl2").pseudo.read_text())
    assert second["round"] == 2 and second["source"] == "pl" and second["soft"] and second["threshold"] == "auto"
    for entry in second["folds"]:  # auto: the threshold and the OOF precision behind it, or why there is none
        assert (entry["threshold"] is None and "no test row is kept" in entry["note"]) or \
            entry["oof_precision"] >= 0.95, entry


def test_bad_pseudo_requests_are_refused(source, trained_run, tmp_path):
    runs = source.runs_dir
    copy_run_to(trained_run, tmp_path, "src2")
    assert_refused(invoke("pseudo", "src", "--name", "src", "--runs-dir", runs), "its own name")
    assert_refused(invoke("pseudo", "src", "--name", "src2", "--runs-dir", runs), "is an experiment, not a pseudo",
                   file="src2")
    assert_refused(invoke("pseudo", "src", "--name", "x", "--weight", "0", "--runs-dir", runs), "(0, 1]")
    assert_refused(invoke("pseudo", "src", "--name", "x", "--threshold", "high", "--runs-dir", runs), "'auto'")
    ensemble.run(["src", "src2"], method="mean", name="blend", runs_dir=runs)
    assert_refused(invoke("pseudo", "blend", "--name", "x", "--runs-dir", runs), "ensemble")
    RunDir(f"{runs}/src").fold(1).test.unlink()
    assert_refused(invoke("pseudo", "src", "--name", "y", "--runs-dir", runs), "fold1", "pipeline predict")


@pytest.mark.parametrize("what", ["series", "boxes"])
def test_sequences_and_detection_train_on_their_pseudo_labels(what, tmp_path, caplog):
    from pipeline.stages import predict, prepare, train
    from pipeline.tasks.detection.demo_data import write_digit_boxes_competition
    from tests.conftest import SEQ, write_config, write_series_competition
    from tests.test_detection import DETECT

    if what == "series":
        root, base, model = write_series_competition(tmp_path / "series", n_train=24, n_test=8), SEQ, "gru"
    else:
        root, base, model = write_digit_boxes_competition(tmp_path / "boxes", n_images=16), DETECT, "test_efficientnet"
    _, cfg = write_config(tmp_path, root, base, "src", cv={"folds": 2}, train={"epochs": 1}, model={"name": model})
    prepare.run(cfg)
    train.run(cfg)
    predict.run(cfg)
    made = pseudo.run("src", "pl", runs_dir=cfg.runs_dir, threshold="0")
    assert made["folds"][0]["rows"] > 0
    assert made["round"] == 1 and all(f["rows"] == len(pd.read_parquet(
        RunDir(f"{cfg.runs_dir}/pl").fold(f["fold"]).pseudo)) for f in made["folds"])
    if what == "boxes":  # kept: the test images with a box, each with its boxes
        assert all(sum(f["per_class"].values()) >= f["rows"] for f in made["folds"])
    with caplog.at_level("INFO", logger="pipeline"):
        cli("train", "--config", f"{cfg.runs_dir}/pl/config.yaml", "--fold", "0")
    assert f"+ {made['folds'][0]['rows']} pseudo-labelled test rows from src" in caplog.text
    assert (RunDir(f"{cfg.runs_dir}/pl").fold(0).oof).is_file()


def test_multilabel_pseudo_labels_keep_rows_sure_of_every_tag_and_learn_their_tags(competition, make_config):
    """Tags (digits as even/big/round/small): a test row is kept only when fold k's model is sure of every tag, and
    it trains on the tags fold k's model decided (or, --soft, on its probabilities)."""
    from pipeline.stages import predict, prepare, train
    from tests.test_targets import relabel

    relabel(competition, "multilabel")
    _, cfg = make_config(competition, name="src", cv={"folds": 2}, train={"epochs": 1, "metric": "f1_samples"},
                         data={"min_tags": 1}, predict={"tta": "none"})
    prepare.run(cfg)
    train.run(cfg)
    predict.run(cfg)
    run = RunDir(cfg.run_dir)
    tags = [str(c) for c in run.classes()]
    assert tags == ["big", "even", "round", "small"]
    said = {0: [0.97, 0.96, 0.03, 0.02], 1: [0.02, 0.03, 0.98, 0.97]}  # fold 0: big even; fold 1: round small
    for k, p in said.items():  # each fold's model sure of its tags on even rows, unsure of one tag on odd rows
        frame = pd.read_parquet(run.fold(k).test)
        probs = np.tile(np.array(p, np.float32), (len(frame), 1))
        probs[1::2, 2] = 0.6  # 'round' at 0.6: this row is only 0.6 sure
        frame[tags] = probs
        frame.to_parquet(run.fold(k).test)
    rows = len(frame)
    made = pseudo.run("src", "pl", runs_dir=str(cfg.runs_dir), threshold="0.9")
    new = RunDir(f"{cfg.runs_dir}/pl")
    for k, p in said.items():
        kept = pd.read_parquet(new.fold(k).pseudo)
        assert list(kept["id"]) == list(frame["id"].iloc[::2]) and made["folds"][k]["rows"] == (rows + 1) // 2
        assert made["folds"][k]["per_class"] == {t: (rows + 1) // 2 * (v > 0.5) for t, v in zip(tags, p, strict=True)}

    pl = run_config(new)
    task = build_task(pl, run.classes())
    train_rows, _ = load_folds(pl).split(0)
    task.fit_fold(train_rows)
    task.build_model()
    dataset = training_rows.training_set(task, pl, new.fold(0), train_rows)
    truths = task.labels(train_rows)
    assert truths.shape == (len(train_rows), 4) and np.array_equal(dataset.labels[: len(train_rows)], truths)
    assert dataset.labels.shape == (len(train_rows) + (rows + 1) // 2, 4)
    assert (dataset.labels[len(train_rows):] == [1, 1, 0, 0]).all()  # fold 0's decisions: big, even
    train.run(pl, fold=0)
    assert new.fold(0).oof.is_file()

    pseudo.run("src", "pl-soft", runs_dir=str(cfg.runs_dir), threshold="0.9", soft=True)
    soft = run_config(RunDir(f"{cfg.runs_dir}/pl-soft"))
    task = build_task(soft, run.classes())
    task.fit_fold(train_rows)
    task.build_model()
    dataset = training_rows.training_set(task, soft, RunDir(soft.run_dir).fold(1), load_folds(soft).split(1)[0])
    n = len(load_folds(soft).split(1)[0])
    np.testing.assert_allclose(dataset.labels[n:], np.tile(said[1], ((rows + 1) // 2, 1)), atol=1e-6)
