"""What one sample's target is, and everything that follows from it: the model's outputs, the loss, the
decisions (labels, tags, grades) made from outputs, what is fitted on OOF, the blends and the submission file.

    data.target_type: auto | multiclass | binary | multilabel | regression | ordinal

Outputs are [N, width] float arrays everywhere (probabilities, or values in the target's units); truths are
[N] class ids (multiclass, binary), [N, K] 0/1 (multilabel), [N] values (regression, ordinal grades) or [N, K]
values (a regression on several data.label_cols).
Image classification and sequences share these classes; `infer_target_type` guesses the type for `auto`.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.scoring.metrics import (
    BINARY,
    MULTICLASS,
    MULTILABEL,
    ORDINAL,
    REGRESSION,
    Metric,
    get_metric,
    logloss,
)

log = logging.getLogger(__name__)
PREDICTION = "prediction"  # the output column of one-output targets (binary probability, value, grade)
LABELS, SCORES, EITHER = "labels", "scores", "either"  # what a submission column holds (Form.kind)


@dataclass(frozen=True)
class Form:
    """What a sample_submission column asks for: labels (class names, 0/1 tags, grades), scores (probabilities,
    values), or either (0/1 whole numbers that may be placeholders: the metric decides); evidence says why."""

    kind: str
    evidence: str


class Target(ABC):
    kind: ClassVar[str]

    def __init__(self, cfg: Config, classes: list):
        self.cfg, self.classes = cfg, list(classes)
        self.metric = get_metric(cfg.train.metric, self.kind)

    # -- shapes --------------------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """Output columns of oof/test.parquet."""
        return [PREDICTION]

    @property
    def width(self) -> int:
        """The model head's number of outputs."""
        return len(self.columns)

    @abstractmethod
    def encode(self, values: pd.Series) -> np.ndarray:
        """Truths from a folds-table target column (labels, tag strings, values)."""

    def strata(self, values: pd.Series) -> np.ndarray:
        """What stratified folds balance: the label ([N]), or a 0/1 matrix for iterative stratification."""
        return values.astype(str).to_numpy()

    # -- training ------------------------------------------------------------------------------------
    def fit(self, truth: np.ndarray) -> dict:
        """State fitted on a fold's training truths (target standardisation); {} = none."""
        return {}

    def load(self, state: dict) -> None:  # noqa: B027  (most targets fit nothing)
        """Restore fit()'s state."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss on a batch's raw model outputs and truths (possibly mixed: soft labels, mixed values)."""

    @abstractmethod
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Model outputs as stored outputs: probabilities, or values in the target's units."""

    def soft_labels(self, truth: np.ndarray | None, teacher: np.ndarray, alpha: float) -> np.ndarray:
        """Training targets alpha x truth + (1 - alpha) x a teacher's outputs, in the loss's terms (probabilities, or
        values in the target's units); truth None: the teacher's alone (unlabelled rows)."""
        teacher = teacher.astype(np.float32)
        if truth is None:
            return teacher
        return (alpha * np.asarray(truth, dtype=np.float32).reshape(teacher.shape) + (1 - alpha) * teacher)

    def mix(self, y: torch.Tensor, lam: float) -> torch.Tensor:
        """Truths of a batch mixed with its reverse (mixup/cutmix pair sample i with B-1-i)."""
        y = y.float()
        return lam * y + (1 - lam) * y.flip(0)

    # -- decisions and scores ------------------------------------------------------------------------
    def decide(self, outputs: np.ndarray, params: dict | None = None) -> np.ndarray:
        """Decisions from outputs (labels, tags, grades); params: thresholds or cut points fitted on OOF."""
        return outputs[:, 0]

    def fit_params(self, outputs: np.ndarray, truth: np.ndarray) -> dict:
        """Decision parameters fitted on OOF rows for the metric; {} where nothing is fitted."""
        return {}

    def confidence(self, outputs: np.ndarray) -> np.ndarray | None:
        """How sure each row's decision is, for pseudo-labelling (pipeline.workflows.pseudo); None: outputs carry no
        confidence (a value), so a threshold cannot pick rows."""
        return None

    def hits(self, outputs: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Whether each row's decision (default settings) is right: every tag of a multilabel row."""
        decided = self.decide(outputs)
        right = decided == np.asarray(truth).reshape(decided.shape)
        return right.reshape(len(right), -1).all(axis=1)

    def score(self, truth: np.ndarray, outputs: np.ndarray, params: dict | None = None) -> float:
        m = self.metric
        return m(truth, self.decide(outputs, params) if m.decisions else self.metric_outputs(outputs))

    def metric_outputs(self, outputs: np.ndarray) -> np.ndarray:
        return outputs[:, 0]

    def bound_metric(self) -> Metric:
        """The metric as (truth, outputs) -> score with default decisions: what epochs, TTA search and blends use."""
        return Metric(self.metric.name, lambda t, o: self.score(t, o), self.metric.greater_is_better,
                      self.metric.on_labels if self.kind == MULTICLASS else None, self.metric.decisions,
                      self.metric.targets)

    @abstractmethod
    def valid_loss(self, truth: np.ndarray, outputs: np.ndarray) -> float:
        """The validation loss logged per epoch (log-loss, or mean squared error in the target's units)."""

    # -- submission ----------------------------------------------------------------------------------
    @abstractmethod
    def submission_values(self, outputs: np.ndarray, sample: pd.DataFrame, column: str, params: dict) -> np.ndarray:
        """One submission column's values from test outputs (rows in sample order)."""

    def form(self, sample: pd.DataFrame, column: str) -> Form:
        """What sample_submission's column asks this target for (values, by default)."""
        return Form(SCORES, f"{column!r} of sample_submission takes values")

    def writes_labels(self, sample: pd.DataFrame, column: str) -> tuple[bool, str]:
        """Does the submission's column hold decisions (labels, tags, grades) rather than scores, and the one-line
        reason: data.submission_form when set, else the sample's evidence, and for 0/1 placeholders the metric."""
        form, chosen = self.form(sample, column), self.cfg.data.submission_form
        if chosen != "auto":
            return chosen == LABELS, f"data.submission_form={chosen} (sample_submission {form.evidence})"
        if form.kind != EITHER:
            return form.kind == LABELS, f"sample_submission {form.evidence}"
        decisions, m = self.metric.decisions, self.metric.name
        flip = "train.metric=roc_auc (or logloss)" if decisions else "train.metric=accuracy (or f1)"
        return decisions, (f"sample_submission {form.evidence}, which may be placeholders: {m} scores "
                           f"{'labels' if decisions else 'probabilities'}; a competition scored on "
                           f"{'probabilities' if decisions else 'labels'} wants {flip} or data.submission_form="
                           f"{SCORES if decisions else LABELS}")

    def check_values(self, values: pd.Series, column: str, sample: pd.DataFrame | None = None) -> None:
        """Content checks of a submission column, in the form sample_submission asks for (when given); raises
        UserError naming the row."""
        numbers = pd.to_numeric(values, errors="coerce")
        bad = ~np.isfinite(numbers.to_numpy(dtype=np.float64))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"submission row {i + 2}, column {column!r}: {cell(values.iloc[i])} is not a number")


class Multiclass(Target):
    kind = MULTICLASS

    def __init__(self, cfg: Config, classes: list):
        super().__init__(cfg, classes)
        self.index = {str(c): i for i, c in enumerate(classes)}

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.classes]

    def encode(self, values: pd.Series) -> np.ndarray:
        return values.astype(str).map(self.index).to_numpy(dtype=np.int64)

    def soft_labels(self, truth, teacher, alpha):
        """One-hot labels (label smoothing folded in, as the hard loss applies it) mixed with class probabilities."""
        if truth is None:
            return teacher.astype(np.float32)
        c, smooth = teacher.shape[1], self.cfg.train.label_smoothing
        onehot = np.full((len(truth), c), smooth / c, dtype=np.float32)
        onehot[np.arange(len(truth)), truth] += 1 - smooth
        return super().soft_labels(onehot, teacher, alpha)

    def loss(self, logits, y):
        if y.is_floating_point():  # soft targets from mixup/cutmix (smoothing folded in), or distillation
            return torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, y, label_smoothing=self.cfg.train.label_smoothing)

    def activate(self, logits):
        return logits.float().softmax(dim=1)

    def decide(self, outputs, params=None):
        return outputs.argmax(axis=1)

    def confidence(self, outputs):
        return outputs.max(axis=1)

    def metric_outputs(self, outputs):
        return outputs

    def valid_loss(self, truth, outputs):
        return logloss(truth, outputs)

    def form(self, sample, column):
        """One column per class asks for its probability (Kaggle's layout for log-loss, even with one-hot 0/1
        placeholders); a single column asks for labels."""
        if column in self.columns and len(self.columns) > 1:
            return Form(SCORES, "has one column per class")
        return Form(LABELS, f"asks for one label per row in {column!r}")

    def submission_values(self, outputs, sample, column, params):
        if column in self.columns and len(self.columns) > 1:
            return outputs[:, self.columns.index(column)]
        return np.asarray(self.classes, dtype=object)[outputs.argmax(axis=1)]

    def check_values(self, values, column, sample=None):
        if column in self.columns and len(self.columns) > 1:
            return check_probabilities(values, column)
        check_labels(values, column, self.classes, "label")


class _Sigmoid(Target):
    """Binary and multilabel: independent sigmoid outputs, BCE, decisions by thresholds fitted on OOF."""

    def loss(self, logits, y):
        y = y.float().view_as(logits)
        eps = self.cfg.train.label_smoothing
        y = y * (1 - eps) + eps / 2
        name = self.cfg.train.loss
        if name == "focal":
            from torchvision.ops import sigmoid_focal_loss
            return sigmoid_focal_loss(logits.float(), y, reduction="mean")
        if name == "asl":
            from timm.loss import AsymmetricLossMultiLabel
            return AsymmetricLossMultiLabel()(logits.float(), y) / logits.numel()
        return F.binary_cross_entropy_with_logits(logits.float(), y)

    def activate(self, logits):
        return logits.float().sigmoid()

    def confidence(self, outputs):
        """The probability of the decided side; a multilabel row is as sure as its least sure label."""
        return np.maximum(outputs, 1 - outputs).min(axis=1)

    def valid_loss(self, truth, outputs):
        return logloss(truth, self.metric_outputs(outputs))

    def threshold(self, params: dict | None) -> np.ndarray | float:
        return np.asarray(params["threshold"]) if params and "threshold" in params else 0.5

    def fit_params(self, outputs, truth):
        """The threshold (multilabel: global, then per label where it helps) that maximises the metric on these rows."""
        if not self.metric.decisions:
            return {}
        p = self.metric_outputs(outputs)
        grid = np.round(np.arange(0.02, 0.99, 0.02), 2)
        best = max(grid, key=lambda t: (self.metric(truth, (p >= t).astype(np.int64)), -abs(t - 0.5)))
        if p.ndim == 1:
            return {"threshold": float(best)}
        per = np.full(p.shape[1], best)
        for j in range(p.shape[1]):  # one coordinate-ascent pass, each label given the others' thresholds
            def value(t, j=j):
                trial = per.copy()
                trial[j] = t
                return self.metric(truth, (p >= trial).astype(np.int64)), -abs(t - best)
            per[j] = max(grid, key=value)
        return {"threshold": per.tolist()}


class Binary(_Sigmoid):
    """Two classes, one logit: the output is the probability of classes[1] (the positive class)."""

    kind = BINARY

    def encode(self, values):
        index = {str(c): i for i, c in enumerate(self.classes)}
        return values.astype(str).map(index).to_numpy(dtype=np.int64)

    def decide(self, outputs, params=None):
        return (outputs[:, 0] >= self.threshold(params)).astype(np.int64)

    def form(self, sample, column):
        return column_form(sample[column], self.classes, column)

    def submission_values(self, outputs, sample, column, params):
        labels, why = self.writes_labels(sample, column)
        if labels:
            log.info("submission column %s: labels %s at threshold %.2f (%s)", column,
                     ", ".join(map(str, self.classes)), self.threshold(params), why)
            return np.asarray(self.classes, dtype=object)[self.decide(outputs, params)]
        log.info("submission column %s: the probability of %s (%s)", column, self.classes[1], why)
        return outputs[:, 0]

    def check_values(self, values, column, sample=None):
        if sample is None:  # no sample to go by: labels or probabilities
            if not values.astype(str).isin(names(self.classes)).all():
                check_probabilities(values, column)
            return
        labels, why = self.writes_labels(sample, column)
        if labels:
            check_labels(values, column, self.classes, "label", why)
        else:
            check_probabilities(values, column, why)


class Multilabel(_Sigmoid):
    """K labels, each present or not: K sigmoid outputs; truths are tag strings (data.label_sep) in files."""

    kind = MULTILABEL

    @property
    def columns(self):
        return [str(c) for c in self.classes]

    def encode(self, values):
        index = {str(c): i for i, c in enumerate(self.classes)}
        out = np.zeros((len(values), len(self.classes)), dtype=np.int64)
        for i, tags in enumerate(values):
            for tag in split_tags(tags, self.cfg.data.label_sep):
                out[i, index[tag]] = 1
        return out

    def strata(self, values):
        return self.encode(values)

    def metric_outputs(self, outputs):
        return outputs

    def decide(self, outputs, params=None):
        return (outputs >= self.threshold(params)).astype(np.int64)

    def form(self, sample, column):
        if column in self.columns:  # one column per label: 0/1 tags or a probability
            return column_form(sample[column], [], column)
        return Form(LABELS, f"asks for the tags of each row in {column!r}")

    def submission_values(self, outputs, sample, column, params):
        if column in self.columns:  # one column per label: its probability, or 0/1 where the sample asks for labels
            j = self.columns.index(column)
            return self.decide(outputs, params)[:, j] if self.writes_labels(sample, column)[0] else outputs[:, j]
        decided = self.decide(outputs, params)
        if self.cfg.data.min_tags:  # at least this many tags per row: the most likely ones when below threshold
            top = np.argsort(-outputs, axis=1)[:, : self.cfg.data.min_tags]
            np.put_along_axis(decided, top, 1, axis=1)
        names = np.asarray(self.columns, dtype=object)
        return np.array([self.cfg.data.label_sep.join(names[row.astype(bool)]) for row in decided], dtype=object)

    def check_values(self, values, column, sample=None):
        if column in self.columns:
            labels, why = self.writes_labels(sample, column) if sample is not None else (False, "")
            return check_labels(values, column, [0, 1], "0/1 tag", why) if labels else \
                check_probabilities(values, column, why)
        known = set(self.columns)
        for i, tags in enumerate(values.fillna("").astype(str)):
            unknown = [t for t in split_tags(tags, self.cfg.data.label_sep) if t not in known]
            if unknown:
                raise UserError(f"submission row {i + 2}, column {column!r}: tag {unknown[0]!r} is not one train.csv uses")


class Regression(Target):
    """Continuous values: one output (data.target_col), or one per column of data.label_cols (the classes here), each
    standardised per fold with the training rows' mean and spread. On several columns the metrics average the
    columns' scores (rmse: Kaggle's mean columnwise RMSE)."""

    kind = REGRESSION

    LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.smooth_l1_loss}

    def __init__(self, cfg: Config, classes: list):
        super().__init__(cfg, classes)
        self.load({})  # mean, std, lo, hi: floats for one value, [K] arrays for several (fit, load)
        name = cfg.train.loss
        if name == "auto":  # the loss of the metric: absolute error for MAE, squared error otherwise
            name = "l1" if self.metric.name == "mae" else "mse"
        if name not in self.LOSSES:
            raise UserError(f"train.loss={name} does not fit a {self.kind} target; use mse, l1 or huber")
        self.criterion = self.LOSSES[name]

    @property
    def columns(self):
        return [str(c) for c in self.classes] if self.several else [PREDICTION]

    @property
    def several(self) -> bool:
        return self.kind == REGRESSION and len(self.classes) > 1

    def encode(self, values):
        if self.several:  # rows of values joined by data.with_target
            rows = [str(v).split() for v in values]
            return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(self.classes))
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)

    def strata(self, values):
        v = self.encode(values)
        if v.ndim == 2:  # several values: bins of the row's mean standardised value
            v = ((v - v.mean(axis=0)) / (v.std(axis=0) + 1e-12)).mean(axis=1)
        return quantile_bins(v, self.cfg.cv.folds)

    def fit(self, truth):
        std = np.std(truth, axis=0)
        state = {"mean": np.mean(truth, axis=0), "std": np.where(std > 0, std, 1.0),
                 "min": np.min(truth, axis=0), "max": np.max(truth, axis=0)}
        state = {k: v.tolist() for k, v in state.items()}
        self.load(state)
        return state

    def load(self, state):
        """mean/std standardise; min/max (the training rows' range) bound predictions: a value outside every training
        value is rarely right (a negative age). States from before the range was kept are unbounded."""
        keys = {"mean": 0.0, "std": 1.0, "min": -math.inf, "max": math.inf}
        values = {k: state.get(k, default) for k, default in keys.items()}
        if isinstance(values["mean"], list):
            width = len(values["mean"])
            values = {k: np.broadcast_to(np.asarray(v, np.float32), (width,)) for k, v in values.items()}
        else:
            values = {k: float(v) for k, v in values.items()}
        self.mean, self.std, self.lo, self.hi = values["mean"], values["std"], values["min"], values["max"]
        self._affine = {}

    def affine(self, like: torch.Tensor) -> tuple:
        """(mean, std, min, max) to broadcast over [B, K] outputs: floats, or [K] tensors on the outputs' device."""
        if isinstance(self.mean, float):
            return self.mean, self.std, self.lo, self.hi
        if like.device not in self._affine:
            self._affine[like.device] = tuple(torch.as_tensor(np.array(a), device=like.device)
                                              for a in (self.mean, self.std, self.lo, self.hi))
        return self._affine[like.device]

    def loss(self, logits, y):
        mean, std, _, _ = self.affine(logits)
        z = (y.float().view(len(y), -1) - mean) / std
        return self.criterion(logits.float().view(len(y), -1), z)

    def activate(self, logits):
        mean, std, lo, hi = self.affine(logits)
        return torch.clamp(logits.float() * std + mean, lo, hi)

    def decide(self, outputs, params=None):
        return self.metric_outputs(outputs)

    def metric_outputs(self, outputs):  # raw values, also for ordinal (rmse on grades scores the regression)
        return outputs if self.several else outputs[:, 0]

    def valid_loss(self, truth, outputs):
        return float(np.mean((outputs - truth.reshape(len(truth), -1)) ** 2))

    def submission_values(self, outputs, sample, column, params):
        decided = self.decide(outputs, params)
        return decided[:, self.columns.index(column)] if self.several else decided


class Ordinal(Regression):
    """Ordered grades: regression on the grade value, cut into grades by cut points fitted on OOF (for QWK)."""

    kind = ORDINAL

    def strata(self, values):
        return values.astype(str).to_numpy()

    def default_cuts(self) -> np.ndarray:
        g = np.asarray(self.classes, dtype=np.float64)
        return (g[1:] + g[:-1]) / 2

    def decide(self, outputs, params=None):
        cuts = np.asarray(params["cuts"]) if params and "cuts" in params else self.default_cuts()
        return np.asarray(self.classes, dtype=np.float64)[np.searchsorted(cuts, outputs[:, 0])]

    def confidence(self, outputs):
        """Distance of the predicted value from the nearest cut point, in grades: far from a cut, the grade is sure."""
        cuts = self.default_cuts()
        return np.abs(outputs[:, :1] - cuts[None, :]).min(axis=1) if len(cuts) else np.full(len(outputs), np.inf)

    def fit_params(self, outputs, truth):
        """Cut points that maximise the metric on these rows (Nelder-Mead from the midpoints, kept sorted)."""
        if not self.metric.decisions or len(self.classes) < 2:
            return {}
        from scipy.optimize import minimize

        start = self.default_cuts()
        sign = -1 if self.metric.greater_is_better else 1
        def objective(cuts):
            return sign * self.score(truth, outputs, {"cuts": np.sort(cuts)})
        found = minimize(objective, start, method="Nelder-Mead", options={"maxiter": 400 * len(start), "xatol": 1e-3})
        cuts = np.sort(found.x) if objective(found.x) < objective(start) else start
        return {"cuts": cuts.tolist()}

    def form(self, sample, column):
        """Grades, unless the sample holds fractions: then the unrounded value (a competition scoring it by RMSE)."""
        if fractions(sample[column]):
            return Form(SCORES, f"holds fractions in {column!r} ({shown(sample[column])})")
        return Form(LABELS, f"holds whole numbers in {column!r} ({shown(sample[column])}): grades")

    def submission_values(self, outputs, sample, column, params):
        labels, why = self.writes_labels(sample, column)
        if not labels:
            log.info("submission column %s: unrounded values (%s)", column, why)
            return outputs[:, 0]
        grades = self.decide(outputs, params)
        return np.asarray(self.classes, dtype=object)[np.searchsorted(np.asarray(self.classes, np.float64), grades)]

    def check_values(self, values, column, sample=None):
        super().check_values(values, column)
        labels, why = self.writes_labels(sample, column) if sample is not None else (True, "")
        if not labels:
            return
        known = np.asarray(self.classes, dtype=np.float64)
        off = ~np.isin(pd.to_numeric(values).to_numpy(dtype=np.float64), known)
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise UserError(f"submission row {i + 2}, column {column!r}: {cell(values.iloc[i])} is not a grade train.csv "
                            f"uses{f' ({why})' if why else ''}")


TARGETS: dict[str, type[Target]] = {t.kind: t for t in (Multiclass, Binary, Multilabel, Regression, Ordinal)}


def build_target(cfg: Config, classes: list) -> Target:
    """The target of a (resolved) config; 'auto' here means multiclass, what experiments were before target types."""
    kind = cfg.data.target_type
    return TARGETS[MULTICLASS if kind == "auto" else kind](cfg, classes)


# -- helpers ---------------------------------------------------------------------------------------------
def split_tags(tags, sep: str) -> list[str]:
    if tags is None or (isinstance(tags, float) and math.isnan(tags)):
        return []
    return [t for t in str(tags).split(sep if sep.strip() else None) if t]


def quantile_bins(values: np.ndarray, k: int) -> np.ndarray:
    """Bins of equal counts for stratifying a continuous target: as many as leave >= 2 x K rows per bin, at most 10."""
    n_bins = int(max(1, min(10, len(values) // (2 * k))))
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, values, side="right").astype(str)


def column_form(column: pd.Series, classes: list, name: str) -> Form:
    """What one sample_submission column of a two-way outcome (a binary target, a multilabel 0/1 column) asks for.
    Class names that cannot be probabilities (text, numbers outside [0, 1], whole numbers that are training labels
    other than {0, 1}) ask for labels; fractions for probabilities; 0/1 whole numbers may be either."""
    values = column.dropna()
    numbers = pd.to_numeric(values, errors="coerce")
    seen = shown(values)
    if numbers.isna().any():
        return Form(LABELS, f"holds class names in {name!r} ({seen})")
    if fractions(values):
        return Form(SCORES, f"holds fractions in {name!r} ({seen})")
    if ((numbers < 0) | (numbers > 1)).any():
        return Form(LABELS, f"holds whole numbers outside [0, 1] in {name!r} ({seen})")
    known = names(classes)
    if known and known != {"0", "1"} and names(values) <= known:
        return Form(LABELS, f"holds {seen} in {name!r}, labels train.csv uses")
    return Form(EITHER, f"holds 0/1 whole numbers in {name!r} ({seen})")


def names(values) -> set[str]:
    """Labels as text, whole numbers without their '.0' (a CSV's 1 and 1.0 name one class)."""
    return set(as_names(pd.Series(list(values), dtype=object)))


def as_names(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    whole = np.isfinite(numbers) & (numbers == np.round(numbers))
    out = values.astype(str).to_numpy(dtype=object)
    out[whole] = [str(int(n)) for n in numbers[whole]]
    return pd.Series(out, index=values.index)


def shown(values: pd.Series, k: int = 3) -> str:
    """A few distinct values of a column, for messages."""
    distinct = pd.unique(values.dropna())
    text = ", ".join(str(v) for v in distinct[:k])
    return text + (", ..." if len(distinct) > k else "") if len(distinct) else "nothing"


def cell(value) -> str:
    """One CSV cell for a message: 0.5 or 'yes', not np.float64(0.5)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def fractions(column: pd.Series) -> bool:
    numbers = pd.to_numeric(column.dropna(), errors="coerce")
    return bool(len(numbers) and numbers.notna().all() and not np.allclose(numbers, np.round(numbers)))


def check_labels(values: pd.Series, column: str, classes: list, what: str, why: str = "") -> None:
    """Every value is one of the training labels; the first that is not is named, with what the sample asks for."""
    known = names(classes)
    bad = ~as_names(values).isin(known) | values.isna()
    if not bad.any():
        return
    i = int(np.flatnonzero(bad.to_numpy())[0])
    uses = f"train.csv uses {', '.join(sorted(known)[:5])}{', ...' if len(known) > 5 else ''}"
    reason = f"; {why}" if why else ""
    if fractions(values.iloc[[i]]):
        raise UserError(f"submission row {i + 2}, column {column!r}: {cell(values.iloc[i])} is a probability where "
                        f"a {what} is asked for ({uses}{reason})")
    raise UserError(f"submission row {i + 2} has {what} {cell(values.iloc[i])}, which train.csv never uses (column "
                    f"{column!r}; {uses}{reason})")


def check_probabilities(values: pd.Series, column: str, why: str = "") -> None:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | (numbers < 0) | (numbers > 1)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"submission row {i + 2}, column {column!r}: {cell(values.iloc[i])} is not a probability in "
                        f"[0, 1]" + (f"; {why}" if why else ""))


def submission_column(cfg: Config, sample: pd.DataFrame) -> str:
    """The sample's label column: the only one besides the id, else data.target_col."""
    rest = [c for c in sample.columns if c != cfg.data.id_col]
    return rest[0] if len(rest) == 1 else cfg.data.target_col

