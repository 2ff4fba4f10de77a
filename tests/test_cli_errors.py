"""Bad input through the real CLI: one clear line on stderr, exit code 2, nothing written."""

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import assert_refused, invoke


def test_missing_image_is_reported_with_its_row(competition, make_config):
    path, cfg = make_config(competition)
    train = pd.read_csv(competition / "train.csv")
    (competition / train.loc[3, "image"]).unlink()
    (competition / train.loc[7, "image"]).write_bytes(b"")
    (competition / train.loc[9, "image"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = invoke("prepare", "--config", path)
    assert_refused(result, "3 of 150 images cannot be read", "line 5:", "(missing)", "line 9:", "(empty file)",
                   "line 11:", "does not decode")
    assert not cfg.run_dir.exists()


def test_label_column_that_does_not_exist(competition, make_config):
    path, cfg = make_config(competition, data={"target_col": "labels"})
    result = invoke("prepare", "--config", path)
    assert_refused(result, "column 'labels' (config data.target_col) not found", "did you mean 'label'?")
    assert not cfg.run_dir.exists()


@pytest.mark.parametrize("content, message", [("", "is empty"), ("image,label\n", "has a header but no rows")])
def test_empty_train_csv(competition, make_config, content, message):
    (competition / "train.csv").write_text(content)
    path, cfg = make_config(competition)
    assert_refused(invoke("prepare", "--config", path), message, file="train.csv")
    assert not cfg.run_dir.exists()


def test_train_refuses_folds_made_from_other_data(competition, make_config):
    path, cfg = make_config(competition)
    assert invoke("prepare", "--config", path).exit_code == 0
    train = pd.read_csv(competition / "train.csv")
    train.iloc[:-5].to_csv(competition / "train.csv", index=False)
    assert_refused(invoke("train", "--config", path, "--fold", "0"), "was made from a different", "prepare --force")
    assert not (cfg.run_dir / "fold0").exists()


def test_train_before_prepare_and_bad_fold(competition, make_config):
    path, cfg = make_config(competition)
    assert_refused(invoke("train", "--config", path, "--fold", "0"), "no folds", "pipeline prepare")
    assert invoke("prepare", "--config", path).exit_code == 0
    assert_refused(invoke("train", "--config", path, "--fold", "3"), "folds 0..2")
    assert_refused(invoke("train", "--config", path, "--fold", "x"), "expected a fold number")


def test_unknown_config_key_and_missing_config(competition, make_config, tmp_path):
    path, _ = make_config(competition)
    assert_refused(invoke("prepare", "--config", path, "--set", "train.batchsize=8"), "did you mean train.batch_size?")
    assert_refused(invoke("prepare", "--config", tmp_path / "nope.yaml"), "nope.yaml not found")


def test_console_entry_point_lists_the_stages():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True).stdout
    assert "prepare" in out and "train" in out
