"""Adversarial validation: does the test set look like the training set? (`pipeline prepare`, `pipeline drift EXP`)

A gradient-boosted classifier learns train (0) vs test (1) from cheap per-sample features, cross-validated; its
out-of-fold AUC says how separable the two are. Near 0.5 the test set looks like train and CV should track the
leaderboard; well above it (cv.adversarial_warn) something differs (image size or format, brightness, series
length, text length) and a CV on random folds may not. Reported: the AUC, the features that separate most (each
one's own AUC, so a reader sees *what* differs), and every training row's out-of-fold probability of being a test
row (adversarial.csv, most test-like first), the rows to validate on when the test set is different.

Features per task (each task's `drift_features`): images: width, height, aspect, file bytes, format, channel means
and spreads of a 32-px thumbnail; series: length, missing share, channel means and spreads; texts: characters,
words, distinct-word share, digit, upper-case and punctuation shares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from pipeline.core.files import write_csv, write_json
from pipeline.runs.rundir import RunDir

log = logging.getLogger(__name__)
FORMATS = {"JPEG": 0, "PNG": 1, "WEBP": 2, "TIFF": 3, "BMP": 4, "GIF": 5}


@dataclass
class Drift:
    auc: float  # out-of-fold AUC of train-vs-test
    features: dict[str, float]  # each feature's own AUC (as far from 0.5 as it gets), most separating first
    test_likeness: pd.DataFrame  # id, p_test: each training row's out-of-fold probability of being a test row
    rows: tuple[int, int]  # (train, test)

    def line(self, warn: float) -> str:
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(self.features.items())[:3])
        verdict = "test looks like train" if self.auc < warn else \
            f"above {warn:.2f}: the test set differs from train, and CV may not track the leaderboard"
        return (f"adversarial validation AUC {self.auc:.2f} ({self.rows[0]} train vs {self.rows[1]} test rows, "
                f"{len(self.features)} features; {verdict}); most separating: {top}")


def adversarial_validation(train: pd.DataFrame, test: pd.DataFrame, ids, folds: int = 5, seed: int = 0) -> Drift:
    """Cross-validated train-vs-test AUC on the feature tables (same columns), and per training row its
    out-of-fold probability of being a test row."""
    x = pd.concat([train, test], ignore_index=True).astype(np.float64)
    y = np.r_[np.zeros(len(train)), np.ones(len(test))]
    p = np.zeros(len(x))
    splits = min(folds, int(min(len(train), len(test))))
    if splits < 2:
        return Drift(float("nan"), {}, pd.DataFrame({"id": list(ids), "p_test": np.nan}), (len(train), len(test)))
    # one OpenMP thread: the trees are small, and spinning threads beside torch's cost 10-100x on a busy machine
    with threadpool_limits(1, user_api="openmp"):
        for fit, held in StratifiedKFold(splits, shuffle=True, random_state=seed).split(x, y):
            # early stopping on a held-out tenth (a few dozen small trees) where there are rows enough to hold out;
            # no class weights: AUC ranks, and weighted binning was 95% of the time
            model = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15,
                                                   early_stopping=len(fit) >= 200, random_state=seed)
            model.fit(x.iloc[fit], y[fit])
            p[held] = model.predict_proba(x.iloc[held])[:, 1]
    auc = float(roc_auc_score(y, p))
    own = {}
    for column in x.columns:
        values = x[column].fillna(x[column].median() if x[column].notna().any() else 0)
        a = roc_auc_score(y, values) if values.nunique() > 1 else 0.5
        own[column] = float(max(a, 1 - a))
    features = dict(sorted(own.items(), key=lambda kv: -kv[1]))
    likeness = pd.DataFrame({"id": list(ids), "p_test": p[: len(train)]}).sort_values("p_test", ascending=False,
                                                                                      kind="stable")
    return Drift(auc, features, likeness.reset_index(drop=True), (len(train), len(test)))


def write(drift: Drift, run: RunDir, warn: float) -> None:
    """adversarial.csv (training rows, most test-like first) and adversarial.json (AUC, features) in the run."""
    write_csv(run.adversarial_csv, drift.test_likeness)
    write_json(run.adversarial_json, {"auc": drift.auc, "warn_above": warn, "rows": list(drift.rows),
                                      "features": drift.features})


def report(drift: Drift, warn: float) -> None:
    if drift.auc != drift.auc:  # NaN: too few rows on one side
        log.info("adversarial validation skipped: %d train and %d test rows", *drift.rows)
    elif drift.auc >= warn:
        log.warning(drift.line(warn))
    else:
        log.info(drift.line(warn))


def check(cfg, task, samples: pd.DataFrame, test: pd.DataFrame) -> Drift | None:
    """Adversarial validation of a competition's train and test tables (prepare's samples and test rows):
    logged, and written beside the folds; None where the task has no features."""
    train_x = task.drift_features(cfg, samples, "train")
    if train_x is None or not len(test):
        return None
    drift = adversarial_validation(train_x, task.drift_features(cfg, test, "test"), samples[cfg.data.id_col],
                                   seed=cfg.cv.seed)
    report(drift, cfg.cv.adversarial_warn)
    write(drift, RunDir(cfg.run_dir), cfg.cv.adversarial_warn)
    return drift


def like_test_rows(adversarial_csv: Path, share: float) -> set[str] | None:
    """The ids of the `share` most test-like training rows (adversarial.csv, most test-like first); None where
    cv.holdout_like_test is off or prepare wrote no adversarial validation."""
    if share <= 0 or not adversarial_csv.is_file():
        return None
    likeness = pd.read_csv(adversarial_csv, dtype={"id": str})
    return set(likeness["id"].head(max(1, round(share * len(likeness)))))


# -- features ---------------------------------------------------------------------------------------------------
def image_features(paths: list[Path]) -> pd.DataFrame:
    """Size, format, bytes and a 32-px thumbnail's channel statistics per image (JPEGs decode at 1/8 scale)."""
    from PIL import Image

    rows = []
    for path in paths:
        with Image.open(path) as img:
            width, height, fmt = img.size[0], img.size[1], img.format
            img.draft("RGB", (64, 64))  # JPEG: decode at a fraction of the size; others ignore it
            thumb = np.asarray(img.convert("RGB").resize((32, 32)), dtype=np.float32) / 255
        rows.append({"width": width, "height": height, "aspect": width / max(height, 1),
                     "file_kb": path.stat().st_size / 1024, "format": FORMATS.get(fmt, len(FORMATS)),
                     **{f"mean_{c}": float(thumb[..., i].mean()) for i, c in enumerate("rgb")},
                     **{f"std_{c}": float(thumb[..., i].std()) for i, c in enumerate("rgb")},
                     "brightness": float(thumb.mean())})
    return pd.DataFrame(rows)


def series_features(series: list[np.ndarray], channels: int = 8) -> pd.DataFrame:
    """Length, missing share and the first channels' means and spreads per series ([steps, channels])."""
    rows = []
    for s in series:
        s = np.asarray(s, dtype=np.float64)
        row = {"length": len(s), "missing": float(np.isnan(s).mean()) if s.size else 0.0}
        for c in range(min(channels, s.shape[1] if s.ndim == 2 else 1)):
            v = s[:, c] if s.ndim == 2 else s
            row[f"mean_{c}"], row[f"std_{c}"] = float(np.nanmean(v)) if v.size else 0.0, \
                float(np.nanstd(v)) if v.size else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def text_features(texts) -> pd.DataFrame:
    """Characters, words, distinct-word share, digit, upper-case and punctuation shares per text."""
    rows = []
    for t in texts:
        t = " ".join(t) if isinstance(t, tuple) else str(t)
        words = t.split()
        n = max(len(t), 1)
        rows.append({"chars": len(t), "words": len(words), "distinct_words": len(set(words)) / max(len(words), 1),
                     "digits": sum(c.isdigit() for c in t) / n, "upper": sum(c.isupper() for c in t) / n,
                     "punctuation": sum(not c.isalnum() and not c.isspace() for c in t) / n})
    return pd.DataFrame(rows)
