"""Stage 3: OOF and test predictions for every trained fold, with TTA; the experiment's CV score.

    pipeline predict --config configs/leaves.yaml --tta d4 [--fold 0|all|full] [--weights best|ema|avg]

A full-data refit (`train --fold full`, runs/<exp>/full/) predicts the test rows only, with the views most folds
used, and its test predictions join the folds' mean as one more model (predict.full_refit). It has no validation
rows, so no OOF and no CV of its own: the CV stays the K folds' OOF score, and scores.json says so.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import Config, with_values
from pipeline.core.errors import UserError
from pipeline.core.files import write_json, write_parquet
from pipeline.core.precision import configure_backends
from pipeline.data.folds import Folds, load_folds
from pipeline.data.tables import build_loader
from pipeline.engine.averaging import fold_weights
from pipeline.engine.fold_model import FoldModel
from pipeline.engine.loop import evaluate, infer, pick_device, resolve_precision
from pipeline.engine.progress import ProgressSpec
from pipeline.engine.scores import describe_fitted, fitted_score_frame, like_test_score
from pipeline.runs import checkpoint
from pipeline.runs.executor import NO_EVENTS, Events, Job, build_executor, shared_paths
from pipeline.runs.recipe import fold_recipe, mixed_recipes, saved_config
from pipeline.runs.rundir import FULL, FULL_REFIT_NOTE, RunDir, best_weights, parse_folds
from pipeline.runs.tracking import build_tracker, remember
from pipeline.scoring.tta import View, choose_views
from pipeline.tasks import TASKS, Task, build_task

log = logging.getLogger(__name__)
# wherever the refit is shown (predict's log, scores.json, the report, an export's manifest)


def run(cfg: Config, fold: str | int = "all", tta: str | None = None, weights: str | None = None, gpus: int = 1,
        combine: bool = True) -> dict:
    """Predict each trained fold (and a finished full-data refit), then combine all folds' files into oof.parquet,
    test.parquet, scores.json. On Ray (cluster.executor, or gpus > 1: that many at once on this machine) each fold is
    a task of its own; combine=False leaves the combining to whoever runs them."""
    if tta:
        cfg.predict.tta = tta
    if weights:
        cfg.predict.weights = weights
    folds = load_folds(cfg)
    configure_backends(pick_device(), cfg.train.deterministic)  # TF32 and cuDNN autotuning on CUDA; nothing on CPU
    run = RunDir(cfg.run_dir)
    todo, with_full = folds_to_predict(cfg, run, fold, gpus)
    if gpus > 1 or cfg.cluster.executor == "ray":
        run_shards(cfg, [*todo, *([FULL] if with_full else [])], gpus)
        return combine_folds(cfg) if combine else {}
    mixed_recipes({k: saved_config(run.fold(k)) for k in run.folds_with("best.pt", cfg.cv.folds)}, cfg)
    test = TASKS[cfg.task].test_table(cfg).rename(columns={cfg.data.id_col: "id"})[["id"]]
    if cfg.predict.tta != "search":  # one fold in memory at a time
        for k in todo:
            write_fold(infer_fold(fold_recipe(cfg, run.fold(k)), folds, k, test))
    else:
        done = {k: infer_fold(fold_recipe(cfg, run.fold(k)), folds, k, test) for k in todo}
        first = done[todo[0]]
        chosen = choose_views({k: (p.oof_views, p.labels) for k, p in done.items()}, [v.name for v in first.views],
                              first.task.merge, first.task.evaluate, first.task.metric)
        for k, p in done.items():
            write_fold(p, chosen[k])
    if with_full:
        predict_full(cfg, folds, test)
    return combine_folds(cfg) if combine else {}


def folds_to_predict(cfg: Config, run: RunDir, fold: str | int, gpus: int) -> tuple[list[int], bool]:
    """(trained folds asked for, whether the full-data refit is): --fold all takes every trained fold and a finished
    refit (predict.full_refit); a fold or refit asked for by name must be trained, and tta=search needs them all."""
    refit = cfg.predict.full_refit and refit_finished(run)
    parts = str(fold).split(",")
    with_full = refit if str(fold) == "all" else FULL in parts
    if with_full and not refit:
        raise UserError(f"no finished full-data refit in {run.full.path}" + ("" if cfg.predict.full_refit else
                        " to predict (predict.full_refit=false)") + "; run `pipeline train --fold full` first")
    trained = run.folds_with("best.pt", cfg.cv.folds)
    which = [k for part in parts if part != FULL for k in parse_folds(part, cfg.cv.folds)]
    missing = [k for k in which if k not in trained]
    if str(fold) != "all" and missing or not trained and not with_full:
        raise UserError(f"no trained fold {missing or 'at all'} in {cfg.run_dir}; run `pipeline train --fold ...` first")
    if cfg.predict.tta == "search" and (str(fold) != "all" or len(trained) < 2):
        raise UserError("predict.tta=search chooses each fold's views on the other folds' OOF rows: train at least "
                        "two folds and predict them together (--fold all)")
    if cfg.predict.tta == "search" and (gpus > 1 or cfg.cluster.executor == "ray"):
        raise UserError("predict.tta=search chooses views across folds in one process; predict without --gpus and "
                        "--on ray")
    return [k for k in which if k in trained], with_full


def run_shards(cfg: Config, items: list, gpus: int) -> None:
    """Each fold (and the refit) predicted by a Ray task of its own: `pipeline predict --fold k --no-combine` in
    effect, on whichever node has a free GPU; returns when all have finished, or names the one that failed."""
    executor = build_executor(cfg.cluster, parallel=max(gpus, 2))  # a Ray executor, whatever the config says
    cfg = shared_paths(with_values(cfg, {"cluster.executor": "local"}))  # inside its task, a shard predicts here
    executor.check_shared(cfg.run_dir, [cfg.data.root])
    executor.run([Job(f"predict {k}", predict_shard, (cfg, str(k))) for k in items])


def predict_shard(cfg: Config, fold: str, events: Events = NO_EVENTS) -> dict:
    run(cfg, fold=fold, combine=False)
    return {"state": "predicted"}


@dataclass
class FoldPrediction:
    """One fold's outputs per TTA view, before views are merged and written."""

    cfg: Config  # the fold's recipe
    task: Task
    k: int
    valid_rows: pd.DataFrame
    test: pd.DataFrame
    labels: Any  # the validation rows' truths, as task.evaluate takes them
    views: list[View]
    oof_views: list  # per view: outputs for valid_rows
    test_views: list  # per view: outputs for test
    weights: dict  # which weights were used (predict.weights=auto chooses), and the scores it chose by


def infer_fold(cfg: Config, folds: Folds, k: int, test: pd.DataFrame) -> FoldPrediction:
    """Fold k's OOF and test outputs for every TTA view (predict.tta; search: every view the task allows);
    cfg is the fold's recipe (pipeline.runs.recipe.fold_recipe)."""
    fold = RunDir(cfg.run_dir).fold(k)
    task = build_task(cfg, folds.classes)
    if fold.preprocess.is_file():
        task.load_fold(json.loads(fold.preprocess.read_text()))
    model = task.build_model()
    device = pick_device()
    dtype = resolve_precision(cfg.train.precision, device)
    views = task.views("all" if cfg.predict.tta == "search" else cfg.predict.tta)
    _, valid_rows = folds.split(k)
    valid_loader = build_loader(task.build_dataset(valid_rows, train=False), cfg, False, cfg.predict.batch_size)
    test_loader = build_loader(task.build_dataset(test, train=False), cfg, False, cfg.predict.batch_size)
    weights, used = choose_weights(cfg, task, model, folds, k, valid_loader)
    model.load_state_dict(weights)
    model.to(device, memory_format=task.memory_format)
    each = f"x {len(views)} view{'s' if len(views) > 1 else ''}"  # every view of a batch is in one step
    oof_views = list(infer(task, model, valid_loader, device, dtype, views,
                           ProgressSpec.of(f"fold {k} OOF {each}", cfg.tracking)))
    test_views = list(infer(task, model, test_loader, device, dtype, views,
                            ProgressSpec.of(f"fold {k} test {each}", cfg.tracking)))
    return FoldPrediction(cfg, task, k, valid_rows, test, valid_loader.dataset.labels, views, oof_views, test_views,
                          used)


def choose_weights(cfg: Config, task: Task, model, folds: Folds, k: int, valid_loader) -> tuple[dict, dict]:
    """The fold's inference weights and what was chosen. For avg and auto, the averaged weights are scored against
    the best epoch on the fold's validation rows (no TTA): an average that loses is said (avg) or not used (auto)."""
    choice = cfg.predict.weights
    if choice not in ("avg", "auto"):
        return fold_weights(cfg, task, model, folds, k, choice), {"weights_used": choice}
    device = pick_device()
    dtype = resolve_precision(cfg.train.precision, device)
    scores, candidates = {}, {"best": fold_weights(cfg, task, model, folds, k, "best"),
                              "avg": fold_weights(cfg, task, model, folds, k, "avg")}
    for name, weights in candidates.items():
        model.load_state_dict(weights)
        scores[name] = evaluate(task, model.to(device, memory_format=task.memory_format), valid_loader, device,
                                dtype, ProgressSpec.of(f"fold {k} {name} weights", cfg.tracking))["score"]
    loses = task.metric.better(scores["best"], scores["avg"])
    used = "best" if choice == "auto" and loses else "avg"
    if loses:
        log.warning("fold %d: averaged weights score %.4f on the validation rows, the best epoch %.4f%s", k,
                    scores["avg"], scores["best"], "; using the best epoch (weights=auto)" if used == "best" else
                    "; predict.weights=auto would use the best epoch")
    return candidates[used], {"weights_used": used, "score_avg_no_tta": scores["avg"],
                              "score_best_no_tta": scores["best"]}


def write_fold(p: FoldPrediction, chosen: list[int] | None = None) -> None:
    """fold{k}/oof.parquet, oof_no_tta.parquet, test.parquet and predict.json: the chosen views merged (all)."""
    cfg, task, fold = p.cfg, p.task, RunDir(p.cfg.run_dir).fold(p.k)
    chosen = list(range(len(p.views))) if chosen is None else chosen
    oof = task.merge([p.oof_views[i] for i in chosen])  # mean of probabilities; WBF of boxes
    plain, tta = task.evaluate(p.oof_views[0], p.labels)["score"], task.evaluate(oof, p.labels)["score"]
    write_parquet(fold.oof, task.prediction_frame(p.valid_rows, oof))
    write_parquet(fold.oof_no_tta, task.prediction_frame(p.valid_rows, p.oof_views[0]))
    write_parquet(fold.test, task.prediction_frame(p.test, task.merge([p.test_views[i] for i in chosen])))
    names = [p.views[i].name for i in chosen]
    record = {"score": tta, "score_no_tta": plain, "tta": cfg.predict.tta, "views": names,
              "weights": cfg.predict.weights, **p.weights, "model": cfg.model.name, "image_size": cfg.image.size}
    if cfg.predict.tta == "search":  # for reference: every candidate view averaged, on this fold's own rows
        record["searched"] = [v.name for v in p.views]
        record["score_all_views"] = task.evaluate(task.merge(p.oof_views), p.labels)["score"]
    log.info("fold %d: OOF %s %.4f with %s TTA (%s), %.4f without (%+.4f); %s weights", p.k, cfg.train.metric, tta,
             cfg.predict.tta, ", ".join(names), plain, tta - plain, cfg.predict.weights)
    write_json(fold.predict_json, record)


def refit_finished(run: RunDir) -> bool:
    """Whether runs/<exp>/full/ holds a finished full-data refit; a half-trained one is said and left out."""
    if not run.full.best.is_file():
        return False
    if checkpoint.load(run.full.best, mmap=True)["progress"]["done"]:
        return True
    log.warning("the full-data refit in %s is not finished: its test predictions are left out until `pipeline train "
                "--fold full` completes it", run.full.path)
    return False


def predict_full(cfg: Config, folds: Folds, test: pd.DataFrame) -> None:
    """full/test.parquet and full/predict.json: the full-data refit on the test rows, with the TTA views most folds
    used (their predict.json), and the weights it trained to keep (raw or EMA, as most folds picked)."""
    run = RunDir(cfg.run_dir)
    full, recipe = run.full, fold_recipe(cfg, run.full)
    task = build_task(recipe, folds.classes)
    if full.preprocess.is_file():
        task.load_fold(json.loads(full.preprocess.read_text()))
    spec = "all" if recipe.predict.tta == "search" else recipe.predict.tta
    used = Counter(tuple(json.loads(run.fold(k).predict_json.read_text())["views"])
                   for k in run.folds_with("predict.json", cfg.cv.folds))
    names = used.most_common(1)[0][0] if used else [v.name for v in task.views(spec)]
    views = [v for v in task.views(spec) if v.name in names]
    best = checkpoint.load(full.best)
    model = task.build_model()
    model.load_state_dict(best_weights(best))
    # views merged, as write_fold merges a fold's
    outputs = FoldModel(recipe, task, model, views).predict(test, progress="full-data refit test")
    write_parquet(full.test, task.prediction_frame(test, outputs))
    progress = best["progress"]
    write_json(full.predict_json, {"full_refit": True, "score": None, "tta": recipe.predict.tta,
                                   "views": [v.name for v in views], "weights": "best", "weights_used": "best",
                                   "source": progress["best_source"], "epochs": progress["epoch"] + 1,
                                   "model": recipe.model.name, "image_size": recipe.image.size})
    log.info("full-data refit: %d test rows with %s TTA (%s), %s weights after %d epochs -> %s; no CV of its own "
             "(no validation rows)", len(test), recipe.predict.tta, ", ".join(v.name for v in views),
             progress["best_source"], progress["epoch"] + 1, full.test)


def combine_folds(cfg: Config) -> dict:
    """runs/<exp>/oof.parquet (all folds' rows), test.parquet (folds merged) and scores.json."""
    run = RunDir(cfg.run_dir)
    done = [run.fold(k) for k in run.folds_with("predict.json", cfg.cv.folds)]
    oof = pd.concat([pd.read_parquet(f.oof) for f in done], ignore_index=True)
    plain = pd.concat([pd.read_parquet(f.oof_no_tta) for f in done], ignore_index=True)
    tests = [pd.read_parquet(f.test) for f in done]
    refit = run.full if cfg.predict.full_refit and run.full.predict_json.is_file() and run.full.test.is_file() \
        else None
    if refit:  # one more model in the test mean; the OOF (and so the CV) stays the K folds'
        tests.append(pd.read_parquet(refit.test))
    folds = load_folds(cfg)
    task = build_task(cfg, folds.classes)
    test = task.prediction_frame(tests[0][["id"]], task.merge([task.read_outputs(t) for t in tests]))
    cv, per_fold, fitted = fitted_score_frame(task, oof)
    scores = {
        "metric": cfg.train.metric,
        "cv": cv,  # on all OOF rows, not a mean of folds; thresholds/cut points fitted on the other folds
        "cv_std": float(np.std(list(per_fold.values()))),
        "folds": per_fold,
        "cv_no_tta": fitted_score_frame(task, plain)[0],
        "tta": cfg.predict.tta,
        "weights": cfg.predict.weights,
        "rows": len(oof),
        **fitted,  # decisions (applied by submit), cv_fitted_in_sample, cv_default_decisions
    }
    scores.update(like_test_score(cfg, task, oof, run))
    if refit:
        record = json.loads(refit.predict_json.read_text())
        scores["test_models"] = [f.k for f in done] + [FULL]
        scores["full_refit"] = {"epochs": record["epochs"], "weights": record["source"], "views": record["views"],
                                "note": FULL_REFIT_NOTE}
    scores = run.write_predictions(oof, test, scores)
    tracker = build_tracker(cfg, "predict", "predict")
    tracker.summary({k: v for k, v in scores.items() if k != "stamp"})
    tracker.media({}, task.oof_tables(oof))
    tracker.artifact(f"{cfg.name}-predictions", "predictions", [run.oof, run.test, run.scores])
    remember(run.path, "predict", tracker)
    tracker.finish()
    if len(done) < cfg.cv.folds:
        log.warning("CV covers folds %s only (%d of %d rows)", [f.k for f in done], len(oof), len(folds.table))
    log.info("CV %s %.4f ± %.4f over %d folds (%.4f without TTA) -> %s", cfg.train.metric, scores["cv"],
             scores["cv_std"], len(done), scores["cv_no_tta"], run.scores)
    if line := describe_fitted(fitted):
        log.info(line)
    if refit:
        log.info("test predictions: the %d folds and the %s", len(done), FULL_REFIT_NOTE)
    return scores
