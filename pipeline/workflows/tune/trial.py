"""One trial: the drawn values set on the experiment's config, `pipeline train` on the folds searched, each
validated epoch told to the pruner, and the trial's value: the OOF score over those folds (rows no trained model
saw), and with `--objective score,infer` the seconds to predict 1,000 test rows.

A trial is an ordinary experiment in runs/<exp>/tune/t<number>/: `pipeline train`, `predict` and `report` read it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import optuna
import pandas as pd

from pipeline.core.config import Config, load_config, with_values
from pipeline.core.errors import UserError
from pipeline.core.files import copy_file
from pipeline.data.folds import load_folds, run_config
from pipeline.engine.loop import EpochWatch, Pruned
from pipeline.engine.scores import score_frame
from pipeline.runs.rundir import RunDir
from pipeline.runs.tracking import build_tracker
from pipeline.tasks import build_task
from pipeline.workflows.tune.space import Param
from pipeline.workflows.tune.study import worker_tag

log = logging.getLogger(__name__)


class TrialPruned(Pruned):
    """Pruned, with the score the trial was stopped at (its W&B summary's `score`, as in trials.csv)."""

    def __init__(self, message: str, score: float):
        super().__init__(message)
        self.score = score


class PruningWatch(EpochWatch):
    """Each validated epoch's score reported to the trial, fold after fold, at step = the epochs trained so far
    (1 after the first: Hyperband's resource, whose first rung is at min_resource = 1); the pruner's verdict stops
    the fold (its checkpoints stay). A multi-objective trial (Optuna prunes single-objective studies only) records
    the epochs it trained and reports nothing."""

    def __init__(self, trial: optuna.Trial, offset: int, prune: bool = True):
        self.trial, self.offset, self.prune = trial, offset, prune

    def epoch(self, epoch: int, score: float) -> None:
        step = self.offset + epoch + 1
        self.trial.set_user_attr("epochs", step)
        if not self.prune or not math.isfinite(score):
            return
        self.trial.report(score, step)
        if self.trial.should_prune():
            raise TrialPruned(f"trial {self.trial.number} pruned after epoch {epoch + 1} ({score:.4f})", score)


@dataclass
class Objective:
    """What Optuna calls per trial. `base` is the experiment's config (folds settled); `config`/`overrides` rebuild
    it per trial, so every trial is the same command with its values set."""

    config: str | None
    overrides: list[str]
    base: Config
    space: list[Param]
    folds: list[int]
    objectives: list[str]
    group: str

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        trial.set_user_attr("worker", worker_tag())
        values = {}
        for param in self.space:
            values |= param.suggest(trial)
        trial.set_user_attr("values", values)
        cfg = self.trial_config(trial.number, values)
        log.info("trial %d: %s", trial.number, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                        for k, v in values.items()))
        began = time.perf_counter()
        try:
            result = self.train(trial, cfg)
        except TrialPruned as e:
            log.info("%s", e)
            self.record(trial, cfg, began, {"state": "pruned", "pruned": True, "score": e.score})
            raise optuna.TrialPruned(str(e)) from None
        except UserError as e:  # a NaN loss at a high LR: this trial failed, the search goes on
            trial.set_user_attr("error", str(e).splitlines()[0])
            log.warning("trial %d failed: %s", trial.number, e)
            self.record(trial, cfg, began, {"state": "failed", "pruned": False})
            raise
        self.record(trial, cfg, began, {"state": "complete", "pruned": False, "score": result[0],
                                        **({"infer_s_per_1000": result[1]} if len(result) > 1 else {})})
        log.info("trial %d: %s", trial.number, " ".join(f"{o} {v:.4f}" for o, v in zip(self.objectives, result,
                                                                                       strict=True)))
        return result[0] if len(result) == 1 else result

    @staticmethod
    def record(trial: optuna.Trial, cfg: Config, began: float, summary: dict) -> None:
        """The trial's minutes in the study, and its own W&B run (job type trial): its config, its fate. Started
        after the folds' runs have finished: W&B keeps one live run per process."""
        trial.set_user_attr("minutes", round((time.perf_counter() - began) / 60, 2))
        tracker = build_tracker(cfg, "trial", "trial")
        tracker.summary(summary)
        tracker.finish()

    def trial_config(self, number: int, values: dict) -> Config:
        root = self.base.run_dir / "tune"
        cfg = with_values(load_config(self.config, self.overrides), {
            "name": f"t{number}", "runs_dir": str(root), "tracking.group": self.group, "train.keep_top": 0,
            "data.cache_dir": str(self.base.cache_dir),  # decoded once for every trial
            "cluster.executor": "local",  # a trial's folds train inside its worker (which may itself be a Ray task)
            **values})
        ours, theirs = RunDir(self.base.run_dir), RunDir(cfg.run_dir)
        for source, target in ((ours.folds_json, theirs.folds_json), (ours.folds_csv, theirs.folds_csv)):
            if not target.is_file():  # the experiment's folds, folds.csv last as prepare writes them
                copy_file(source, target)
        return cfg

    def train(self, trial: optuna.Trial, cfg: Config) -> tuple[float, ...]:
        from pipeline.stages import train

        for i, k in enumerate(self.folds):
            train.run(cfg, fold=k, watch=PruningWatch(trial, i * cfg.train.epochs, prune=len(self.objectives) == 1))
        folds = load_folds(cfg)
        oof = pd.concat([pd.read_parquet(RunDir(cfg.run_dir).fold(k).oof) for k in self.folds])
        score = score_frame(build_task(cfg, folds.classes), oof)[0]
        if "infer" not in self.objectives:
            return (score,)
        return score, infer_seconds(cfg, self.folds[0])


def infer_seconds(cfg: Config, k: int) -> float:
    """Seconds to predict 1,000 test rows with the trial's submission: fold k's weights and TTA views timed as
    export times them for `pipeline infer` (each view after a warm-up, on export's test rows), times the cv.folds
    models a submission averages."""
    from pipeline.engine.fold_model import from_run
    from pipeline.stages import export, predict

    # the best epoch's weights: the time does not depend on which weights, and `avg` needs keep_top epochs a short
    # (or pruned) trial may not have
    predict.run(dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, weights="best")), fold=k,
                combine=False)
    rows = export.timing_rows(cfg)
    if rows is None:
        raise UserError("--objective score,infer needs the test files to time prediction on (data.test_csv)")
    per_row = sum(export.view_seconds(from_run(run_config(RunDir(cfg.run_dir)), k), rows).values())
    return per_row * 1000 * cfg.cv.folds
