"""Stage 4: combine experiments' OOF and test predictions into a new run directory.

    pipeline ensemble leaves-effnet leaves-convnext --method weighted --name blend1

Members must share one folds file; weights and meta-models are fitted on OOF rows only. A fitted blend's
oof.parquet holds each fold blended as fitted on the other folds, so its CV (scores.json "cv") is the held-out
score and a blend cannot flatter itself; the in-sample score is kept as "cv_in_sample".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.core.config import Config, check_name, dump_yaml, load_run_config
from pipeline.core.errors import UserError
from pipeline.core.files import copy_file, write_json, write_text
from pipeline.engine.scores import describe_fitted, fitted_score_frame, like_test_score
from pipeline.runs.provenance import collect_meta
from pipeline.runs.rundir import RunDir, resolve
from pipeline.runs.tracking import build_tracker, remember
from pipeline.scoring.blend import Blend
from pipeline.scoring.noise import describe
from pipeline.tasks import Task, build_task

log = logging.getLogger(__name__)
METHODS = ("mean", "weighted", "rank", "geometric", "stack", "wbf")  # wbf: detection, = weighted


@dataclass
class Member:
    name: str
    run: RunDir
    cfg: Config
    keys: pd.DataFrame  # the OOF rows' columns that are not predictions (id, target, fold...); sorted by id
    test_ids: pd.Series  # sorted
    classes: list[str]  # output columns of the parquet files
    cv: float


def load_member(ref: str, runs_dir: str) -> Member:
    """A member by experiment name (runs/<name>) or by run-directory path; its predictions stay on disk."""
    run = resolve(ref, runs_dir)
    for path in (run.folds_csv, run.oof, run.test, run.scores):
        if not path.is_file():
            raise UserError(f"ensemble member {ref}: {path} missing; run `pipeline predict` for it first")
    cfg = load_run_config(run.path)
    scores = run.read_scores("oof", "test")
    outputs = [c for c in pq.read_schema(run.test).names if c != "id"]
    key_columns = [c for c in pq.read_schema(run.oof).names if c not in outputs]  # id, target, fold, truths
    keys = pd.read_parquet(run.oof, columns=key_columns).sort_values("id", ignore_index=True)
    test_ids = pd.read_parquet(run.test, columns=["id"])["id"].sort_values(ignore_index=True)
    return Member(ref, run, cfg, keys, test_ids, outputs, scores["cv"])


class Outputs(Sequence):
    """The members' outputs for one part (oof or test), read from disk one member at a time when iterated:
    a mean over 20 members x 100k rows x 176 classes holds one member and the running sum, not twenty."""

    def __init__(self, task: Task, members: list[Member], part: str):
        self.task, self.paths = task, [getattr(m.run, part) for m in members]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self.paths):
            raise IndexError(i)
        return self.task.read_outputs(pd.read_parquet(self.paths[i]).sort_values("id", ignore_index=True))


def check_compatible(members: list[Member]) -> list[str]:
    """Same folds, same OOF and test ids, same classes; returns the class columns."""
    first = members[0]
    folds = pd.read_csv(first.run.folds_csv, dtype={"id": str})[["id", "fold"]]
    for m in members[1:]:
        other = pd.read_csv(m.run.folds_csv, dtype={"id": str})[["id", "fold"]]
        if not folds.equals(other):
            raise UserError(f"{m.name} was trained on different folds than {first.name} ({m.run.folds_csv}); "
                            "an ensemble needs one folds file (same data and CV settings: cv.folds, cv.strategy, cv.seed ...)")
        if m.classes != first.classes:
            raise UserError(f"{m.name} predicts other classes than {first.name}")
        if not m.keys["id"].equals(first.keys["id"]):
            raise UserError(f"{m.name} and {first.name} have different oof ids; predict all folds of both")
        if not m.test_ids.equals(first.test_ids):
            raise UserError(f"{m.name} and {first.name} have different test ids; predict all folds of both")
    return first.classes


def run(refs: list[str], method: str = "weighted", name: str | None = None, runs_dir: str = "runs") -> dict:
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if len(refs) < 2:
        raise UserError("an ensemble needs at least two experiments")
    members = [load_member(r, runs_dir) for r in refs]
    check_compatible(members)
    name = ensemble_dir(name, method, members).name
    base = members[0]
    task = build_task(base.cfg, base.run.classes())
    folds = base.keys["fold"].to_numpy()
    blend = task.blend(method, Outputs(task, members, "oof"), Outputs(task, members, "test"),
                       task.targets(base.keys), folds)
    oof = task.prediction_frame(base.keys, blend.oof)
    test = task.prediction_frame(base.test_ids.to_frame(), blend.test)
    cv, per_fold, fitted = fitted_score_frame(task, oof)
    fitted.update(like_test_score(base.cfg, task, oof, base.run))  # the members' folds, so the first's drift
    metric = task.metric.name
    scores = {"metric": metric, "cv": cv, "cv_std": float(np.std(list(per_fold.values()))), "folds": per_fold,
              "cv_held_out": blend.held_out, "method": method, "members": {m.name: m.cv for m in members},
              "rows": len(oof), **blend.params, **fitted}
    scores = write_ensemble(members, name, method, blend, oof, test, scores)
    if "gain" in blend.params:  # a fitted blend against the mean (pipeline.scoring.noise)
        log.info(describe(blend.params, len(oof)))
    if line := describe_fitted(fitted):
        log.info(line)
    log.info("members: %s", ", ".join(f"{m.name} {metric} {m.cv:.4f}" for m in members))
    in_sample = blend.params.get("cv_in_sample")
    log.info("%s ensemble %s: CV %.4f%s -> %s", method, name, cv,
             " (each fold blended as fitted on the other folds" +
             (f"; in-sample {in_sample:.4f})" if in_sample is not None else ")") if blend.held_out is not None else "",
             base.run.path.parent / name)
    return scores


def ensemble_dir(name: str | None, method: str, members: list[Member]) -> RunDir:
    """runs/<name>/ beside the first member (default name: ens-<method>-<members>), refused where it would overwrite
    a member or a run that is not an ensemble; rerunning an ensemble's name replaces that ensemble."""
    name = check_name(name or f"ens-{method}-" + "-".join(m.run.name for m in members), "--name")
    for m in members:
        if m.run.name == name:
            raise UserError(f"--name {name}: that is the name of the member {m.run.path}; give the ensemble its own "
                            "--name")
    return RunDir(members[0].run.path.parent / name).claim("ensemble", "give the ensemble another --name "
                                                              "(an ensemble never overwrites another run)")


def write_ensemble(members: list[Member], name: str, method: str, blend: Blend, oof: pd.DataFrame,
                   test: pd.DataFrame, scores: dict) -> dict:
    """runs/<name>/ beside the first member: members.json first, then config, meta, folds, weights.json, the
    predictions and scores.json (last: what it describes is on disk)."""
    base = members[0]
    cfg = load_run_config(base.run.path)  # pointed at the first member's folder, where it is now
    cfg.name = name  # checked by ensemble_dir: the ensemble sits beside its first member
    run = RunDir(cfg.run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    # first, so that even a killed run leaves a folder that says ensemble (RunDir.kind): each member's folder and
    # predictions (scores.json stamp), for RunDir.member_runs to find them again and never another run of that name
    write_json(run.members, [{"name": m.name, "run": str(m.run.path.resolve()), "cv": m.cv, "stamp": m.run.stamp()}
                             for m in members])
    write_text(run.config, dump_yaml(cfg))
    write_json(run.meta, {**collect_meta(cfg, "ensemble"), "members": [m.name for m in members]})
    copy_file(base.run.folds_json, run.folds_json)
    copy_file(base.run.folds_csv, run.folds_csv)
    write_json(run.weights, {"method": method, **blend.params, "weights": None if blend.weights is None else
                             {m.name: float(w) for m, w in zip(members, blend.weights, strict=True)},
                             "stacker": blend.stacker})  # what pipeline infer applies to another test set
    scores = run.write_predictions(oof, test, scores)
    tracker = build_tracker(cfg, "ensemble", "ensemble")
    tracker.summary({k: v for k, v in scores.items() if k != "stamp"})
    tracker.artifact(f"{name}-predictions", "predictions", [run.oof, run.test, run.scores, run.weights],
                     uses=[f"{m.name}-predictions" for m in members])
    remember(run.path, "ensemble", tracker)
    tracker.finish()
    return scores
