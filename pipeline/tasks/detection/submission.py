"""Detection submissions: one "score x y w h ..." string of boxes per image, in detect.submit_format."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.tasks.detection.boxes import Detections


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
