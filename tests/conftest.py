"""Shared fixtures: a small real competition (scikit-learn digits as PNGs) and configs pointing at it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import load_config
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


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """150 training and 359 test digits at 32 px, written once per session; tests copy it if they edit it."""
    return write_digits_competition(tmp_path_factory.mktemp("digits"), size=32, n_train=150)


@pytest.fixture
def competition(digits_root, tmp_path) -> Path:
    """A private copy of the digits competition that a test may damage."""
    return Path(shutil.copytree(digits_root, tmp_path / "digits"))


TINY = {
    "model": {"name": "test_resnet"},
    "image": {"size": 32},
    "cv": {"folds": 3},
    "train": {"epochs": 2, "batch_size": 16, "num_workers": 0, "base_lr": 4e-3},
    "tracking": {"wandb": "disabled", "quiet": True},
}


@pytest.fixture
def make_config(tmp_path):
    """make_config(root, **sections) -> (config path, Config) for a tiny run under tmp_path/runs."""

    def make(root: Path, name: str = "exp", **sections):
        tree = {"name": name, "runs_dir": str(tmp_path / "runs"), "submissions_dir": str(tmp_path / "subs"),
                "data": {"root": str(root)}}
        for key in {*TINY, *sections}:
            value = sections.get(key, {})
            tree[key] = {**tree.get(key, {}), **TINY.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tree))
        return path, load_config(path)

    return make
