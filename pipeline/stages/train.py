"""Stage 2: train one fold (or all), resuming from last.pt; write the fold's OOF predictions at the end.

    pipeline train --config configs/leaves.yaml --fold 0
    torchrun --standalone --nproc_per_node=2 -m pipeline train --config configs/leaves.yaml --fold 0

A lock file per fold (fold{k}/train.lock) lets several workers share one runs/ directory: `--fold all`
in each of them trains every fold exactly once.

`--fold full` (AutoGluon's refit_full) trains one more model, on every row, once the folds are trained: for the
mean of their best epoch counts, with no validation rows, so it has no OOF and no CV of its own -> runs/<exp>/full/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

from pipeline.core import distributed
from pipeline.core.config import Config, to_dict
from pipeline.core.distributed import FoldLock
from pipeline.core.errors import UserError
from pipeline.core.files import write_json, write_parquet
from pipeline.core.seeding import seed_everything, set_deterministic
from pipeline.data.folds import Folds, load_folds
from pipeline.data.tables import build_loader
from pipeline.engine.autobatch import resolve_batch_size
from pipeline.engine.loop import NO_WATCH, EpochWatch, FoldJob, fit, infer, pick_device, resolve_precision
from pipeline.engine.progress import ProgressSpec
from pipeline.engine.training_rows import training_set
from pipeline.runs import checkpoint
from pipeline.runs.executor import NO_EVENTS, Events, Job, build_executor, shared_paths
from pipeline.runs.provenance import write_run_header
from pipeline.runs.rundir import FULL, FoldDir, RunDir, best_weights, parse_folds
from pipeline.runs.tracking import NullTracker, build_tracker
from pipeline.tasks import Task, build_task

log = logging.getLogger(__name__)


def run(cfg: Config, fold: str | int = "all", force: bool = False, watch: EpochWatch = NO_WATCH) -> list[dict]:
    """Train the folds asked for, on cluster.executor (here, one after another; or Ray tasks). Under torchrun every
    rank runs this; rank 0 alone writes and logs. `watch` hears every validated epoch (a tuning trial's pruner)."""
    world = distributed.init()
    set_deterministic(cfg.train.deterministic)
    if not world.main:
        logging.getLogger("pipeline").setLevel(logging.WARNING)
    folds = load_folds(cfg)
    which = parse_folds(fold, folds.table["fold"].nunique())
    if world.main:
        write_run_header(cfg, "train")
    executor = build_executor(cfg.cluster)
    if executor.name == "local":
        return executor.run([Job(f"fold {k}", train_job, (cfg, k, force, len(which) == 1, watch)) for k in which])
    if world.size > 1:
        raise UserError("--on ray runs each fold as a Ray task of its own; start it without torchrun")
    cfg = shared_paths(cfg)
    run_dir = RunDir(cfg.run_dir)
    executor.check_shared(run_dir.path, [cfg.data.root])
    return executor.run([Job(f"fold {k}", train_job, (cfg, k, force, len(which) == 1),
                             (run_dir.full if k == FULL else run_dir.fold(k)).lock) for k in which])


def train_job(cfg: Config, k: int | str, force: bool, alone: bool, watch: EpochWatch = NO_WATCH,
              events: Events = NO_EVENTS) -> dict:
    """Fold k under its lock, wherever it runs: a fold someone else holds is skipped (refused when it is the only
    one asked for); a lock left by a dead holder is taken over."""
    fold_dir = RunDir(cfg.run_dir).full if k == FULL else RunDir(cfg.run_dir).fold(k)
    fold_dir.path.mkdir(parents=True, exist_ok=True)
    lock = FoldLock(fold_dir.lock, events.ray_task)
    if not distributed.broadcast(lock.acquire() if distributed.world().main else None):
        if alone:
            raise UserError(f"fold {k} is being trained by {lock.owner()} ({lock.path}); wait for it, "
                            "or delete the lock file if that process is gone")
        log.info("fold %s is being trained by %s; next fold", k, lock.owner())
        return {"state": "skipped", "line": f"held by {lock.owner()}"}
    try:
        return train_fold(cfg, load_folds(cfg), k, force, EventWatch(watch, events, cfg), events)
    finally:
        lock.release()


class EventWatch(EpochWatch):
    """Tells the driver of each validated epoch, then the watch it wraps (a pruner, or nobody)."""

    def __init__(self, inner: EpochWatch, events: Events, cfg: Config):
        self.inner, self.events, self.cfg = inner, events, cfg

    def epoch(self, epoch: int, score: float) -> None:
        self.events.emit("epoch", epoch=epoch + 1, epochs=self.cfg.train.epochs, metric=self.cfg.train.metric,
                         score=score)
        self.inner.epoch(epoch, score)


def train_fold(cfg: Config, folds: Folds, k: int | str, force: bool = False, watch: EpochWatch = NO_WATCH,
               events: Events = NO_EVENTS) -> dict:
    """Train fold k unless it is finished; a half-trained fold continues from its last.pt. k = FULL: the full-data
    refit, on every row for the folds' mean best epoch count, with no validation rows (no OOF)."""
    world, full = distributed.world(), k == FULL
    fold = RunDir(cfg.run_dir).fold(k)
    ready_fold_dir(fold, force, world.main)
    state = checkpoint.load(fold.last) if fold.last.is_file() else None
    done = bool(state and state["progress"]["done"])
    if done and (full or fold.oof.is_file()):
        p = state["progress"]
        if full:
            log.info("the full-data refit is finished (%d epochs); --force retrains it", p["epoch"] + 1)
        else:
            log.info("fold %d is finished (best %s %.4f at epoch %d); --force retrains it",
                     k, cfg.train.metric, p["best_score"], p["best_epoch"] + 1)
        return summary(cfg, p, "finished before")
    keep = "model"
    if full:
        epochs, keep = refit_plan(cfg)
        cfg = replace_train(cfg, epochs=epochs, patience=0, keep_top=0)
    job = build_job(cfg, folds, k, fold, state, keep)
    if state is not None and not done:
        warn_config_changes(state.get("config", {}), to_dict(job.cfg))
        done_epochs = state["progress"]["epoch"] + 1
        events.emit("resuming", line=f"resumes at epoch {done_epochs + 1}/{job.cfg.train.epochs} from {fold.last.name} "
                                     f"({done_epochs} epoch{'s' * (done_epochs > 1)} done before)")
    tracker = NullTracker() if done or not world.main else \
        build_tracker(job.cfg, FULL if full else f"fold{k}", "train", state and state["wandb_id"])
    with log_to_file(fold.log) if world.main else contextlib.nullcontext():
        try:
            progress = fit(job, fold, tracker, resume=state, keep=keep, watch=watch) if not done else None
            if not full:
                distributed.barrier()  # rank 0's best.pt is on disk before anyone reads it
                score = write_oof(job.task, job.model, job.valid_rows, job.valid_loader, job.cfg, fold)
                tracker.summary({"oof/score": score})
        finally:
            tracker.finish()
    return summary(job.cfg, checkpoint.load(fold.last)["progress"] if progress is None else vars(progress), "trained")


def summary(cfg: Config, progress: dict, state: str) -> dict:
    """A fold's line in the executor's summary table."""
    best = progress.get("best_score")
    return {"state": state, "epochs": progress["epoch"] + 1,
            "line": f"best {cfg.train.metric} {best:.4f} at epoch {progress['best_epoch'] + 1}"
            if best is not None and progress.get("best_epoch", -1) >= 0 else ""}


def ready_fold_dir(fold: FoldDir, force: bool, main: bool) -> None:
    """The fold's folder, emptied first with --force; a killed writer's temporary files swept (the fold lock says no
    one else is writing here)."""
    if force and main:
        fold.clear()
    distributed.barrier()
    fold.path.mkdir(parents=True, exist_ok=True)
    if main:
        for stale in fold.path.glob("**/.*.tmp"):
            stale.unlink(missing_ok=True)


def build_job(cfg: Config, folds: Folds, k: int | str, fold: FoldDir, state: dict | None, keep: str) -> FoldJob:
    """Seed, task (fitted on the fold's training rows), model, training set (with pseudo-labelled rows or teacher
    targets where the config says so), batch size and loaders of fold k (or the full-data refit)."""
    world, full = distributed.world(), k == FULL
    seed = cfg.seed + (cfg.cv.folds if full else k)  # the refit draws no fold's numbers
    seed_everything(seed)
    task = build_task(cfg, folds.classes)
    train_rows, valid_rows = (folds.table, None) if full else folds.split(k)
    preprocess = task.fit_fold(train_rows)  # e.g. channel statistics or a vocabulary, from training rows only
    if preprocess and world.main:
        write_json(fold.preprocess, preprocess)
    model = task.build_model()
    train_set = training_set(task, cfg, fold, train_rows)  # + pseudo-labelled rows or teacher targets
    if state is not None and cfg.train.batch_size == "auto":  # a resumed fold keeps the batch (and LR) it began with
        cfg = replace_train(cfg, batch_size=state["config"]["train"]["batch_size"])
    cfg = resolve_batch_size(cfg, task, model, train_set, pick_device())  # auto: the largest that fits the GPU
    if world.size > 1:  # same initial weights on every rank (DDP checks), different dropout and mixup draws
        seed_everything(seed + 7919 * world.rank)
    train_loader = build_loader(train_set, cfg, True, cfg.train.batch_size, seed=seed)
    if full:
        log.info("full-data refit: %d rows for %d epochs (the folds' mean best epoch), %s weights, model %s; it has "
                 "no validation rows, so no OOF and no CV of its own", len(train_rows), cfg.train.epochs, keep,
                 cfg.model.name)
        return FoldJob(cfg, task, model, train_loader, None, None)
    valid_loader = build_loader(task.build_dataset(valid_rows, train=False), cfg, False, cfg.predict.batch_size)
    log.info("fold %d: %d train / %d valid rows, model %s", k, len(train_rows), len(valid_rows), cfg.model.name)
    return FoldJob(cfg, task, model, train_loader, valid_rows, valid_loader)


def refit_plan(cfg: Config) -> tuple[int, str]:
    """The full-data refit's epochs (the trained folds' mean best epoch count) and weights (EMA where most folds'
    best epoch was the EMA's)."""
    run_dir = RunDir(cfg.run_dir)
    trained = [checkpoint.load(run_dir.fold(k).best)["progress"] for k in run_dir.folds_with("best.pt", cfg.cv.folds)]
    if not trained:
        raise UserError(f"--fold full trains for the folds' mean best epoch count, and {run_dir.path} has no trained "
                        "fold: run `pipeline train --fold all` first")
    epochs = max(1, round(sum(p["best_epoch"] + 1 for p in trained) / len(trained)))
    ema = sum(p["best_source"] == "ema" for p in trained) * 2 > len(trained)
    return epochs, "ema" if ema and cfg.train.ema else "model"


def replace_train(cfg: Config, **changes) -> Config:
    """A copy of cfg with train settings changed (the folds' own config stays as it was)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


def write_oof(task: Task, model, valid_rows, valid_loader, cfg: Config, fold: FoldDir) -> float:
    """fold{k}/oof.parquet from best.pt (raw or EMA weights, whichever validated better)."""
    best = checkpoint.load(fold.best)
    model.load_state_dict(best_weights(best))
    device = pick_device()
    model.to(device, memory_format=task.memory_format)
    outputs = infer(task, model, valid_loader, device, resolve_precision(cfg.train.precision, device),
                    progress=ProgressSpec.of(f"fold {fold.k} OOF", cfg.tracking))[0]
    if distributed.world().main:
        write_parquet(fold.oof, task.prediction_frame(valid_rows, outputs))
    score = task.evaluate(outputs, valid_loader.dataset.labels)["score"]
    log.info("fold %d OOF %s %.4f (%s weights, epoch %d) -> %s", int(valid_rows["fold"].iloc[0]), cfg.train.metric,
             score, best["progress"]["best_source"], best["progress"]["best_epoch"] + 1, fold.oof)
    return score


def warn_config_changes(before: dict, now: dict, prefix: str = "") -> None:
    """A resumed fold keeps its optimizer and schedule; say which settings changed under it."""
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            warn_config_changes(a, b, f"{prefix}{key}.")
        elif a != b and key not in ("quiet", "num_workers", "log_every", "progress_seconds"):
            log.warning("resuming with %s%s=%r (was %r when this fold started)", prefix, key, b, a)


@contextlib.contextmanager
def log_to_file(path):
    """Copy this fold's log lines into fold{k}/train.log while it runs."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("pipeline")
    level = logger.level
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))  # the file gets INFO even when the console does not
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
