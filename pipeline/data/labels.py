"""The training target column: which target type `data.target_type: auto` takes it for (and why), its checks,
its label set, and what the submission will hold (labels or scores, as sample_submission shows) with the metric
that follows. Shared by image classification and sequences (series and text).

    kind, classes = label_set(cfg, train_table, path)   # logs "target type binary: ..."
    settle_target(cfg, kind, classes)                    # logs "submission: labels 1, 2 in 'label' (...)"
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.data.folds import resolve_target
from pipeline.data.tables import _row_numbers, label_cols_kind, short
from pipeline.scoring.metrics import BINARY, DEFAULTS, MULTICLASS, MULTILABEL, ORDINAL, REGRESSION, VALUES
from pipeline.scoring.targets import (
    LABELS,
    SCORES,
    TARGETS,
    Form,
    build_target,
    fractions,
    split_tags,
    submission_column,
)

log = logging.getLogger(__name__)
MANY_VALUES = 30  # whole-number targets with more distinct values than this (and few rows per value) are regression
# An auto train.metric where the submission's form says more than the target type: labels of a binary target are
# scored by accuracy (Titanic), per-class probability columns by log-loss, fractions per label by column-wise AUC
# (Jigsaw), unrounded grades by RMSE; everything else takes the target type's default (metrics.DEFAULTS).
FORM_METRICS = {(BINARY, LABELS): "accuracy", (MULTICLASS, SCORES): "logloss", (MULTILABEL, SCORES): "roc_auc",
                (ORDINAL, SCORES): "rmse"}


def settle_target(cfg: Config, kind: str, classes: list) -> None:
    """Settle the target type and an auto train.metric in cfg (what config.yaml and folds.json record), the metric
    following what sample_submission asks for, and log one line: what the submission will hold and why."""
    sample = _sample(cfg)
    found = sample_form(cfg, kind, classes, sample)
    chosen = cfg.data.submission_form if cfg.data.submission_form != "auto" else found[1].kind if found else None
    auto = cfg.train.metric == "auto"
    resolve_target(cfg, kind, FORM_METRICS.get((kind, chosen), DEFAULTS[kind]))
    if found is None:
        return
    column = found[0]
    labels, why = build_target(cfg, classes).writes_labels(sample, column)
    what = ({MULTILABEL: "tags", ORDINAL: "grades"}.get(kind, "labels") if labels else
            "values" if kind in VALUES else "probabilities")
    if labels and kind == BINARY:
        what += f" {', '.join(map(str, classes))}"
    log.info("submission: %s in %r (%s); train.metric %s%s", what, column, why, cfg.train.metric,
             " (auto)" if auto else "")


def sample_form(cfg: Config, kind: str, classes: list, sample: pd.DataFrame | None) -> tuple[str, Form] | None:
    """(column, what it asks for) of sample_submission: its one value column, or the first class column of a
    per-class layout; None without a sample."""
    if sample is None or cfg.data.id_col not in sample.columns:
        return None
    rest = [str(c) for c in sample.columns if c != cfg.data.id_col]
    per_class = len(rest) > 1 and set(rest) <= {str(c) for c in classes}
    column = rest[0] if per_class else submission_column(cfg, sample)
    if column not in sample.columns:
        return None
    probe = TARGETS[kind](cfg, classes)  # the metric named, or the type's default: form() does not depend on it
    return column, probe.form(sample, column)


def infer_target_type(values: pd.Series, sample: pd.DataFrame | None, cfg: Config) -> tuple[str, str]:
    """(target type, the reason) from the target column and what sample_submission asks for."""
    col = cfg.data.target_col
    column = submission_column(cfg, sample) if sample is not None else None
    asked = sample[column] if column in getattr(sample, "columns", ()) else None
    asks_fraction = asked is not None and fractions(asked)
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        distinct = np.unique(numbers)
        whole = np.allclose(distinct, np.round(distinct))
        if len(distinct) == 2 and whole:
            return BINARY, f"{col} holds two values ({short(distinct[0])}, {short(distinct[1])})"
        if not whole:
            return REGRESSION, f"{col} holds fractional values"
        if asks_fraction:
            return REGRESSION, f"{col} holds whole numbers and sample_submission asks for fractions"
        if len(distinct) > MANY_VALUES and len(distinct) > len(values) / 20:
            return REGRESSION, f"{col} holds {len(distinct)} distinct numbers"
        return MULTICLASS, (f"{col} holds {len(distinct)} whole-number classes (set data.target_type=ordinal for "
                            "ordered grades, or regression)")
    text = values.astype(str)
    tags = text.map(lambda v: split_tags(v, cfg.data.label_sep))
    vocabulary = {t for row in tags for t in row}
    if (tags.map(len) > 1).any() and len(vocabulary) < text.nunique():
        return MULTILABEL, (f"{col} holds {text.nunique()} combinations of {len(vocabulary)} tags separated by "
                            f"{cfg.data.label_sep!r}")
    if text.nunique() == 2 and asks_fraction:
        return BINARY, f"{col} holds two labels and sample_submission asks for a probability"
    return MULTICLASS, f"{col} holds {text.nunique()} labels"


def _label_cols_type(cfg: Config, table: pd.DataFrame) -> tuple[str, str]:
    kind, n = label_cols_kind(table, cfg), len(cfg.data.label_cols)
    return kind, f"data.label_cols names {n} " + ("columns of values" if kind == REGRESSION else "0/1 label columns")


def label_set(cfg: Config, table: pd.DataFrame, path: Path) -> tuple[str, list]:
    """The resolved target type and its classes (labels, tags or grades; [] for regression), every value checked,
    and sample_submission's columns checked against it."""
    sample = _sample(cfg)
    kind, classes = _label_set(cfg, table, path, sample)
    check_sample_columns(cfg, kind, classes, sample)
    return kind, classes


def check_sample_columns(cfg: Config, kind: str, classes: list, sample: pd.DataFrame | None) -> None:
    """sample_submission holds the id and one column (labels, tags, a probability, a value), or one column per class
    or label (multiclass, multilabel) or per value (data.label_cols of a regression): anything else fits no target
    type, and is refused before any training."""
    if sample is None or cfg.data.id_col not in sample.columns:
        return  # submit names what is missing
    rest = [str(c) for c in sample.columns if c != cfg.data.id_col]
    known = {str(c) for c in classes}
    several_values = kind == REGRESSION and bool(classes)  # data.label_cols values: every one a column
    if several_values:
        if set(rest) == known:
            return
    elif len(rest) == 1 or (kind in (MULTICLASS, MULTILABEL) and len(rest) > 1 and set(rest) <= known):
        return
    names = ", ".join(map(str, classes[:5])) + (", ..." if len(classes) > 5 else "")
    what = (f"one column per class or label ({names}) or " if classes and kind in (MULTICLASS, MULTILABEL) else "")
    raise UserError(f"{cfg.data_path('sample_submission')}: columns {', '.join(rest) or '(none)'} besides "
                    f"{cfg.data.id_col!r} fit no {kind} target; it needs " +
                    (f"one column per value ({names})" if several_values else f"{what}one column to predict"))


def _label_set(cfg: Config, table: pd.DataFrame, path: Path, sample: pd.DataFrame | None) -> tuple[str, list]:
    d = cfg.data
    values = table[d.target_col]
    kind = d.target_type
    if kind == "auto":
        kind, why = infer_target_type(values, sample, cfg) if not d.label_cols else _label_cols_type(cfg, table)
        log.info("target type %s: %s (data.target_type=auto; set it to override)", kind, why)
    if d.label_cols and kind == REGRESSION:  # with_target checked the values
        return kind, list(d.label_cols) if len(d.label_cols) > 1 else []
    if kind in (REGRESSION, ORDINAL):
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() | ~np.isfinite(numbers.fillna(0))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}: column {d.target_col!r} must hold numbers for a {kind} target, row {i + 2} holds "
                            f"{short(values.iloc[i])} (rows {_row_numbers(bad)}); fix these rows or set data.target_type")
        if kind == REGRESSION:
            return kind, []
        return kind, _classes(cfg, sorted(np.unique(numbers).tolist()), path, values)
    if kind == MULTILABEL:
        require_tags(cfg, table, path)
        tags = values.map(lambda v: split_tags(v, d.label_sep))
        return kind, _classes(cfg, sorted({t for row in tags for t in row}), path, values, tags)
    labels = sorted(values.unique().tolist())
    if kind == BINARY and len(labels) != 2 and not d.classes:
        raise UserError(f"{path}: a binary target needs two labels, column {d.target_col!r} holds {len(labels)} "
                        f"({', '.join(short(v) for v in labels[:5])}); set data.target_type=multiclass or fix the column")
    return kind, _classes(cfg, labels, path, values) if d.classes else labels


def _classes(cfg: Config, found: list, path: Path, values: pd.Series, tags: pd.Series | None = None) -> list:
    """data.classes when set (every value must be one of them), else the values found."""
    if not cfg.data.classes:
        return found
    known = {str(c) for c in cfg.data.classes}
    unknown = [v for v in found if str(v) not in known]
    if unknown:
        rows = (tags.map(lambda row: any(t not in known for t in row)) if tags is not None else
                ~values.astype(str).isin(known))
        raise UserError(f"{path}: {short(unknown[0])} in column {cfg.data.target_col!r} is not in data.classes "
                        f"(rows {_row_numbers(rows)}); add it to data.classes or fix these rows")
    return list(cfg.data.classes)


def _sample(cfg: Config) -> pd.DataFrame | None:
    path = cfg.data_path("sample_submission")
    return pd.read_csv(path, nrows=1000) if path.is_file() else None


def require_tags(cfg: Config, table: pd.DataFrame, path: Path) -> None:
    """data.min_tags: every training row of a multilabel target holds at least that many tags."""
    if cfg.data.min_tags <= 0:
        return
    few = table[cfg.data.target_col].map(lambda v: len(split_tags(v, cfg.data.label_sep))) < cfg.data.min_tags
    if few.any():
        raise UserError(f"{path}: rows {_row_numbers(few)} have fewer than data.min_tags={cfg.data.min_tags} tags in "
                        f"column {cfg.data.target_col!r}; tag them, or lower data.min_tags")
