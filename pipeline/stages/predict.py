"""Stage 3: OOF and test predictions for every trained fold, with TTA; the experiment's CV score.

    pipeline predict --config configs/leaves.yaml --tta d4 [--fold 0] [--weights best|ema|avg]
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from pipeline import checkpoint
from pipeline.averaging import averaged_weights
from pipeline.config import Config
from pipeline.data import build_loader
from pipeline.errors import UserError
from pipeline.files import write_json, write_parquet
from pipeline.folds import Folds, load_folds
from pipeline.loop import infer, pick_device, resolve_precision
from pipeline.recipe import fold_recipe, mixed_recipes, saved_config
from pipeline.rundir import RunDir, best_weights
from pipeline.stages.train import parse_folds
from pipeline.tasks import TASKS, Task, build_task
from pipeline.tracking import build_tracker

log = logging.getLogger(__name__)


def run(cfg: Config, fold: str | int = "all", tta: str | None = None, weights: str | None = None) -> dict:
    """Predict each trained fold, then combine all folds' files into oof.parquet, test.parquet, scores.json."""
    if tta:
        cfg.predict.tta = tta
    if weights:
        cfg.predict.weights = weights
    folds = load_folds(cfg)
    trained = RunDir(cfg.run_dir).folds_with("best.pt", cfg.cv.folds)
    which = parse_folds(fold, cfg.cv.folds)
    missing = [k for k in which if k not in trained]
    if str(fold) != "all" and missing or not trained:
        raise UserError(f"no trained fold {missing or 'at all'} in {cfg.run_dir}; run `pipeline train --fold ...` first")
    run = RunDir(cfg.run_dir)
    mixed_recipes({k: saved_config(run.fold(k)) for k in trained}, cfg)  # says so when folds differ
    test = TASKS[cfg.task].test_table(cfg).rename(columns={cfg.data.id_col: "id"})[["id"]]
    for k in (k for k in which if k in trained):
        predict_fold(fold_recipe(cfg, run.fold(k)), folds, k, test)
    return combine_folds(cfg)


def predict_fold(cfg: Config, folds: Folds, k: int, test: pd.DataFrame) -> None:
    """Fold k's OOF and test predictions with TTA; cfg is the fold's recipe (pipeline.recipe.fold_recipe)."""
    fold = RunDir(cfg.run_dir).fold(k)
    task = build_task(cfg, folds.classes)
    if fold.preprocess.is_file():
        task.load_fold(json.loads(fold.preprocess.read_text()))
    model = task.build_model()
    model.load_state_dict(fold_weights(cfg, task, model, folds, k))
    device = pick_device()
    dtype = resolve_precision(cfg.train.precision, device)
    model.to(device, memory_format=task.memory_format)
    views = task.views(cfg.predict.tta)
    _, valid_rows = folds.split(k)
    valid_loader = build_loader(task.build_dataset(valid_rows, train=False), cfg, False, cfg.predict.batch_size)
    test_loader = build_loader(task.build_dataset(test, train=False), cfg, False, cfg.predict.batch_size)

    oof_views = infer(task, model, valid_loader, device, dtype, views)
    oof = task.merge(list(oof_views))  # mean of probabilities; WBF of boxes
    labels = valid_loader.dataset.labels
    plain, tta = task.evaluate(oof_views[0], labels)["score"], task.evaluate(oof, labels)["score"]
    write_parquet(fold.oof, task.prediction_frame(valid_rows, oof))
    write_parquet(fold.oof_no_tta, task.prediction_frame(valid_rows, oof_views[0]))
    test_views = infer(task, model, test_loader, device, dtype, views)
    write_parquet(fold.test, task.prediction_frame(test, task.merge(list(test_views))))
    log.info("fold %d: OOF %s %.4f with %s TTA (%d views), %.4f without (%+.4f); %s weights",
             k, cfg.train.metric, tta, cfg.predict.tta, len(views), plain, tta - plain, cfg.predict.weights)
    write_json(fold.predict_json, {"score": tta, "score_no_tta": plain, "tta": cfg.predict.tta,
                                   "views": [v.name for v in views], "weights": cfg.predict.weights,
                                   "model": cfg.model.name, "image_size": cfg.image.size})


def fold_weights(cfg: Config, task: Task, model, folds: Folds, k: int) -> dict:
    """best: whichever of raw/EMA validated best; ema: the EMA weights of best.pt; avg: averaged top epochs."""
    choice = cfg.predict.weights
    if choice == "avg":
        return averaged_weights(cfg, task, model, folds, k)
    path = RunDir(cfg.run_dir).fold(k).best
    best = checkpoint.load(path)
    if choice == "ema":
        if best["ema"] is None:
            raise UserError(f"{path} has no EMA weights (trained with train.ema=false); use --weights best")
        return best["ema"]
    return best_weights(best)


def combine_folds(cfg: Config) -> dict:
    """runs/<exp>/oof.parquet (all folds' rows), test.parquet (folds merged) and scores.json."""
    run = RunDir(cfg.run_dir)
    done = [run.fold(k) for k in run.folds_with("predict.json", cfg.cv.folds)]
    oof = pd.concat([pd.read_parquet(f.oof) for f in done], ignore_index=True)
    plain = pd.concat([pd.read_parquet(f.oof_no_tta) for f in done], ignore_index=True)
    tests = [pd.read_parquet(f.test) for f in done]
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
    scores = run.write_predictions(oof, test, scores)
    tracker = build_tracker(cfg, "predict", "predict")
    tracker.summary({k: v for k, v in scores.items() if k != "stamp"})
    tracker.finish()
    if len(done) < cfg.cv.folds:
        log.warning("CV covers folds %s only (%d of %d rows)", [f.k for f in done], len(oof), len(folds.table))
    log.info("CV %s %.4f ± %.4f over %d folds (%.4f without TTA) -> %s", cfg.train.metric, scores["cv"],
             scores["cv_std"], len(done), scores["cv_no_tta"], run.scores)
    return scores


def score_frame(task: Task, frame: pd.DataFrame) -> tuple[float, dict[int, float]]:
    """(score on all rows, score per fold) of an OOF prediction frame."""
    per_fold = {int(k): task.evaluate(task.read_outputs(g), task.targets(g))["score"] for k, g in frame.groupby("fold")}
    return task.evaluate(task.read_outputs(frame), task.targets(frame))["score"], per_fold
