"""`pipeline distill TEACHER --config student.yaml`: one model trained to predict like an ensemble, fold by fold.

    pipeline distill blend --config configs/leaves-student.yaml [--alpha 0.5] [--test]

Fold k of the student learns, beside the labels, the predictions of fold k's teachers only: each member's fold-k
model (trained without fold k's validation rows) on fold k's training rows, blended as the ensemble blends but
with its weights climbed on the OOF rows outside fold k (a stack: its meta-model fitted without fold k). Nothing that saw fold k's validation rows or their labels
shapes fold k's student, so its OOF and CV are as honest as any experiment's. With --test, the test rows join
training on fold k's teachers' test predictions alone. The student is an ordinary experiment: predict, ensemble,
export. Targets are written first, per fold (fold{k}/teacher.parquet), so `pipeline train --config
runs/<student>/config.yaml --fold 3` trains (or resumes) a fold on another machine.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.files import parquet_stamp, write_parquet
from pipeline.data.folds import Folds, load_folds, run_config
from pipeline.engine.fold_model import from_run
from pipeline.engine.training_rows import TEACHER_FILE
from pipeline.runs.rundir import RunDir, resolve
from pipeline.stages import predict, prepare, train
from pipeline.tasks import TASKS, Task, build_task

log = logging.getLogger(__name__)


def run(teacher_ref: str, cfg: Config, runs_dir: str = "runs", alpha: float | None = None,
        test: bool | None = None) -> dict:
    teacher = resolve(teacher_ref, runs_dir)
    members = teacher_members(teacher, runs_dir)
    if not all(TASKS[c.task].learns_soft_targets for c in (cfg, run_config(members[0]))):  # before any training
        raise UserError("distill trains on soft class probabilities or values; detection ensembles fuse boxes")
    for run in (teacher, *members):
        if cfg.name == run.name or cfg.run_dir.resolve() == run.path.resolve():
            role = "the teacher" if run is teacher else f"a member of the teacher {teacher.name}"
            raise UserError(f"the student needs its own name: {run.path} is {role}; set name: in its config or "
                            "--set name=...")
    RunDir(cfg.run_dir).claim("student", "give the student another name: in its config or --set name=... "
                              "(pipeline distill never overwrites another run)")
    cfg.distill.teacher = str(teacher.path)
    cfg.distill.alpha = cfg.distill.alpha if alpha is None else alpha
    cfg.distill.test = cfg.distill.test if test is None else test
    if not 0 <= cfg.distill.alpha <= 1:
        raise UserError(f"distill.alpha={cfg.distill.alpha}: the hard label's share of the target, between 0 and 1")
    cfg.cv.folds_file = str(teacher.folds_csv)  # the teacher's folds: fold k's teachers are fold k's models
    cfg.cv.folds = run_config(teacher).cv.folds
    prepare.run(cfg)
    folds = load_folds(cfg)
    if folds.classes != teacher.classes():
        raise UserError(f"the student's classes differ from the teacher's ({teacher.folds_json}); distill on the same "
                        "competition files and target settings")
    stamp = teacher.read_scores("oof", "test").get("stamp")
    for k in range(cfg.cv.folds):
        write_targets(cfg, teacher, members, folds, k, stamp)
    train.run(cfg, fold="all")
    scores = predict.run(cfg)
    teacher_cv = teacher.read_scores()["cv"]
    log.info("student %s: CV %s %.4f; teacher %s: CV %.4f (alpha %.2f%s)", cfg.name, scores["metric"], scores["cv"],
             teacher.name, teacher_cv, cfg.distill.alpha, ", with the test rows" if cfg.distill.test else "")
    return scores


def teacher_members(teacher: RunDir, runs_dir: str) -> list[RunDir]:
    """The experiments whose fold models teach: the teacher itself, or its members (experiments, not ensembles)."""
    for path in (teacher.oof, teacher.test, teacher.scores):
        if not path.is_file():
            raise UserError(f"teacher {teacher.name}: {path} missing; run `pipeline predict` (or `pipeline "
                            "ensemble`) for it first")
    if not teacher.members.is_file():
        return [teacher]
    method = json.loads(teacher.weights.read_text())["method"]
    if method == "rank":
        raise UserError(f"{teacher.name} is a rank ensemble: its outputs are ranks, not probabilities a student can "
                        "learn; distill from a mean, weighted, geometric or stack ensemble of the same members")
    members = teacher.member_runs(runs_dir)
    for member in members:
        if member.members.is_file():
            raise UserError(f"{teacher.name}'s member {member.name} is itself an ensemble; distill from an ensemble "
                            "of experiments (its fold models are the teachers)")
    return members


def write_targets(cfg: Config, teacher: RunDir, members: list[RunDir], folds: Folds, k: int, stamp: str | None) -> None:
    """fold{k}/teacher.parquet: fold k's teachers' outputs on fold k's training rows (and the test rows)."""
    fold = RunDir(cfg.run_dir).fold(k)
    path = fold.path / TEACHER_FILE
    if path.is_file() and parquet_stamp(path) == stamp:
        return  # made from these teacher predictions already (the teacher's scores.json stamp)
    train_rows, _ = folds.split(k)
    rows = train_rows[["id"]].reset_index(drop=True)
    tests = [pd.read_parquet(m.fold(k).test) for m in members]
    test_ids = tests[0][["id"]]
    task = build_task(run_config(teacher), teacher.classes())
    outputs = []
    for member, test in zip(members, tests, strict=True):
        on_train = from_run(run_config(member), k).predict(rows, progress=f"{member.name} fold {k} (teacher)")
        on_test = task.read_outputs(test.set_index("id").loc[test_ids["id"]].reset_index())
        outputs.append(np.concatenate([on_train, on_test]))
    blended = outputs[0] if len(members) == 1 else blend_without_fold(task, teacher, members, outputs, k)
    frame = task.prediction_frame(pd.concat([rows, test_ids], ignore_index=True), blended)
    frame.insert(1, "part", ["train"] * len(rows) + ["test"] * len(test_ids))
    fold.path.mkdir(parents=True, exist_ok=True)
    write_parquet(path, frame, stamp)
    log.info("fold %d: teacher targets for %d training and %d test rows from %s -> %s", k, len(rows), len(test_ids),
             ", ".join(f"{m.name} fold {k}" for m in members), path)




def blend_without_fold(task: Task, teacher: RunDir, members: list[RunDir], outputs: list[np.ndarray], k: int):
    """The ensemble's blend as fold k may see it (pipeline.scoring.blend.blend_without_fold), on fold k's teachers' outputs."""
    oofs = [pd.read_parquet(m.oof).sort_values("id", ignore_index=True) for m in members]
    keys = oofs[0]
    return task.fold_blend(json.loads(teacher.weights.read_text()), [task.read_outputs(o) for o in oofs],
                           task.targets(keys), keys["fold"].to_numpy(), k, outputs)


