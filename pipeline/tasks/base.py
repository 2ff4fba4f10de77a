"""What classification and sequences share: `ClassProbabilities`, [N, C] class probabilities (or the target type's
outputs) through prediction files, scores, ensembles, submissions and the report. The contract itself, `Task`,
is pipeline/engine/task.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.data.submission import check_values, decode
from pipeline.engine.task import Task
from pipeline.engine.training_rows import with_unlabelled
from pipeline.scoring.blend import Blend, applied_method, apply_blend, blend_outputs, blend_without_fold
from pipeline.scoring.targets import build_target

RESERVED = {"id", "target", "fold"}  # prediction-frame columns that class names may not take


class ClassProbabilities(Task):
    """Outputs are [N, width] arrays per sample, as the target type makes them (pipeline.scoring.targets): class
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

    def oof_tables(self, oof: pd.DataFrame) -> dict[str, pd.DataFrame]:
        from pipeline.reporting.tables import oof_tables

        return oof_tables(self.targets(oof), self.read_outputs(oof).astype(np.float64), self.target)

    def report_sections(self, oof: pd.DataFrame, out: Path) -> list:
        from pipeline.reporting.report import oof_sections  # matplotlib only when a report is drawn

        return oof_sections(oof, self.targets(oof), self.read_outputs(oof).astype(np.float64), self.target, out)
