"""Duplicates kept in one fold and reported; ids that leave the data folder refused; pickled weights refused;
W&B keys never written to the run directory."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from pipeline.core.errors import UserError
from pipeline.data.folds import load_folds
from pipeline.stages import prepare, train


def test_exact_duplicates_share_a_fold_and_are_reported(competition, make_config, caplog):
    train_csv = pd.read_csv(competition / "train.csv")
    test_csv = pd.read_csv(competition / "test.csv")
    img = train_csv["image"]
    for copy in img[1:4]:  # rows 1-3 become byte-identical copies of row 0 (one with another label)
        shutil.copyfile(competition / img[0], competition / copy)
    shutil.copyfile(competition / img[10], competition / test_csv["image"][0])  # a test image seen in train
    _, cfg = make_config(competition, cv={"folds": 5})
    prepare.run(cfg)

    folds = load_folds(cfg).table.set_index("id")["fold"]
    assert folds[img[0:4]].nunique() == 1  # the cluster never straddles train and validation
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 4  # still balanced
    found = pd.read_csv(cfg.run_dir / "duplicates.csv")
    assert sorted(found.loc[found["split"] == "train", "id"]) == sorted([*img[0:4], img[10]])
    assert list(found.loc[found["split"] == "test", "id"]) == [test_csv["image"][0]]
    assert "exact duplicates" in caplog.text and "1 test samples are exact copies of train samples" in caplog.text


def test_without_duplicates_folds_are_unchanged_and_the_report_is_empty(competition, make_config):
    _, with_check = make_config(competition, name="dedupe")
    _, without = make_config(competition, name="plain", data={"root": str(competition), "dedupe": False})
    prepare.run(with_check)
    prepare.run(without)
    assert (with_check.run_dir / "folds.csv").read_bytes() == (without.run_dir / "folds.csv").read_bytes()
    assert pd.read_csv(with_check.run_dir / "duplicates.csv").empty


@pytest.mark.parametrize("bad_id", ["../outside.png", "images/../../outside.png", "/etc/hostname"])
def test_ids_that_leave_the_data_folder_are_refused(competition, make_config, bad_id):
    shutil.copyfile(competition / "images" / sorted((competition / "images").iterdir())[0].name,
                    competition.parent / "outside.png")
    table = pd.read_csv(competition / "train.csv")
    table.loc[5, "image"] = bad_id
    table.to_csv(competition / "train.csv", index=False)
    _, cfg = make_config(competition)
    with pytest.raises(UserError, match=r"\(row 7\) leads to .*outside data.root .*data.allow_outside_root"):
        prepare.run(cfg)
    assert not cfg.run_dir.exists()


def test_ids_outside_the_data_folder_are_read_when_allowed(competition, make_config):
    outside = competition.parent / "elsewhere"
    outside.mkdir()
    table = pd.read_csv(competition / "train.csv")
    shutil.move(competition / table.loc[5, "image"], outside / "moved.png")
    table.loc[5, "image"] = "../elsewhere/moved.png"
    table.to_csv(competition / "train.csv", index=False)
    _, cfg = make_config(competition, data={"root": str(competition), "allow_outside_root": True})
    prepare.run(cfg)
    assert "../elsewhere/moved.png" in set(load_folds(cfg).table["id"])


class Payload:
    """Unpickling this runs code: what a malicious checkpoint does."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_weights_file_is_refused_not_executed(tmp_path, capsys):
    from pipeline.core.config import ModelConfig
    from pipeline.engine.models import build_classifier

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(UserError, match="is not a loadable state_dict"):
        build_classifier(ModelConfig(name="test_resnet", weights_file=str(path)), 10)
    assert "pwned" not in capsys.readouterr().out


def test_wandb_key_is_never_written_to_the_run_directory(competition, make_config, monkeypatch):
    key = "0123456789abcdef0123456789abcdef01234567"  # 40 hex characters, the shape of a real key
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    _, cfg = make_config(competition, train={"epochs": 1}, tracking={"wandb": "auto", "quiet": True})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    files = [p for p in cfg.run_dir.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files)  # W&B did record offline
    leaked = [p for p in files if key.encode() in p.read_bytes()]
    assert not leaked
