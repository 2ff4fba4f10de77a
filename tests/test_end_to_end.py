"""The five stages through the real CLI on a small digits competition, and the demo itself (slow)."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from pipeline.data.submission import score_against_solution
from pipeline.scoring import noise
from pipeline.stages import prepare
from tests.conftest import cli, invoke, oof_accuracy


def test_prepare_train_predict_ensemble_submit(competition, make_config, tmp_path, monkeypatch):
    path_a, cfg_a = make_config(competition, name="a", train={"epochs": 2, "keep_top": 2}, predict={"tta": "shifts"})
    path_b, cfg_b = make_config(competition, name="b", model={"name": "test_efficientnet"})
    for path in (path_a, path_b):
        cli("prepare", "--config", path)
        cli("train", "--config", path, "--fold", "all")
    cli("predict", "--config", path_a, "--weights", "avg")
    cli("predict", "--config", path_b, "--tta", "none")
    scores = json.loads((cfg_a.run_dir / "scores.json").read_text())
    assert set(scores["folds"]) == {"0", "1", "2"} and scores["tta"] == "shifts" and scores["weights"] == "avg"
    assert scores["rows"] == 150
    classes = [f"digit_{d}" for d in range(10)]
    oof = pd.read_parquet(cfg_a.run_dir / "oof.parquet")
    plain = pd.concat([pd.read_parquet(cfg_a.run_dir / f"fold{k}/oof_no_tta.parquet") for k in range(3)])
    assert scores["cv"] == pytest.approx(oof_accuracy(oof, classes))  # the CV is the OOF file's, recomputed
    assert scores["cv_no_tta"] == pytest.approx(oof_accuracy(plain, classes))
    assert {k: pytest.approx(oof_accuracy(g, classes)) for k, g in oof.groupby(oof["fold"].astype(str))} == scores["folds"]
    test = pd.read_parquet(cfg_a.run_dir / "test.parquet")
    assert len(test) == len(pd.read_csv(competition / "test.csv"))
    assert (cfg_a.run_dir / "fold0/avg.pt").is_file()

    runs = cfg_a.runs_dir
    # the climbed weights kept whatever their gain over the mean (pipeline.scoring.noise), so the held-out checks run
    with monkeypatch.context() as m:
        m.setattr(noise, "beats_noise", lambda gain, noise: True)
        cli("ensemble", "a", "b", "--method", "weighted", "--name", "blend", "--runs-dir", runs)
    blend = cfg_a.run_dir.parent / "blend"
    weights = json.loads((blend / "weights.json").read_text())["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    ens_scores = json.loads((blend / "scores.json").read_text())
    assert ens_scores["weights_from"] == "hill climbing"
    # the climb starts from the best member, on the rows it fits
    assert ens_scores["cv_in_sample"] >= max(ens_scores["members"].values()) - 1e-9
    assert ens_scores["cv"] == ens_scores["cv_held_out"]  # the headline is the held-out score
    cli("ensemble", "a", "b", "--method", "stack", "--name", "stacked", "--runs-dir", runs)

    # Test predictions never enter the fit: scrambling a member's test.parquet leaves the weights unchanged.
    test_b = cfg_b.run_dir / "test.parquet"
    original = pd.read_parquet(test_b)
    scrambled = original.copy()
    scrambled.iloc[:, 1:] = scrambled.iloc[:, 1:].to_numpy()[::-1]
    scrambled.to_parquet(test_b, index=False)
    with monkeypatch.context() as m:
        m.setattr(noise, "beats_noise", lambda gain, noise: True)
        cli("ensemble", "a", "b", "--method", "weighted", "--name", "blend-scrambled", "--runs-dir", runs)
    assert json.loads((blend.parent / "blend-scrambled" / "weights.json").read_text())["weights"] == weights
    original.to_parquet(test_b, index=False)

    cli("submit", "blend", "--runs-dir", runs, "--message", "first")
    sub_path = tmp_path / "subs" / "blend.csv"
    sub = pd.read_csv(sub_path)
    assert list(sub["image"]) == list(pd.read_csv(competition / "sample_submission.csv")["image"])
    blended = pd.read_parquet(blend / "test.parquet").set_index("id").loc[sub["image"], classes]
    assert list(sub["label"]) == list(np.array(classes)[blended.to_numpy().argmax(axis=1)])  # the blend's arg-max
    solution = pd.read_csv(competition / "solution.csv").set_index("image").loc[sub["image"], "label"]
    assert score_against_solution(sub_path, competition / "solution.csv") == pytest.approx(
        accuracy_score(solution, sub["label"]))
    cli("submit", "blend", "--runs-dir", runs, "--lb", "0.987")
    log = pd.read_csv(tmp_path / "subs" / "log.csv")
    assert list(log["exp"]) == ["blend"] and log.loc[0, "public_lb"] == pytest.approx(0.987)
    assert log.loc[0, "message"] == "first" and log.loc[0, "cv"] == pytest.approx(ens_scores["cv"])


def test_ensemble_refuses_members_with_different_folds(copy_run):
    a, b = copy_run("a"), copy_run("b", cv={"seed": 7})  # the seed alone would share the folds (cv.seed makes them)
    prepare.run(b, force=True)  # b's folds redone with another cv.seed, as `pipeline prepare --force` does
    assert (a.run_dir / "folds.csv").read_bytes() != (b.run_dir / "folds.csv").read_bytes()
    result = invoke("ensemble", "a", "b", "--runs-dir", a.runs_dir)
    assert result.exit_code == 2 and "trained on different folds" in result.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_loop(tmp_path):
    from pipeline.workflows import demo

    summary = demo.run(root=str(tmp_path / "digits"), runs_dir=str(tmp_path / "runs"),
                       submissions_dir=str(tmp_path / "subs"))
    assert summary["held_back"]["accuracy"] > 0.9 and summary["ensemble_cv"] >= max(summary["members_cv"].values())
