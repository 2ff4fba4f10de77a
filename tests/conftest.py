"""Shared fixtures and helpers: a small real competition (scikit-learn digits as PNGs), configs pointing at it,
one trained digits run per session for the tests that only read a run's outputs, and the CLI.

    write_config(folder, root, base=TINY, **sections)   a config file for a base tree (TINY, SEQ, a test's own)
    make_config(root, base=TINY, **sections)           the same under tmp_path (fixture)
    copy_run(name, **sections)                         a private copy of the session's trained run (fixture)
    cli(*args) / invoke(*args)                         the real CLI, asserting exit code 0 / not asserting
    assert_export_submits_the_same(runs, name, ...)    export + infer without train data = submit's file
    assert_refused(result, *fragments, file=...)       a user error: exit 2, one `error:` line, no traceback
    interrupt_at_epoch(monkeypatch, epoch)             training dies at the start of that epoch
    oof_accuracy(frame, classes)                       sklearn's accuracy of a prediction frame
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.config import Config, load_config
from pipeline.tasks.classification.demo_data import write_digits_competition

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_ray_left():
    """A Ray instance a test started in this process (tune --workers, predict --gpus) goes down with the test."""
    yield
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


# --- the CLI -------------------------------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args):
    """`pipeline <args>` (each str()ed) through the real CLI; the caller checks the exit code."""
    return runner.invoke(app, [str(a) for a in args])


def cli(*args, exit_code: int = 0):
    """`pipeline <args>` through the real CLI, asserting its exit code (0 unless told)."""
    result = invoke(*args)
    assert result.exit_code == exit_code, result.output
    return result


def assert_refused(result, *fragments: str, file: str | None = None) -> str:
    """Exit 2, one `error:` line (naming `file`, when given), every fragment on stderr, no traceback; returns
    the error line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert file is None or file in errors[0], errors[0]
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    return errors[0]


def assert_export_submits_the_same(runs: Path | str, name: str, competition: Path, tmp_path: Path) -> Path:
    """`pipeline export` of runs/<name>, then `pipeline infer` on a copy of the competition without its training
    tables: the file must be `pipeline submit`'s, byte for byte. Returns the export folder."""
    submitted = tmp_path / f"{name}-submit.csv"
    cli("submit", name, "--runs-dir", runs, "--out", submitted)
    export = tmp_path / f"{name}-export"
    cli("export", name, "--runs-dir", runs, "--out", export)
    test_only = Path(shutil.copytree(competition, tmp_path / f"{name}-test-only"))
    for table in ("train.csv", "train_labels.csv", "solution.csv"):
        (test_only / table).unlink(missing_ok=True)
    cli("infer", export, "--data", test_only, "--out", tmp_path / f"{name}-infer.csv")
    assert (tmp_path / f"{name}-infer.csv").read_bytes() == submitted.read_bytes()
    return export


def interrupt_at_epoch(monkeypatch, epoch: int):
    """Make pipeline.engine.loop.train_epoch raise KeyboardInterrupt at the start of epoch index `epoch` (its 5th
    argument), as a kill would; returns the real train_epoch, for monkeypatch.setattr(loop, "train_epoch", real)."""
    from pipeline.engine import loop

    real = loop.train_epoch

    def interrupted(*args, **kwargs):
        if args[4] == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", interrupted)
    return real


# --- configs -------------------------------------------------------------------------------------------------

TINY = {  # the digits competition: a tiny classifier, 3 folds x 2 epochs
    "model": {"name": "test_resnet"},
    "image": {"size": 32},
    "cv": {"folds": 3},
    "train": {"epochs": 2, "batch_size": 16, "num_workers": 0, "base_lr": 4e-3},
    "tracking": {"wandb": "disabled", "quiet": True},
}

SEQ = {  # write_series_competition's long table: tiny sequence models, 3 folds x 2 epochs
    "task": "sequence",
    "data": {"id_col": "series_id", "target_col": "label", "labels_csv": "train_labels.csv", "step_col": "step"},
    "cv": {"folds": 3},
    "sequence": {"dim": 16, "filters": 8, "hidden": 16, "heads": 2, "layers": 1},
    "train": {"epochs": 2, "batch_size": 8, "num_workers": 0, "base_lr": 3e-2, "keep_top": 0},
    "predict": {"tta": "crops"},
    "tracking": {"wandb": "disabled", "quiet": True},
}


def merge(tree: dict, sections: dict) -> dict:
    """tree with each section's keys laid over its own (a dict) or replaced (any other value); tree is changed."""
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return tree


def write_config(folder: Path, root: Path | str, base: dict = TINY, name: str = "exp", **sections) -> tuple[Path, Config]:
    """folder/<name>.yaml: `base` for the competition at `root`, runs under folder/runs and submissions under
    folder/subs, with `sections` laid over it (e.g. train={"epochs": 1}, seed=7) -> (path, Config)."""
    tree = copy.deepcopy(base)
    tree.update(name=name, runs_dir=str(folder / "runs"), submissions_dir=str(folder / "subs"))
    tree["data"] = {**tree.get("data", {}), "root": str(root)}
    merge(tree, sections)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, load_config(path)


@pytest.fixture
def make_config(tmp_path):
    """make_config(root, name="exp", base=TINY, **sections) -> (config path, Config) for a run under tmp_path/runs."""

    def make(root: Path, name: str = "exp", base: dict = TINY, **sections):
        return write_config(tmp_path, root, base, name, **sections)

    return make


def oof_accuracy(frame: pd.DataFrame, classes: list) -> float:
    """sklearn's accuracy of a prediction frame's arg-max class column against its target column."""
    from sklearn.metrics import accuracy_score

    return accuracy_score(frame["target"], np.array(classes)[frame[classes].to_numpy().argmax(axis=1)])


# --- competitions --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """150 training and 359 test digits at 32 px, written once per session; tests copy it if they edit it."""
    return write_digits_competition(tmp_path_factory.mktemp("digits"), size=32, n_train=150)


@pytest.fixture
def competition(digits_root, tmp_path) -> Path:
    """A private copy of the digits competition that a test may damage."""
    return Path(shutil.copytree(digits_root, tmp_path / "digits"))


def write_series_competition(root, n_train=48, n_test=12, channels=3, seed=0):
    """Variable-length series whose class sets the frequency of a sine on channel 0 (config: SEQ)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def block(ids):
        rows, labels = [], []
        for sid in ids:
            label = int(rng.integers(0, 3))
            steps = int(rng.integers(12, 30))
            t = np.arange(steps)
            values = rng.normal(0, 0.3, (steps, channels))
            values[:, 0] += np.sin(t * (label + 1) * 0.5)
            for step in t:
                rows.append({"series_id": f"s{sid}", "step": step, **{f"ch{c}": values[step, c] for c in range(channels)}})
            labels.append({"series_id": f"s{sid}", "label": f"class{label}"})
        return pd.DataFrame(rows), pd.DataFrame(labels)

    train, labels = block(range(n_train))
    test, solution = block(range(n_train, n_train + n_test))
    train.to_csv(root / "train.csv", index=False)
    labels.to_csv(root / "train_labels.csv", index=False)
    test.to_csv(root / "test.csv", index=False)
    solution.to_csv(root / "solution.csv", index=False)
    solution.assign(label="class0").to_csv(root / "sample_submission.csv", index=False)
    return root


# --- one trained run per session -----------------------------------------------------------------------------

TRAINED = {"cv": {"folds": 2}, "train": {"epochs": 2}}  # over TINY; predicted with the default tta (auto)


@pytest.fixture(scope="session")
def trained_run(digits_root, tmp_path_factory) -> Path:
    """The run directory of a digits experiment `exp` (TINY with 2 folds) prepared, trained on every fold and
    predicted once per session, for tests that only need a trained run's outputs. Never written to: copy_run."""
    from pipeline.stages import predict, prepare, train

    _, cfg = write_config(tmp_path_factory.mktemp("trained"), digits_root, name="exp", **TRAINED)
    prepare.run(cfg)
    train.run(cfg, fold="all")
    predict.run(cfg)
    return cfg.run_dir


@pytest.fixture
def copy_run(trained_run, tmp_path):
    """copy_run(name="exp", **sections) -> the Config of a private copy of the session's trained run at
    tmp_path/runs/<name>, its config.yaml pointed at tmp_path/runs and tmp_path/subs (make_config's folders) and
    changed by `sections` (e.g. data={"root": ...}, predict={"tta": "none"})."""

    def copy_to(name: str = "exp", **sections) -> Config:
        return copy_run_to(trained_run, tmp_path, name, **sections)

    return copy_to


def copy_run_to(trained_run: Path, folder: Path, name: str = "exp", **sections) -> Config:
    """copy_run's work, into folder/runs/<name> (a module-scoped fixture's folder, say)."""
    run = Path(shutil.copytree(trained_run, folder / "runs" / name))
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree.update(name=name, runs_dir=str(folder / "runs"), submissions_dir=str(folder / "subs"))
    (run / "config.yaml").write_text(yaml.safe_dump(merge(tree, sections)))
    return load_config(run / "config.yaml")
