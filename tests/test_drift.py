"""Adversarial validation (pipeline.data.drift): prepare says whether the test set looks like train, and by what it
differs when it does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data.drift import adversarial_validation, series_features, text_features
from pipeline.stages import prepare
from tests.conftest import cli


def test_prepare_reports_the_adversarial_auc_and_writes_the_most_test_like_rows(competition, make_config, caplog):
    _, cfg = make_config(competition)
    with caplog.at_level("INFO", logger="pipeline"):
        prepare.run(cfg)
    same = json.loads((cfg.run_dir / "adversarial.json").read_text())
    assert "adversarial validation AUC" in caplog.text and same["auc"] < 0.7  # one set of digits, split at random
    likeness = pd.read_csv(cfg.run_dir / "adversarial.csv")
    assert len(likeness) == 150 and likeness["p_test"].is_monotonic_decreasing

    for image in pd.read_csv(competition / "test.csv")["image"]:  # the test set darkened, as by another camera
        path = competition / image
        Image.fromarray((np.asarray(Image.open(path).convert("RGB")) * 0.5).astype(np.uint8)).save(path)
    path, shifted = make_config(competition, name="shifted")
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        prepare.run(shifted)
    drift = json.loads((shifted.run_dir / "adversarial.json").read_text())
    assert drift["auc"] > 0.9 > same["auc"] + 0.2
    assert drift["features"]["brightness"] > 0.9  # what differs is named (beside the re-saved files' bytes)
    assert "CV may not track the leaderboard" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        cli("drift", "shifted", "--runs-dir", shifted.runs_dir)  # at any time, from the experiment's files
    assert "adversarial validation AUC 1.00" in caplog.text


def test_features_of_series_and_texts_and_a_separable_shift():
    rng = np.random.default_rng(0)
    short = [rng.normal(0, 1, (50, 2)) for _ in range(80)]
    long = [rng.normal(0, 1, (90, 2)) for _ in range(80)]
    a, b = series_features(short), series_features(long)
    assert list(a.columns) == ["length", "missing", "mean_0", "std_0", "mean_1", "std_1"]
    drift = adversarial_validation(a, b, range(80))
    assert drift.auc > 0.95 and next(iter(drift.features)) == "length"
    same = adversarial_validation(series_features(short[:40]), series_features(short[40:]), range(40))
    assert same.auc < 0.75
    texts = text_features(["A short one.", ("two", "columns 42")])
    assert texts.loc[1, "words"] == 3 and texts.loc[1, "digits"] > 0


def test_cv_like_test_scores_the_oof_on_the_most_test_like_rows_and_the_report_shows_the_drift(copy_run):
    from pipeline.stages.predict import combine_folds
    from pipeline.stages.report import run as report
    from tests.conftest import oof_accuracy

    cfg = copy_run(cv={"holdout_like_test": 0.2})
    scores = combine_folds(cfg)
    likeness = pd.read_csv(cfg.run_dir / "adversarial.csv")
    ids = set(likeness["id"].astype(str).head(30))  # 20% of 150, most test-like first
    oof = pd.read_parquet(cfg.run_dir / "oof.parquet")
    like = scores["cv_like_test"]
    assert like["rows"] == 30 and like["share"] == 0.2
    classes = json.loads((cfg.run_dir / "folds.json").read_text())["classes"]
    assert np.isclose(like["score"], oof_accuracy(oof[oof["id"].astype(str).isin(ids)], classes))
    page = report(cfg.name, cfg.runs_dir).read_text()
    assert "Adversarial validation" in page and "most test-like training rows" in page
    assert "cv_like_test" not in combine_folds(copy_run("off"))  # 0 (the default): not scored


def test_prepare_checks_texts_and_names_what_differs(tmp_path, make_config, caplog):
    """Text competitions: the same words on both sides look alike; a test set written in capitals is found, and
    the upper-case share is named as what differs (prepare, then `pipeline drift`)."""
    from tests.conftest import SEQ

    rng = np.random.default_rng(0)
    words = ["good", "bad", "food", "service", "the", "was", "very", "day", "and", "fine"]

    def competition(name: str, shouting: bool) -> Path:
        root = tmp_path / name
        root.mkdir()
        texts = [" ".join(rng.choice(words, int(rng.integers(4, 10)))) for _ in range(140)]
        train = pd.DataFrame({"id": range(80), "text": texts[:80], "label": ["pos", "neg"] * 40})
        test = pd.DataFrame({"id": range(80, 140), "text": [t.upper() if shouting else t for t in texts[80:]]})
        train.to_csv(root / "train.csv", index=False)
        test.to_csv(root / "test.csv", index=False)
        test[["id"]].assign(label="pos").to_csv(root / "sample_submission.csv", index=False)
        return root

    base = {**SEQ, "data": {"id_col": "id", "text_cols": ["text"], "target_col": "label"}, "model": {"name": "gru"}}
    _, same = make_config(competition("same", False), name="same", base=base)
    prepare.run(same)
    alike = json.loads((same.run_dir / "adversarial.json").read_text())
    assert alike["auc"] < 0.7 and alike["rows"] == [80, 60]
    assert set(alike["features"]) == {"chars", "words", "distinct_words", "digits", "upper", "punctuation"}
    likeness = pd.read_csv(same.run_dir / "adversarial.csv")
    assert sorted(likeness["id"]) == list(range(80)) and likeness["p_test"].is_monotonic_decreasing

    _, loud = make_config(competition("loud", True), name="loud", base=base)
    with caplog.at_level("INFO", logger="pipeline"):
        prepare.run(loud)
    drift = json.loads((loud.run_dir / "adversarial.json").read_text())
    assert drift["auc"] > 0.95 and next(iter(drift["features"])) == "upper" and drift["features"]["upper"] == 1.0
    assert "CV may not track the leaderboard" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        cli("drift", "loud", "--runs-dir", loud.runs_dir)
    assert "adversarial validation AUC 1.00" in caplog.text and "most separating: upper 1.00" in caplog.text
