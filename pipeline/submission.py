"""Submission files: decode predictions into the competition's format and check them like Kaggle's scorer.

Labels or per-class probabilities for classification; one "score x y w h ..." string per image for detection.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pipeline.boxes import Detections
from pipeline.config import Config
from pipeline.data import _require_clean_ids, _row_numbers, read_table, require_columns, short
from pipeline.errors import UserError


def read_sample(cfg: Config) -> pd.DataFrame:
    """sample_submission.csv: the id column, unique and non-empty; it fixes the rows, order and columns to submit."""
    path = cfg.data_path("sample_submission")
    sample = read_table(path, "sample_submission", cfg.data.id_col)
    require_columns(sample, path, {"data.id_col": cfg.data.id_col})
    _require_clean_ids(sample, path, cfg.data.id_col)
    return sample


def decode(test: pd.DataFrame, sample: pd.DataFrame, cfg: Config, classes: list) -> pd.DataFrame:
    """Rows in sample_submission order: the top class per id (in the sample's own label column when it has one
    besides the id), or per-class probabilities when the sample has one column per class."""
    id_col = cfg.data.id_col
    class_cols = [str(c) for c in classes]
    probs = in_sample_order(test, sample, cfg)[class_cols]
    out = pd.DataFrame({id_col: sample[id_col].to_numpy()})
    if set(class_cols) <= {str(c) for c in sample.columns}:
        for col in sample.columns[1:]:
            if str(col) in probs:  # other columns are left for check_rows to name
                out[col] = probs[str(col)].to_numpy()
    else:
        column = sample.columns[1] if len(sample.columns) == 2 and sample.columns[0] == id_col else cfg.data.target_col
        out[column] = np.asarray(classes, dtype=object)[probs.to_numpy().argmax(axis=1)]
    return out


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


def validate(sub: pd.DataFrame, sample: pd.DataFrame, classes: list, cfg: Config) -> None:
    """The checks Kaggle's scorer makes on a label or probability submission."""
    check_rows(sub, sample, cfg)
    check_labels(sub, classes, cfg)


def check_rows(sub: pd.DataFrame, sample: pd.DataFrame, cfg: Config) -> None:
    """Same columns, rows and ids in the same order as sample_submission: what every competition checks."""
    where, sample_path = "submission", cfg.data_path("sample_submission")
    check_columns(sub, sample, sample_path)
    if len(sub) != len(sample):
        raise UserError(f"{where} has {len(sub)} rows, sample_submission {len(sample)} ({sample_path})")
    id_col = cfg.data.id_col
    if id_col not in sample.columns:
        raise UserError(f"{sample_path}: column {id_col!r} (config data.id_col) not found; "
                        "set it with --set data.id_col=<column>")
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


def check_labels(sub: pd.DataFrame, classes: list, cfg: Config) -> None:
    """No empty cells; labels that train.csv uses, or probabilities in [0, 1] (one column per class)."""
    where = "submission"
    nan = sub.isna()
    if nan.any().any():
        rows = nan.any(axis=1)
        raise UserError(f"{where} has empty values in {rows.sum()} rows (first: row {np.flatnonzero(rows)[0] + 2}) "
                        f"in column {short(nan.columns[nan.any()][0])}")
    known = {str(c) for c in classes}
    values = sub[[c for c in sub.columns if c != cfg.data.id_col]]
    if len(values.columns) and {str(c) for c in values.columns} <= known:  # one probability column per class
        numbers = values.apply(pd.to_numeric, errors="coerce")
        bad = numbers.isna() | (numbers < 0) | (numbers > 1)
        if bad.any().any():
            i, col = int(np.flatnonzero(bad.any(axis=1))[0]), bad.columns[bad.any()][0]
            raise UserError(f"{where} row {i + 2}, column {short(col)}: {short(values[col].iloc[i])} is not a "
                            "probability in [0, 1]")
        return
    for col in values.columns:
        unknown = ~values[col].astype(str).isin(known)
        if unknown.any():
            i = int(np.flatnonzero(unknown.to_numpy())[0])
            raise UserError(f"{where} row {i + 2} has label {short(values[col].iloc[i])}, which train.csv never uses "
                            f"(column {short(col)})")


def box_fields(template: str) -> list[str]:
    """The field names of detect.submit_format, in order: "{score:.4f} {x:.0f} ..." -> ["score", "x", ...]."""
    return re.findall(r"\{(\w+)", template)


def decode_boxes(detections: list[Detections], ids, cfg: Config, classes: list, column: str) -> pd.DataFrame:
    """One row per id: boxes in pixels of the original image, formatted by detect.submit_format."""
    d = cfg.detect
    strings = []
    for det in detections:
        w, h = det.size
        keep = det.scores >= d.submit_score_thr
        parts = []
        for (x1, y1, x2, y2), score, label in zip(det.boxes[keep] * [w, h, w, h], det.scores[keep], det.labels[keep],
                                                  strict=True):
            parts.append(d.submit_format.format(score=float(score), x=x1, y=y1, w=x2 - x1, h=y2 - y1, x2=x2, y2=y2,
                                                label=classes[label], label_id=int(label)))
        strings.append(" ".join(parts))
    return pd.DataFrame({cfg.data.id_col: list(ids), column: strings})


def check_boxes(sub: pd.DataFrame, cfg: Config) -> None:
    """Every prediction string splits into whole boxes of numbers (an empty string means no boxes)."""
    fields = box_fields(cfg.detect.submit_format)
    column = sub.columns[1]
    for i, text in enumerate(sub[column].fillna("").astype(str)):
        tokens = text.split()
        if len(tokens) % len(fields):
            raise UserError(f"submission row {i + 2}: {len(tokens)} values in {column}, not a multiple of the "
                            f"{len(fields)} fields of detect.submit_format {cfg.detect.submit_format!r}")
        numeric = [t for j, t in enumerate(tokens) if fields[j % len(fields)] != "label"]
        try:
            values = np.asarray(numeric, dtype=np.float64)
        except ValueError:
            raise UserError(f"submission row {i + 2}: {column} holds a value that is not a number") from None
        if not np.isfinite(values).all():
            raise UserError(f"submission row {i + 2}: {column} holds NaN or infinite values")


def parse_boxes(text: str, template: str) -> list[dict]:
    """A prediction string back into boxes: [{"score": .., "x1": .., "y1": .., "x2": .., "y2": .., "label": ..}]."""
    fields = box_fields(template)
    tokens = str(text).split() if isinstance(text, str) else []
    boxes = []
    for j in range(0, len(tokens), len(fields)):
        raw = dict(zip(fields, tokens[j:j + len(fields)], strict=True))
        v = {k: (t if k == "label" else float(t)) for k, t in raw.items()}
        x1, y1 = v.get("x", 0.0), v.get("y", 0.0)
        x2 = v["x2"] if "x2" in v else x1 + v.get("w", 0.0)
        y2 = v["y2"] if "y2" in v else y1 + v.get("h", 0.0)
        boxes.append({"score": v.get("score", 1.0), "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                      "label": v.get("label", v.get("label_id"))})
    return boxes
