"""Names are names and the run you name is the run you get: a run read from its own folder wherever it lives,
no stage writing over a run of another kind, and names and paths kept as written (never re-parsed as YAML)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.runs.rundir import RunDir, resolve
from pipeline.stages import ensemble
from tests.conftest import assert_refused, cli, invoke

PATTERN = "[A-Za-z0-9._-]+"


def predict_one_class(run: RunDir, label: str) -> None:
    """Rewrite the run's test predictions (and stamp) so that every test row is `label`."""
    scores = {k: v for k, v in run.read_scores("oof", "test").items() if k != "stamp"}
    test = pd.read_parquet(run.test)
    for c in run.classes():
        test[str(c)] = 1.0 if c == label else 0.0
    run.write_predictions(pd.read_parquet(run.oof), test, scores)


def fingerprint(folder: Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_a_copied_run_is_submitted_and_reported_from_its_own_folder(copy_run, tmp_path):
    local = copy_run("exp")
    # a copy of a run whose config.yaml still names runs_dir/exp, the local run's folder
    copied = RunDir(shutil.copytree(local.run_dir, tmp_path / "elsewhere" / "copied"))
    label = copied.classes()[-1]
    predict_one_class(copied, label)

    cli("submit", copied, "--runs-dir", local.runs_dir)
    mine = pd.read_csv(Path(local.submissions_dir) / "copied.csv")  # named after the folder, not config's `exp`
    assert (mine[local.data.target_col] == label).all()
    log = pd.read_csv(Path(local.submissions_dir) / "log.csv")
    assert log["exp"].tolist() == ["copied"]

    cli("submit", "exp", "--runs-dir", local.runs_dir)
    theirs = pd.read_csv(Path(local.submissions_dir) / "exp.csv")
    assert not (theirs[local.data.target_col] == label).all()  # the local run's own predictions

    cli("report", copied)
    assert (copied.path / "report.html").is_file() and not (local.run_dir / "report.html").exists()
    # training or predicting with the copy's config.yaml works in the copy's folder too
    assert load_config(copied.config).run_dir == copied.path


def test_a_name_that_is_both_a_folder_here_and_a_run_is_refused(copy_run, tmp_path, monkeypatch):
    cfg = copy_run("exp")
    shutil.copytree(cfg.run_dir, tmp_path / "exp")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="names two runs"):
        resolve("exp", cfg.runs_dir)
    assert resolve(cfg.run_dir, cfg.runs_dir).path == cfg.run_dir


def test_an_ensemble_never_overwrites_a_run(copy_run):
    a, b, c = copy_run("a"), copy_run("b"), copy_run("c")
    runs = a.runs_dir
    before = fingerprint(b.run_dir)
    assert_refused(invoke("ensemble", "a", "b", "--name", "b", "--runs-dir", runs), "member", file=str(b.run_dir))
    assert fingerprint(b.run_dir) == before and not RunDir(b.run_dir).members.is_file()
    assert_refused(invoke("ensemble", "a", "b", "--name", "c", "--runs-dir", runs), "is an experiment, not an ensemble",
                   file=str(c.run_dir))
    assert_refused(invoke("ensemble", "a", "b", "--name", "exp #2", "--runs-dir", runs), PATTERN)
    cli("ensemble", "a", "b", "--name", "0123", "--method", "mean", "--runs-dir", runs)
    cli("ensemble", "a", "b", "--name", "0123", "--method", "mean", "--runs-dir", runs)  # the same kind: replaced
    assert yaml.safe_load((Path(runs) / "0123" / "config.yaml").read_text())["name"] == "0123"
    assert not (Path(runs) / "83").exists()

    # nor do pseudo-labels, or an experiment's training, land on an ensemble
    assert_refused(invoke("pseudo", "a", "--name", "0123", "--runs-dir", runs), "is an ensemble")
    assert_refused(invoke("pseudo", "a", "--name", "c", "--runs-dir", runs), "is an experiment, not a pseudo")
    assert_refused(invoke("train", "--config", a.run_dir / "config.yaml", "--set", "name=0123"), "is an ensemble")


def test_an_ensemble_finds_its_own_members_after_a_move(copy_run, tmp_path):
    copy_run("a"), copy_run("b")
    runs = tmp_path / "runs"
    ensemble.run(["a", "b"], method="mean", name="blend", runs_dir=str(runs))
    moved = Path(shutil.copytree(runs, tmp_path / "moved"))
    predict_one_class(RunDir(runs / "a"), "digit_0")  # the recorded folder now holds other predictions
    members = RunDir(moved / "blend").member_runs(str(runs))
    assert [m.path for m in members] == [moved / "a", (runs / "b").resolve()]


def test_names_and_paths_are_kept_as_written(competition, make_config, tmp_path):
    path, cfg = make_config(competition)
    runs = Path(cfg.runs_dir)
    cli("prepare", "--config", path, "--set", "name=0123")
    assert (runs / "0123" / "folds.csv").is_file() and not (runs / "83").exists()

    assert_refused(invoke("prepare", "--config", path, "--set", "name=../../x"), "'../../x'", PATTERN)
    assert not (tmp_path / "x").exists() and not (runs.parent.parent / "x").exists()
    assert_refused(invoke("prepare", "--config", path, "--set", "name=exp #2"), "'exp #2'", PATTERN)
    assert_refused(invoke("prepare", "--config", path, "--set", "name=.."), "'..'", PATTERN)
    with pytest.raises(UserError, match="'12:30'"):  # the text refused, not YAML's 750
        load_config(path, ["name=12:30"])

    cfg = load_config(path, ["tracking.project=12:30", "data.root=/data/a #2", "data.image_dir=", "name='0042'",
                             "model.weights_file=null", "train.epochs=3"])
    assert (cfg.tracking.project, cfg.data.root, cfg.data.image_dir, cfg.name) == ("12:30", "/data/a #2", "", "0042")
    assert cfg.model.weights_file is None and cfg.train.epochs == 3
    (tmp_path / "file.yaml").write_text("name: 0123\ntracking: {project: 12:30}\ntrain: {epochs: 0x10}\n")
    cfg = load_config(tmp_path / "file.yaml")
    assert (cfg.name, cfg.tracking.project, cfg.train.epochs) == ("0123", "12:30", 16)
    assert type(cfg.train.epochs) is int  # a plain int: dump_yaml writes it
