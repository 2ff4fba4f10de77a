"""The contract between a task and the shared loop, folds, checkpoints and files."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.metrics import Metric
from pipeline.tta import View


class Task(Protocol):
    metric: Metric  # the valid score per epoch and the CV score

    def build_model(self) -> nn.Module:
        """The network, on CPU, with any pretrained weights loaded."""

    def build_dataset(self, rows: pd.DataFrame, train: bool) -> Dataset:
        """Samples for folds-table rows (id, target); train=True adds augmentation."""

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move one collated batch to the device (in the model's memory format)."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Scalar training loss for a batch already on the device."""

    def predict(self, model: nn.Module, batch: Any, views: list[View]) -> torch.Tensor:
        """[V, B, ...] per-view, per-sample outputs (e.g. class probabilities) for a batch on the device."""

    def evaluate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """{'loss': ..., 'score': ...} for the validation rows."""

    def prediction_frame(self, rows: pd.DataFrame, outputs: np.ndarray) -> pd.DataFrame:
        """id, (target,) outputs as columns: the layout of oof.parquet and test.parquet."""
