"""Stage 3: OOF and test predictions for every trained fold, with TTA; the experiment's CV score.

    pipeline predict --config configs/leaves.yaml --tta d4 [--fold 0] [--weights best|ema|avg]
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd

from pipeline import checkpoint
from pipeline.averaging import averaged_weights
from pipeline.config import Config
from pipeline.data import build_loader
from pipeline.errors import UserError
from pipeline.files import new_stamp, write_json, write_parquet
from pipeline.folds import Folds, load_folds
from pipeline.loop import pick_device, predict, resolve_precision
from pipeline.stages.train import parse_folds
from pipeline.tasks import TASKS, build_task
from pipeline.tracking import build_tracker

log = logging.getLogger(__name__)


def run(cfg: Config, fold: str | int = "all", tta: str | None = None, weights: str | None = None) -> dict:
    """Predict each trained fold, then combine all folds' files into oof.parquet, test.parquet, scores.json."""
    if tta:
        cfg.predict.tta = tta
    if weights:
        cfg.predict.weights = weights
    folds = load_folds(cfg)
    trained = [k for k in range(cfg.cv.folds) if (cfg.run_dir / f"fold{k}" / "best.pt").is_file()]
    which = parse_folds(fold, cfg.cv.folds)
    missing = [k for k in which if k not in trained]
    if str(fold) != "all" and missing or not trained:
        raise UserError(f"no trained fold {missing or 'at all'} in {cfg.run_dir}; run `pipeline train --fold ...` first")
    test = TASKS[cfg.task].test_table(cfg).rename(columns={cfg.data.id_col: "id"})[["id"]]
    for k in (k for k in which if k in trained):
        predict_fold(cfg, folds, k, test)
    return combine_folds(cfg)


def predict_fold(cfg: Config, folds: Folds, k: int, test: pd.DataFrame) -> None:
    fold_dir = cfg.run_dir / f"fold{k}"
    # The fold's own weights replace everything; no need to read a backbone weights file again.
    build_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=False, weights_file=None))
    task = build_task(build_cfg, folds.classes)
    if (fold_dir / "preprocess.json").is_file():
        task.load_fold(json.loads((fold_dir / "preprocess.json").read_text()))
    model = task.build_model()
    model.load_state_dict(fold_weights(cfg, task, model, folds, k))
    device = pick_device()
    dtype = resolve_precision(cfg.train.precision, device)
    model.to(device, memory_format=task.memory_format)
    views = task.views(cfg.predict.tta)
    _, valid_rows = folds.split(k)
    valid_loader = build_loader(task.build_dataset(valid_rows, train=False), cfg, False, cfg.predict.batch_size)
    test_loader = build_loader(task.build_dataset(test, train=False), cfg, False, cfg.predict.batch_size)

    oof_views = predict(task, model, valid_loader, device, dtype, views)
    oof = task.merge(list(oof_views))  # mean of probabilities; WBF of boxes
    labels = valid_loader.dataset.labels
    plain, tta = task.evaluate(oof_views[0], labels)["score"], task.evaluate(oof, labels)["score"]
    write_parquet(fold_dir / "oof.parquet", task.prediction_frame(valid_rows, oof))
    write_parquet(fold_dir / "oof_no_tta.parquet", task.prediction_frame(valid_rows, oof_views[0]))
    test_views = predict(task, model, test_loader, device, dtype, views)
    write_parquet(fold_dir / "test.parquet", task.prediction_frame(test, task.merge(list(test_views))))
    log.info("fold %d: OOF %s %.4f with %s TTA (%d views), %.4f without (%+.4f); %s weights",
             k, cfg.train.metric, tta, cfg.predict.tta, len(views), plain, tta - plain, cfg.predict.weights)
    write_json(fold_dir / "predict.json", {"score": tta, "score_no_tta": plain, "tta": cfg.predict.tta,
                                           "views": [v.name for v in views], "weights": cfg.predict.weights})


def fold_weights(cfg: Config, task, model, folds: Folds, k: int) -> dict:
    """best: whichever of raw/EMA validated best; ema: the EMA weights of best.pt; avg: averaged top epochs."""
    fold_dir = cfg.run_dir / f"fold{k}"
    choice = cfg.predict.weights
    if choice == "avg":
        return averaged_weights(cfg, task, model, folds, k)
    best = checkpoint.load(fold_dir / "best.pt")
    if choice == "ema":
        if best["ema"] is None:
            raise UserError(f"{fold_dir / 'best.pt'} has no EMA weights (trained with train.ema=false); use --weights best")
        return best["ema"]
    return best["ema"] if best["progress"]["best_source"] == "ema" else best["model"]


def combine_folds(cfg: Config) -> dict:
    """runs/<exp>/oof.parquet (all folds' rows), test.parquet (folds merged) and scores.json."""
    run = cfg.run_dir
    done = [k for k in range(cfg.cv.folds) if (run / f"fold{k}" / "predict.json").is_file()]
    oof = pd.concat([pd.read_parquet(run / f"fold{k}" / "oof.parquet") for k in done], ignore_index=True)
    plain = pd.concat([pd.read_parquet(run / f"fold{k}" / "oof_no_tta.parquet") for k in done], ignore_index=True)
    tests = [pd.read_parquet(run / f"fold{k}" / "test.parquet") for k in done]
    folds = load_folds(cfg)
    task = build_task(cfg, folds.classes)
    test = task.prediction_frame(tests[0][["id"]], task.merge([task.read_outputs(t) for t in tests]))
    cv, per_fold = score_frame(task, oof)
    scores = {
        "metric": cfg.train.metric,
        "cv": cv,  # on all OOF rows, not a mean of folds
        "cv_std": float(np.std(list(per_fold.values()))),
        "folds": per_fold,
        "cv_no_tta": score_frame(task, plain)[0],
        "tta": cfg.predict.tta,
        "weights": cfg.predict.weights,
        "rows": len(oof),
    }
    scores["stamp"] = stamp = new_stamp()
    write_parquet(run / "oof.parquet", oof, stamp)
    write_parquet(run / "test.parquet", test, stamp)
    write_json(run / "scores.json", scores)  # last: what it describes is on disk
    tracker = build_tracker(cfg, "predict", "predict")
    tracker.summary({k: v for k, v in scores.items() if k != "stamp"})
    tracker.finish()
    if len(done) < cfg.cv.folds:
        log.warning("CV covers folds %s only (%d of %d rows)", done, len(oof), len(folds.table))
    log.info("CV %s %.4f ± %.4f over %d folds (%.4f without TTA) -> %s", cfg.train.metric, scores["cv"],
             scores["cv_std"], len(done), scores["cv_no_tta"], run / "scores.json")
    return scores


def score_frame(task, frame: pd.DataFrame) -> tuple[float, dict[int, float]]:
    """(score on all rows, score per fold) of an OOF prediction frame."""
    per_fold = {int(k): task.evaluate(task.read_outputs(g), task.targets(g))["score"] for k, g in frame.groupby("fold")}
    return task.evaluate(task.read_outputs(frame), task.targets(frame))["score"], per_fold
