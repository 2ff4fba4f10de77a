"""The task contract: every method the engine, the stages and the workflows call on a task, with no-op defaults
where most tasks need nothing (per-fold preprocessing, content fingerprints). Tasks (pipeline/tasks/) fulfil it;
the layers below them receive a Task as a parameter and never import one. TASKS is the registry of task classes by
name, filled by pipeline.tasks; build_task reads it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.scoring.blend import Blend
from pipeline.scoring.metrics import Metric
from pipeline.scoring.targets import build_target
from pipeline.scoring.tta import View


@dataclass(frozen=True)
class Demo:
    """`pipeline demo --task T`: an embedded competition and the experiments run on it."""

    root: str  # default folder of the embedded competition
    write: Callable[[Path], Path]  # writes it
    experiments: tuple[str, ...]  # config files in configs/, ensembled in this order
    ensemble: str  # the ensemble's name, also the submission's
    score: Callable[[Path, Path, Config], dict[str, float]]  # (submission, solution.csv, config) -> held-back scores


class Task(ABC):
    cfg: Config
    classes: list  # class names in class-id order (detection: box classes)
    metric: Metric  # the valid score per epoch and the CV score
    memory_format: torch.memory_format = torch.contiguous_format  # of inputs and model (channels_last where it helps)
    demo: ClassVar[Demo]  # the embedded competition of `pipeline demo --task <name>`
    tunes_head: ClassVar[bool] = True  # `pipeline tune` searches dropout and label smoothing by default
    learns_soft_targets: ClassVar[bool] = True  # a student (distill) or soft pseudo-labels can train it
    has_gpu_augment: ClassVar[bool] = False  # augment.on_gpu has a device path (bench measures it on CUDA)
    bare_batches: ClassVar[bool] = False  # bench's bare loop replays real batches (inputs of varying shape)

    def __init__(self, cfg: Config, classes: list):
        self.cfg, self.classes = cfg, classes

    # -- data, per competition (static: prepare calls them before any fold exists) --------------------------
    @staticmethod
    @abstractmethod
    def sample_table(cfg: Config) -> tuple[pd.DataFrame, list]:
        """One row per sample (id, target, group columns named by the config) and the class list, all checked."""

    @staticmethod
    def strata(cfg: Config, target: pd.Series, classes: list) -> np.ndarray:
        """What stratified folds balance for these targets (pipeline.data.folds): the target type's strata (labels,
        a tag matrix, quantile bins of values) unless a task says otherwise."""
        return build_target(cfg, classes).strata(target)

    @staticmethod
    def describe_targets(cfg: Config, classes: list) -> str:
        """The targets in prepare's log line: "multiclass target, 10 classes", "regression target, values" ..."""
        kind = cfg.data.target_type
        what = "values" if kind == "regression" else \
            f"{len(classes)} {({'multilabel': 'tags', 'ordinal': 'grades'}).get(kind, 'classes')}"
        return f"{kind} target, {what}"

    @staticmethod
    @abstractmethod
    def test_table(cfg: Config, check: bool = False) -> pd.DataFrame:
        """One row per test sample (the id column); check=True also decodes what it points to."""

    @staticmethod
    def fingerprints(cfg: Config, table: pd.DataFrame) -> list[str] | None:
        """A content hash per row for duplicate detection at prepare; None: this data is not hashed."""
        return None

    @staticmethod
    def drift_features(cfg: Config, table: pd.DataFrame, split: str) -> pd.DataFrame | None:
        """Cheap per-row features for adversarial validation (pipeline.data.drift), one row per table row; split is
        "train" or "test"; None: this task has none."""
        return None

    @staticmethod
    def input_size(cfg: Config) -> int | None:
        """The model's input side in pixels, for tables and reports; None where inputs have no fixed size."""
        return None

    # -- per fold -------------------------------------------------------------------------------------------
    def fit_fold(self, train_rows: pd.DataFrame) -> dict:
        """Preprocessing fitted on the fold's training rows only; saved as fold{k}/preprocess.json ({} = none)."""
        return {}

    def load_fold(self, state: dict) -> None:  # noqa: B027  (a no-op by design: most tasks fit nothing per fold)
        """Restore what fit_fold returned, before build_model/build_dataset at predict time."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The network, on CPU, with any pretrained weights loaded."""

    @abstractmethod
    def build_dataset(self, rows: pd.DataFrame, train: bool) -> Dataset:
        """Samples for folds-table rows (id, target); train=True adds augmentation."""

    # -- steps ----------------------------------------------------------------------------------------------
    @abstractmethod
    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move one collated batch to the device (in the model's memory format)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, mix: bool = True) -> torch.Tensor:
        """Scalar training loss for a batch already on the device; mix=False skips batch mixing (mixup/cutmix),
        for forwards that only re-measure BatchNorm statistics."""

    @abstractmethod
    def views(self, spec: str) -> list[View]:
        """The TTA views named by predict.tta, identity first."""

    @abstractmethod
    def infer_batch(self, model: nn.Module, batch: Any, views: list[View]) -> Any:
        """Per-view, per-sample outputs for a batch on the device ([V, B, C] probabilities, or boxes)."""

    @abstractmethod
    def gather(self, chunks: list) -> Any:
        """Per-batch infer_batch() outputs joined into per-view outputs for the whole loader."""

    def reorder(self, outputs: Any, index: np.ndarray) -> Any:
        """gather()'s outputs with their samples taken in `index` order: what infer does after a loader that
        yields samples out of order (variable-length items, longest first); only such tasks need it."""
        raise NotImplementedError(f"{type(self).__name__} has no variable-length inputs to sort")

    @abstractmethod
    def merge(self, outputs: list, weights=None) -> Any:
        """One output from several of the same samples (TTA views, folds): a mean, or fused boxes."""

    @abstractmethod
    def evaluate(self, outputs: Any, targets: Any, params: dict | None = None) -> dict[str, float]:
        """{'score': ..., and e.g. 'loss'} for the validation rows; params: decision settings fitted on OOF."""

    def fit_params(self, outputs: Any, targets: Any) -> dict:
        """Decision settings (thresholds, cut points) fitted on OOF rows for the metric; {} where there are none."""
        return {}

    def fitted_scores(self, outputs: Any, targets: Any, folds: np.ndarray) -> dict:
        """fit_params' settings and the CV they give when each fold is decided by settings fitted on the others;
        {} where nothing is fitted (detection)."""
        return {}

    # -- files, ensembles, submission, report ---------------------------------------------------------------
    @abstractmethod
    def prediction_frame(self, rows: pd.DataFrame, outputs: Any) -> pd.DataFrame:
        """id, (target, fold,) outputs as columns: the layout of oof.parquet and test.parquet."""

    @abstractmethod
    def read_outputs(self, frame: pd.DataFrame) -> Any:
        """The outputs stored in a prediction frame (the inverse of prediction_frame)."""

    @abstractmethod
    def targets(self, frame: pd.DataFrame) -> Any:
        """The truths of an OOF prediction frame, as evaluate() takes them."""

    @abstractmethod
    def blend(self, method: str, oofs: list, tests: list, target: Any, folds: np.ndarray) -> Blend:
        """Combine experiments, fitting anything on OOF only; the ensemble stage's method."""

    def soft_targets(self, rows: pd.DataFrame | None, teacher: Any, alpha: float) -> np.ndarray:
        """Training targets for a student (pipeline distill): alpha x the rows' truths + (1 - alpha) x a teacher's
        outputs for them; rows None: unlabelled rows, the teacher's alone. Datasets take them as their .labels."""
        raise UserError(f"{type(self).__name__} outputs cannot be distilled into soft training targets")

    def fold_blend(self, fitted: dict, oofs: list, truth: Any, folds: np.ndarray, k: int, tests: list) -> Any:
        """An ensemble's blend as fold k's student may see it: fitted without fold k's OOF rows (pipeline distill)."""
        raise UserError(f"{type(self).__name__} ensembles cannot teach a student")

    # -- pseudo-labels (pipeline pseudo) --------------------------------------------------------------------
    def confidence(self, outputs: Any) -> np.ndarray | None:
        """How sure each unit of the outputs is (a row; detection: a box, in image order); None: outputs carry no
        confidence (values), so every row is kept."""
        raise UserError(f"{type(self).__name__} outputs cannot be pseudo-labelled")

    def hits(self, outputs: Any, truths: Any) -> np.ndarray:
        """Whether each unit is right (a row's decision; a box matched to a truth of its class at IoU 0.5)."""
        raise UserError(f"{type(self).__name__} outputs cannot be pseudo-labelled")

    def keep_confident(self, frame: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
        """A test prediction frame cut to what passes the threshold (rows; detection: images with their passing
        boxes); None keeps every row."""
        raise UserError(f"{type(self).__name__} outputs cannot be pseudo-labelled")

    def pseudo_counts(self, frame: pd.DataFrame) -> dict[str, int]:
        """Kept pseudo-labels per class (boxes per class; {} for values)."""
        return {}

    def pseudo_dataset(self, train_rows: pd.DataFrame, pseudo: pd.DataFrame, soft: bool) -> Dataset:
        """Fold k's training rows followed by its pseudo-labelled test rows, labelled by decisions (or, soft, by the
        outputs themselves)."""
        raise UserError(f"{type(self).__name__} outputs cannot be pseudo-labelled")

    @abstractmethod
    def blend_test(self, fitted: dict, tests: list) -> Any:
        """An ensemble's fitted blend (its weights.json; weights as a list in member order) on the members' outputs
        for another test set: what blend() computed for its test part (pipeline infer)."""

    @abstractmethod
    def submission(self, test: pd.DataFrame, sample: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """The competition's file from test predictions, in sample_submission's order (params: fit_params')."""

    @abstractmethod
    def check_submission(self, sub: pd.DataFrame, sample: pd.DataFrame) -> None:
        """Content checks beyond rows/ids/order, in the form the sample asks for (labels known to train where it
        shows labels, probabilities where it shows fractions, well-formed box strings ...)."""

    @abstractmethod
    def report_sections(self, oof: pd.DataFrame, out: Path) -> list:
        """The report's sections on OOF predictions (pipeline.reporting.report.Section), figures written under out."""

    def oof_tables(self, oof: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """OOF tables the predict run logs to W&B by name (per-class scores, confusion cells); none by default."""
        return {}


TASKS: dict[str, type[Task]] = {}  # task classes by config name (`task:`); pipeline.tasks registers each one


def build_task(cfg: Config, classes: list) -> Task:
    """The task of a config, from the registry pipeline.tasks fills (a stage or workflow imports it first)."""
    if cfg.task not in TASKS:
        raise UserError(f"task {cfg.task!r} is not registered; known: {', '.join(TASKS) or 'none (import pipeline.tasks)'}")
    return TASKS[cfg.task](cfg, classes)
