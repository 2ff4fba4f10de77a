"""Submission files: read sample_submission, put predictions in its order, check them like Kaggle's scorer.

Labels or per-class probabilities here (classification and sequences); prediction strings of boxes are
detection's own (pipeline/tasks/detection/submission.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.data.tables import _require_clean_ids, _row_numbers, read_table, require_columns, short
from pipeline.scoring.targets import Multiclass, Target, submission_column


def read_sample(cfg: Config) -> pd.DataFrame:
    """sample_submission.csv: the id column, unique and non-empty; it fixes the rows, order and columns to submit."""
    path = cfg.data_path("sample_submission")
    key, id_col = sample_key(cfg)
    sample = read_table(path, "sample_submission", id_col)
    require_columns(sample, path, {key: id_col})
    _require_clean_ids(sample, path, id_col)
    return sample


def sample_key(cfg: Config) -> tuple[str, str]:
    """(config key, column) of sample_submission's ids: data.sample_id_col where set, else data.id_col."""
    return ("data.sample_id_col", cfg.data.sample_id_col) if cfg.data.sample_id_col else ("data.id_col", cfg.data.id_col)


def decode(test: pd.DataFrame, sample: pd.DataFrame, cfg: Config, target: Target | list,
           params: dict | None = None) -> pd.DataFrame:
    """Rows in sample_submission order, in its format: one column per class or label when the sample has them
    (probabilities, or 0/1 tags for a decision metric), else one column of labels, tags, probabilities or values as
    the target type and the sample ask (pipeline.scoring.targets). params: thresholds or cut points fitted on OOF."""
    target = _as_target(target, cfg)
    id_col, params = cfg.data.id_col, params or {}
    outputs = in_sample_order(test, sample, cfg)[target.columns].to_numpy(dtype=np.float64)
    out = pd.DataFrame({id_col: sample[id_col].to_numpy()})
    value_cols = [c for c in sample.columns if c != id_col]
    if len(target.columns) > 1 and set(target.columns) <= {str(c) for c in value_cols}:
        for col in value_cols:
            if str(col) in target.columns:  # other columns are left for check_rows to name
                out[col] = target.submission_values(outputs, sample, str(col), params)
    else:
        column = submission_column(cfg, sample)
        out[column] = target.submission_values(outputs, sample, column, params)
    return out


def _as_target(target: Target | list, cfg: Config) -> Target:
    """A class list means multiclass (what submissions were before target types)."""
    return target if isinstance(target, Target) else Multiclass(cfg, target)


def in_sample_order(test: pd.DataFrame, sample: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Prediction rows (indexed by id) in sample_submission's order; every sample id must have one."""
    by_id = test.set_index("id")
    missing = ~sample[cfg.data.id_col].isin(by_id.index)
    if missing.any():
        first = short(sample.loc[missing, cfg.data.id_col].iloc[0])
        raise UserError(f"{missing.sum()} ids of sample_submission have no prediction "
                        f"({cfg.data_path('sample_submission')} rows {_row_numbers(missing)}; first {first}); "
                        "sample_submission and test.csv must list the same ids: fix the files, then rerun `pipeline predict`")
    return by_id.loc[sample[cfg.data.id_col]]


def validate(sub: pd.DataFrame, sample: pd.DataFrame, target: Target | list, cfg: Config) -> None:
    """The checks Kaggle's scorer makes on a submission of labels, tags, probabilities or values."""
    check_rows(sub, sample, cfg)
    check_values(sub, target, cfg, sample)


def check_rows(sub: pd.DataFrame, sample: pd.DataFrame, cfg: Config) -> None:
    """Same columns, rows and ids in the same order as sample_submission: what every competition checks."""
    where, sample_path = "submission", cfg.data_path("sample_submission")
    check_columns(sub, sample, sample_path)
    if len(sub) != len(sample):
        raise UserError(f"{where} has {len(sub)} rows, sample_submission {len(sample)} ({sample_path})")
    key, id_col = sample_key(cfg)
    if id_col not in sample.columns:
        raise UserError(f"{sample_path}: column {id_col!r} (config {key}) not found; "
                        f"set it with --set {key}=<column>")
    mismatch = np.flatnonzero(sub[id_col].astype(str).to_numpy() != sample[id_col].astype(str).to_numpy())
    if len(mismatch):
        i = mismatch[0]
        what = ("ids in a different order than" if set(sub[id_col]) == set(sample[id_col])
                else "ids that are not in")
        raise UserError(f"{where} has {what} sample_submission: row {i + 2} is {short(sub[id_col].iloc[i])}, "
                        f"expected {short(sample[id_col].iloc[i])} ({sample_path})")


def check_columns(sub: pd.DataFrame, sample: pd.DataFrame, sample_path) -> None:
    """The submission's columns are the sample's, in its order; a missing or extra one is named."""
    if list(sub.columns) == list(sample.columns):
        return
    missing = [short(c) for c in sample.columns if c not in sub.columns]
    extra = [short(c) for c in sub.columns if c not in sample.columns]
    problems = ([f"missing column {', '.join(missing)}"] if missing else []) + \
               ([f"extra column {', '.join(extra)}"] if extra else [])
    raise UserError(f"submission columns {list(sub.columns)} differ from sample_submission's {list(sample.columns)} "
                    f"({sample_path}): {'; '.join(problems) or 'same columns, another order'}; a label submission has "
                    "the id and one label column, a probability one the id and one column per class train.csv uses")


def check_values(sub: pd.DataFrame, target: Target | list, cfg: Config, sample: pd.DataFrame | None = None) -> None:
    """No empty cells; then each value column as its target type checks it, in the form the sample asks for (known
    labels and tags where it shows labels, probabilities in [0, 1] where it shows fractions, finite numbers)."""
    target = _as_target(target, cfg)
    nan = sub.isna()
    if target.kind == "multilabel" and not cfg.data.min_tags:  # a row may have no tag: an empty cell
        nan = nan.drop(columns=[c for c in sub.columns if str(c) not in target.columns and c != cfg.data.id_col])
    if nan.any().any():
        rows = nan.any(axis=1)
        raise UserError(f"submission has empty values in {rows.sum()} rows (first: row {np.flatnonzero(rows)[0] + 2}) "
                        f"in column {short(nan.columns[nan.any()][0])}")
    for col in sub.columns:
        if col != cfg.data.id_col:
            target.check_values(sub[col].reset_index(drop=True), str(col), sample)


def score_against_solution(submission: Path, solution: Path, cfg: Config | None = None) -> float:
    """Accuracy of a label submission on the answers Kaggle would keep private (the demos' solution.csv)."""
    id_col = cfg.data.id_col if cfg else "image"
    target = cfg.data.target_col if cfg else "label"
    sub, sol = pd.read_csv(submission), pd.read_csv(solution)
    merged = sol.merge(sub, on=id_col, suffixes=("_true", "_pred"), validate="one_to_one")
    return float((merged[f"{target}_true"].astype(str) == merged[f"{target}_pred"].astype(str)).mean())
