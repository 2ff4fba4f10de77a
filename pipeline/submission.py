"""Submission files: decode predictions into the competition's format and check them like Kaggle's scorer.

Labels or per-class probabilities for classification; one "score x y w h ..." string per image for detection.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pipeline.boxes import Detections
from pipeline.config import Config
from pipeline.errors import UserError


def decode(test: pd.DataFrame, sample: pd.DataFrame, cfg: Config, classes: list) -> pd.DataFrame:
    """Rows in sample_submission order: the top class per id, or per-class probabilities when the
    sample submission has one column per class."""
    id_col = cfg.data.id_col
    class_cols = [str(c) for c in classes]
    probs = in_sample_order(test, sample, id_col)[class_cols]
    out = pd.DataFrame({id_col: sample[id_col].to_numpy()})
    if set(class_cols) <= {str(c) for c in sample.columns}:
        for col in sample.columns[1:]:
            out[col] = probs[str(col)].to_numpy()
    else:
        out[cfg.data.target_col] = np.asarray(classes, dtype=object)[probs.to_numpy().argmax(axis=1)]
    return out


def in_sample_order(test: pd.DataFrame, sample: pd.DataFrame, id_col: str) -> pd.DataFrame:
    """Prediction rows (indexed by id) in sample_submission's order; every sample id must have one."""
    by_id = test.set_index("id")
    missing = pd.Index(sample[id_col]).difference(by_id.index)
    if len(missing):
        raise UserError(f"{len(missing)} ids of sample_submission have no prediction (e.g. {missing[0]!r}); "
                        "does test.csv list the same ids? rerun `pipeline predict`")
    return by_id.loc[sample[id_col]]


def validate(sub: pd.DataFrame, sample: pd.DataFrame, classes: list, cfg: Config) -> None:
    """The checks Kaggle's scorer makes on a label or probability submission."""
    check_rows(sub, sample, cfg)
    check_labels(sub, classes, cfg)


def check_rows(sub: pd.DataFrame, sample: pd.DataFrame, cfg: Config) -> None:
    """Same columns, rows and ids in the same order as sample_submission: what every competition checks."""
    where = "submission"
    if list(sub.columns) != list(sample.columns):
        raise UserError(f"{where} columns {list(sub.columns)} differ from sample_submission's {list(sample.columns)}")
    if len(sub) != len(sample):
        raise UserError(f"{where} has {len(sub)} rows, sample_submission {len(sample)}")
    id_col = cfg.data.id_col
    mismatch = np.flatnonzero(sub[id_col].astype(str).to_numpy() != sample[id_col].astype(str).to_numpy())
    if len(mismatch):
        i = mismatch[0]
        what = ("ids in a different order than" if set(sub[id_col]) == set(sample[id_col])
                else "ids that are not in")
        raise UserError(f"{where} has {what} sample_submission: row {i + 2} is {sub[id_col].iloc[i]!r}, "
                        f"expected {sample[id_col].iloc[i]!r}")


def check_labels(sub: pd.DataFrame, classes: list, cfg: Config) -> None:
    """No empty cells; labels that train.csv uses, or probabilities in [0, 1]."""
    where = "submission"
    nan = sub.isna().any(axis=1).to_numpy()
    if nan.any():
        raise UserError(f"{where} has empty values in {nan.sum()} rows (first: row {np.flatnonzero(nan)[0] + 2})")
    target = cfg.data.target_col
    if target in sub.columns and target != cfg.data.id_col:
        unknown = ~sub[target].astype(str).isin({str(c) for c in classes})
        if unknown.any():
            i = np.flatnonzero(unknown.to_numpy())[0]
            raise UserError(f"{where} row {i + 2} has label {sub[target].iloc[i]!r}, which train.csv never uses")
    else:
        values = sub.iloc[:, 1:].to_numpy(dtype=np.float64)
        if ((values < 0) | (values > 1)).any():
            raise UserError(f"{where} has probabilities outside [0, 1]")


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
