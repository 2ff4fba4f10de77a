"""The contract between a task and the shared loop, folds, checkpoints, ensembling and files.

`Task` is every method a stage calls, with no-op defaults where most tasks need nothing (per-fold
preprocessing, content fingerprints). `ClassProbabilities` is what classification and sequences share:
[N, C] class probabilities through prediction files, scores, ensembles, submissions and report.
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

from pipeline.blend import Blend, applied_method, apply_blend, blend_outputs, blend_without_fold
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.metrics import Metric
from pipeline.submission import check_values, decode
from pipeline.targets import build_target
from pipeline.tta import View

RESERVED = {"id", "target", "fold"}  # prediction-frame columns that class names may not take


def with_unlabelled(rows: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """Folds-table rows followed by unlabelled ones (test ids) for a training dataset: any real label stands in where
    the dataset reads one, and the caller replaces the dataset's .labels (distillation, pseudo-labels)."""
    extra = pd.DataFrame({"id": ids.to_numpy(), "target": rows["target"].iloc[0], "fold": -1})
    return pd.concat([rows[["id", "target", "fold"]], extra], ignore_index=True)


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

    def __init__(self, cfg: Config, classes: list):
        self.cfg, self.classes = cfg, classes

    # -- data, per competition (static: prepare calls them before any fold exists) --------------------------
    @staticmethod
    @abstractmethod
    def sample_table(cfg: Config) -> tuple[pd.DataFrame, list]:
        """One row per sample (id, target, group columns named by the config) and the class list, all checked."""

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
        """Cheap per-row features for adversarial validation (pipeline.drift), one row per table row; split is
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
        """The report's sections on OOF predictions (pipeline.report.Section), figures written under out."""


class ClassProbabilities(Task):
    """Outputs are [N, width] arrays per sample, as the target type makes them (pipeline.targets): class
    probabilities, tag probabilities, values or grades; averaged over views and folds, one column each in files."""

    def __init__(self, cfg: Config, classes: list):
        clash = RESERVED & {str(c) for c in classes}
        if clash:
            raise UserError(f"class label(s) {sorted(clash)} clash with prediction columns id/target/fold; rename them")
        super().__init__(cfg, classes)
        self.target = build_target(cfg, classes)
        self.metric = self.target.bound_metric()

    def labels(self, rows: pd.DataFrame) -> np.ndarray | None:
        """Truths of folds-table rows (class ids, 0/1 tags, values); None for unlabelled (test) rows."""
        return self.target.encode(rows["target"]) if "target" in rows else None

    def fit_fold(self, train_rows: pd.DataFrame) -> dict:
        """The target's per-fold state (a value's mean and spread), from the fold's training rows only."""
        state = self.target.fit(self.labels(train_rows))
        return {"target": state} if state else {}

    def load_fold(self, state: dict) -> None:
        self.target.load(state.get("target", {}))

    def mix(self, x: torch.Tensor, y: torch.Tensor, mixup) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup/cutmix on a training batch: timm's for class ids (soft targets with the smoothing folded in);
        for tags and values the same image mixing, and the truths mixed by the same share."""
        if y.dtype == torch.int64 and y.ndim == 1 and self.target.kind == "multiclass":
            return mixup(x, y)
        lam = mixup._mix_batch(x)  # mixes x in place (with its reverse), returns the share kept
        return x, self.target.mix(y, lam)

    def gather(self, chunks: list[torch.Tensor]) -> np.ndarray:
        """[V, N, C] from per-batch [V, B, C] outputs."""
        return torch.cat(chunks, dim=1).numpy()

    def reorder(self, outputs: np.ndarray, index: np.ndarray) -> np.ndarray:
        """[V, N, C] outputs with their rows taken in `index` order (a length-sorted loader's, undone)."""
        return outputs[:, index]

    def merge(self, outputs: list[np.ndarray], weights=None) -> np.ndarray:
        """Average several predictions of the same rows (TTA views, folds)."""
        return np.average(np.stack(outputs), axis=0, weights=weights).astype(np.float32)

    def evaluate(self, outputs: np.ndarray, targets: np.ndarray, params: dict | None = None) -> dict[str, float]:
        return {"loss": self.target.valid_loss(targets, outputs), "score": self.target.score(targets, outputs, params)}

    def fit_params(self, outputs: np.ndarray, targets: np.ndarray) -> dict:
        """Decision thresholds or cut points fitted on these OOF rows ({}: nothing to fit)."""
        return self.target.fit_params(outputs, targets)

    def fitted_scores(self, outputs: np.ndarray, targets: np.ndarray, folds: np.ndarray) -> dict:
        """Decision settings fitted on all OOF rows (what submit applies), scored honestly: each fold's rows decided
        by settings fitted on the other folds. {} when the metric needs nothing fitted."""
        params = self.fit_params(outputs, targets)
        if not params:
            return {}
        t, decided, per_fold = self.target, None, {}
        for k in np.unique(folds):
            held = folds == k
            d = t.decide(outputs[held], self.fit_params(outputs[~held], targets[~held]))
            decided = np.zeros((len(outputs), *d.shape[1:]), dtype=d.dtype) if decided is None else decided
            decided[held] = d
            per_fold[int(k)] = t.metric(targets[held], d)
        return {"decisions": params, "cv": t.metric(targets, decided), "folds": per_fold,
                "cv_fitted_in_sample": t.score(targets, outputs, params), "cv_default_decisions": t.score(targets, outputs)}

    def prediction_frame(self, rows: pd.DataFrame, outputs: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame(outputs.astype(self.cfg.predict.dtype), columns=self.target.columns)
        keys = rows[[c for c in ("id", "target", "fold") if c in rows]].reset_index(drop=True)
        return pd.concat([keys, frame], axis=1)

    def read_outputs(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[self.target.columns].to_numpy(dtype=np.float32)

    def targets(self, frame: pd.DataFrame) -> np.ndarray:
        return self.target.encode(frame["target"])

    def blend(self, method: str, oofs: list[np.ndarray], tests: list[np.ndarray], target: np.ndarray,
              folds: np.ndarray) -> Blend:
        return blend_outputs(method, oofs, tests, target, folds, self.metric, self.target)

    def soft_targets(self, rows: pd.DataFrame | None, teacher: np.ndarray, alpha: float) -> np.ndarray:
        return self.target.soft_labels(None if rows is None else self.labels(rows), teacher, alpha)

    def fold_blend(self, fitted: dict, oofs: list[np.ndarray], truth: np.ndarray, folds: np.ndarray, k: int,
                   tests: list[np.ndarray]) -> np.ndarray:
        return blend_without_fold(fitted, oofs, truth, folds, k, tests, self.metric, self.target)

    def confidence(self, outputs: np.ndarray) -> np.ndarray | None:
        return self.target.confidence(outputs)

    def hits(self, outputs: np.ndarray, truths: np.ndarray) -> np.ndarray:
        return self.target.hits(outputs, truths)

    def keep_confident(self, frame: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
        if threshold is None:
            return frame.reset_index(drop=True)
        return frame[self.confidence(self.read_outputs(frame)) >= threshold].reset_index(drop=True)

    def pseudo_counts(self, frame: pd.DataFrame) -> dict[str, int]:
        """Decided labels per class (tags per label, grades per grade); {} for values."""
        if self.target.kind == "regression":
            return {}
        decided = self.target.decide(self.read_outputs(frame))
        if decided.ndim == 2:  # tags
            return {c: int(n) for c, n in zip(self.target.columns, decided.sum(axis=0), strict=True)}
        names = self.classes if self.target.kind != "ordinal" else None
        counts = pd.Series(decided).value_counts(sort=False).sort_index()
        return {str(names[int(v)] if names else v): int(n) for v, n in counts.items()}

    def pseudo_dataset(self, train_rows: pd.DataFrame, pseudo: pd.DataFrame, soft: bool) -> Dataset:
        outputs = self.read_outputs(pseudo)
        dataset = self.build_dataset(with_unlabelled(train_rows, pseudo["id"]), train=True)
        if soft:  # the truths in the outputs' terms (one-hot with the smoothing), then the outputs themselves
            truths = self.soft_targets(train_rows, np.zeros((len(train_rows), outputs.shape[1]), np.float32), 1.0)
            labels = np.concatenate([truths, self.soft_targets(None, outputs, 0.0)]).astype(np.float32)
        else:
            labels = np.concatenate([self.labels(train_rows), self.target.decide(outputs)])
        dataset.labels = labels  # every row's training target (datasets index .labels)
        return dataset

    def blend_test(self, fitted: dict, tests: list[np.ndarray]) -> np.ndarray:
        return apply_blend(applied_method(fitted), tests, fitted["weights"], fitted.get("stacker"),
                           columns=self.target.kind != "multiclass")

    def submission(self, test: pd.DataFrame, sample: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return decode(test, sample, self.cfg, self.target, params or {})

    def check_submission(self, sub: pd.DataFrame, sample: pd.DataFrame) -> None:
        check_values(sub, self.target, self.cfg, sample)

    def report_sections(self, oof: pd.DataFrame, out: Path) -> list:
        from pipeline.report import oof_sections  # matplotlib only when a report is drawn

        return oof_sections(oof, self.targets(oof), self.read_outputs(oof).astype(np.float64), self.target, out)
