"""The contract between a task and the shared loop, folds, checkpoints, ensembling and files."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.config import Config
from pipeline.ensemble import Blend
from pipeline.metrics import Metric
from pipeline.tta import View


class Task(Protocol):
    metric: Metric  # the valid score per epoch and the CV score
    memory_format: torch.memory_format  # of inputs and model (channels_last where it helps)

    # -- data, per competition (static: prepare calls them before any fold exists) --------------------------
    @staticmethod
    def sample_table(cfg: Config) -> tuple[pd.DataFrame, list]:
        """One row per sample (id, target, group columns named by the config) and the class list, all checked."""

    @staticmethod
    def test_table(cfg: Config, check: bool = False) -> pd.DataFrame:
        """One row per test sample (the id column); check=True also decodes what it points to."""

    # -- per fold -------------------------------------------------------------------------------------------
    def fit_fold(self, train_rows: pd.DataFrame) -> dict:
        """Preprocessing fitted on the fold's training rows only; saved as fold{k}/preprocess.json ({} = none)."""

    def load_fold(self, state: dict) -> None:
        """Restore what fit_fold returned, before build_model/build_dataset at predict time."""

    def build_model(self) -> nn.Module:
        """The network, on CPU, with any pretrained weights loaded."""

    def build_dataset(self, rows: pd.DataFrame, train: bool) -> Dataset:
        """Samples for folds-table rows (id, target); train=True adds augmentation."""

    # -- steps ----------------------------------------------------------------------------------------------
    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move one collated batch to the device (in the model's memory format)."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Scalar training loss for a batch already on the device."""

    def views(self, spec: str) -> list[View]:
        """The TTA views named by predict.tta, identity first."""

    def predict(self, model: nn.Module, batch: Any, views: list[View]) -> Any:
        """Per-view, per-sample outputs for a batch on the device ([V, B, C] probabilities, or boxes)."""

    def gather(self, chunks: list) -> Any:
        """Per-batch predict() outputs joined into per-view outputs for the whole loader."""

    def merge(self, outputs: list, weights=None) -> Any:
        """One output from several of the same samples (TTA views, folds): a mean, or fused boxes."""

    def evaluate(self, outputs: Any, targets: Any) -> dict[str, float]:
        """{'score': ..., and e.g. 'loss'} for the validation rows."""

    # -- files and ensembles --------------------------------------------------------------------------------
    def prediction_frame(self, rows: pd.DataFrame, outputs: Any) -> pd.DataFrame:
        """id, (target, fold,) outputs as columns: the layout of oof.parquet and test.parquet."""

    def read_outputs(self, frame: pd.DataFrame) -> Any:
        """The outputs stored in a prediction frame (the inverse of prediction_frame)."""

    def targets(self, frame: pd.DataFrame) -> Any:
        """The truths of an OOF prediction frame, as evaluate() takes them."""

    def blend(self, method: str, oofs: list, tests: list, target: Any, folds: np.ndarray) -> Blend:
        """Combine experiments, fitting anything on OOF only; the ensemble stage's method."""

    def submission(self, test: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
        """The competition's file from test predictions, in sample_submission's order."""

    def check_submission(self, sub: pd.DataFrame) -> None:
        """Content checks beyond rows/ids/order (labels known to train, well-formed box strings ...)."""
