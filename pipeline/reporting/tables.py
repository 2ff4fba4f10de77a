"""The OOF predictions as tables, per target type: what the predict run logs to W&B beside its CV.

Classes (multiclass, binary, ordinal grades): `oof/per_class` (precision, recall, F1, support) and
`oof/confusion` (true, predicted, count; the non-zero cells). Multilabel: `oof/per_label`. Values (regression,
ordinal): `oof/per_column`. No matplotlib here: predict imports this on every run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import sklearn.metrics as skm

from pipeline.reporting.analysis import confusion_frame, per_class_report


def oof_tables(truth: np.ndarray, outputs: np.ndarray, target) -> dict[str, pd.DataFrame]:
    """The tables of the target's kind (pipeline.scoring.targets), keyed by their W&B names."""
    return TABLES[target.kind](truth, outputs, target)


def class_tables(truth: np.ndarray, pred: np.ndarray, names: Sequence) -> dict[str, pd.DataFrame]:
    """Per-class scores and the confusion cells of class indices `truth` against `pred`."""
    per_class = per_class_report(truth, pred, names).iloc[:len(names)].rename_axis("class").reset_index()
    cells = confusion_frame(truth, pred, names).stack().rename("count").reset_index()
    return {"oof/per_class": per_class, "oof/confusion": cells[cells["count"] > 0].reset_index(drop=True)}


def per_label(truth: np.ndarray, decided: np.ndarray, outputs: np.ndarray, names: Sequence) -> pd.DataFrame:
    """Multilabel: support, predicted count, F1 (decided tags) and ROC AUC (scores) per label, worst F1 first."""
    rows = []
    for j, name in enumerate(names):
        t = truth[:, j]
        rows.append({"label": name, "support": int(t.sum()), "predicted": int(decided[:, j].sum()),
                     "f1": skm.f1_score(t, decided[:, j], zero_division=0),
                     "roc_auc": skm.roc_auc_score(t, outputs[:, j]) if 0 < t.sum() < len(t) else np.nan})
    return pd.DataFrame(rows).sort_values("f1", kind="stable").reset_index(drop=True)


def per_column(truth: np.ndarray, outputs: np.ndarray, names: Sequence) -> pd.DataFrame:
    """Regression: RMSE, MAE and the means of truth and prediction per value column."""
    truth, outputs = truth.reshape(len(truth), -1), outputs.reshape(len(outputs), -1)
    return pd.DataFrame([{"column": name, "rmse": float(np.sqrt(np.mean((outputs[:, j] - truth[:, j]) ** 2))),
                          "mae": float(np.mean(np.abs(outputs[:, j] - truth[:, j]))),
                          "mean_true": float(truth[:, j].mean()), "mean_predicted": float(outputs[:, j].mean())}
                         for j, name in enumerate(names)])


def _multiclass(truth, outputs, target):
    return class_tables(truth, outputs.argmax(axis=1), target.classes)


def _binary(truth, outputs, target):  # at 0.5: the fitted threshold is a decision of submit's, not of the model's
    return class_tables(np.asarray(truth).astype(int), (outputs[:, 0] >= 0.5).astype(int), target.classes)


def _multilabel(truth, outputs, target):
    return {"oof/per_label": per_label(truth, target.decide(outputs), outputs, target.columns)}


def _regression(truth, outputs, target):
    return {"oof/per_column": per_column(truth, outputs, target.columns)}


def _ordinal(truth, outputs, target):  # grades by the default cut points (midpoints), as the report shows them
    grades = np.asarray(target.classes, dtype=np.float64)
    t, d = (np.searchsorted(grades, np.asarray(a, dtype=np.float64).ravel()) for a in (truth, target.decide(outputs)))
    return {**_regression(truth, outputs, target), **class_tables(t, d, [str(g) for g in target.classes])}


TABLES = {"multiclass": _multiclass, "binary": _binary, "multilabel": _multilabel, "regression": _regression,
          "ordinal": _ordinal}
