"""The training loop, written once for every task: fit() trains and checkpoints one fold, infer() predicts.

Per step: forward under autocast, scaled backward with accumulation, unscale, clip, optimizer step,
EMA update, scheduler step. Per epoch: evaluate raw and EMA weights, log, checkpoint, early-stop.
What a step changes lives in one TrainingState (pipeline/engine/state.py), which the checkpoints save.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.core import distributed, precision
from pipeline.core.config import Config, to_dict
from pipeline.core.errors import UserError
from pipeline.core.files import write_csv
from pipeline.engine.averaging import TopEpochs
from pipeline.engine.progress import SILENT, ProgressSpec, build_progress
from pipeline.engine.state import Progress, TrainingState, steps_per_epoch
from pipeline.engine.task import Task
from pipeline.runs import checkpoint
from pipeline.runs.rundir import FoldDir
from pipeline.scoring.tta import VIEWS, View

log = logging.getLogger(__name__)
IDENTITY = [VIEWS["identity"]]


def pick_device() -> torch.device:
    """This process's device: its torchrun LOCAL_RANK's GPU, the only GPU, or the CPU."""
    return distributed.device()


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA >= 8.0, fp16 + GradScaler below it, fp32 on CPU (pipeline.core.precision)."""
    return precision.resolve_precision(requested, device)


def autocast(device: torch.device, dtype: torch.dtype):
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


class Diverged(UserError):
    """The loss became NaN or infinite."""


class Pruned(Exception):
    """Raised by an EpochWatch: the fold stops after this epoch; its checkpoints stay on disk (a rerun resumes)."""


class EpochWatch:
    """Who hears each validated epoch's score, beside the log: a tuning trial's pruner, which may raise Pruned.
    The loop knows nothing else about it; this default hears nothing."""

    def epoch(self, epoch: int, score: float) -> None:
        """Epoch `epoch` (0-based) scored `score` (the better of the raw and EMA weights); its checkpoint is saved."""


NO_WATCH = EpochWatch()


@dataclass
class FoldJob:
    """What one fold trains with: its recipe (batch size and, for the refit, epochs settled), task, model, loaders."""

    cfg: Config
    task: Task
    model: nn.Module
    train_loader: DataLoader
    valid_rows: pd.DataFrame | None  # None for the full-data refit: no validation rows, no OOF
    valid_loader: DataLoader | None


def fit(job: FoldJob, fold: FoldDir, tracker, resume: dict | None = None, keep: str = "model",
        watch: EpochWatch = NO_WATCH) -> Progress:
    """Train one fold to the end (or early stop), writing last.pt, best.pt and metrics.csv in its folder.
    Without a valid_loader (`--fold full`) nothing is scored: it trains cfg.train.epochs and best.pt holds the last
    epoch's weights, `keep` (model | ema) being the ones predict uses."""
    if hasattr(job.model, "solve"):  # a head solved in closed form (ROCKET + ridge/logistic): one solve, not epochs
        return fit_closed_form(job, fold, tracker)
    task, model, train_loader, cfg = job.task, job.model, job.train_loader, job.cfg
    t, device = cfg.train, pick_device()
    dtype = resolve_precision(t.precision, device)
    state = TrainingState.build(model, cfg, steps_per_epoch(len(train_loader), cfg), device, dtype, task.memory_format)
    if resume is not None:
        state.load_state_dict(resume)
        log.info("resuming after epoch %d (step %d) from %s", state.progress.epoch + 1, state.progress.step, fold.last)
    backends = precision.configure_backends(device, t.deterministic)
    log.info("device %s, precision %s, %s, %d steps/epoch, warmup %d steps%s", device,
             precision.why(t.precision, device.type, precision.capability(device), dtype), state.lr,
             state.steps_per_epoch, state.warmup_steps,
             "".join(f", {k} {'on' if v else 'off'}" for k, v in backends.items()))
    tracker.summary({"lr": state.lr.lr, "effective_batch": state.lr.effective_batch, "lr_rule": state.lr.rule})
    top = TopEpochs(fold.top, t.keep_top, task.metric.greater_is_better)
    start = state.snapshot() if t.on_nan == "rollback" and resume is None else None  # a first-epoch NaN's way back

    epoch = state.progress.epoch + 1
    while epoch < t.epochs:
        train_loader.sampler.set_epoch(epoch)  # same order on a resumed epoch
        started = time.perf_counter()
        try:
            train_loss, samples = train_epoch(task, state, train_loader, cfg, epoch)
        except Diverged as e:
            roll_back(e, state, fold, start, t)
            epoch = state.progress.epoch + 1
            continue
        seconds = time.perf_counter() - started
        if end_epoch(job, state, fold, top, tracker, (epoch, train_loss, samples, seconds), keep, watch):
            break
        epoch += 1
    return state.progress


def end_epoch(job: FoldJob, state: TrainingState, fold: FoldDir, top: TopEpochs, tracker, trained: tuple, keep: str,
              watch: EpochWatch) -> bool:
    """After an epoch's training: score the raw and EMA weights, record, checkpoint, log, tell the watch; whether
    to stop (early stop, or the last epoch)."""
    task, t, device, dtype = job.task, job.cfg.train, state.device, state.dtype
    epoch, train_loss, samples, seconds = trained
    if job.valid_loader is None:
        scores = {}
        improved, stop = state.progress.record_unvalidated(epoch, t.epochs, keep)
    else:
        scores = {name: evaluate(task, m, job.valid_loader, device, dtype,
                                 ProgressSpec.of(f"epoch {epoch + 1}/{t.epochs} valid {name}", job.cfg.tracking))
                  for name, m in state.weights().items()}
        improved, stop = state.progress.record(epoch, scores, task.metric, t.epochs, t.patience)
    state.metrics.append(epoch_row(state, epoch, train_loss, scores, samples, seconds))
    score = task.metric.best(s["score"] for s in scores.values()) if scores else math.nan  # nan: kept by no top
    if distributed.world().main:  # every rank holds the same weights and scores; one writes them
        save_epoch(fold, top, state, score, improved, {"wandb_id": tracker.run_id, "config": to_dict(job.cfg)})
    tracker.log(state.metrics[-1], step=state.progress.step)
    log_epoch(state, epoch, t.epochs, train_loss, scores, task.metric.name, improved, stop)
    if scores:
        watch.epoch(epoch, score)
    return stop


def fit_closed_form(job: FoldJob, fold: FoldDir, tracker) -> Progress:
    """One "epoch": the model solves its head on every training row (its own inner CV), then is scored and saved as
    any epoch's weights are, so predict, ensembles and export read it as they read a network's fold."""
    task, model, train_loader, cfg = job.task, job.model, job.train_loader, job.cfg
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema=False, epochs=1, compile=False))
    device = torch.device("cpu")  # the features are numba code on the CPU; the head is a few thousand multiply-adds
    state = TrainingState.build(model, cfg, 1, device, torch.float32, task.memory_format)
    started = time.perf_counter()
    train_loss = model.solve(task, train_loader.dataset)
    seconds = time.perf_counter() - started
    closed = dataclasses.replace(job, cfg=cfg)  # scored, saved and logged as any one-epoch run's epoch is
    end_epoch(closed, state, fold, TopEpochs(fold.top, 0, task.metric.greater_is_better), tracker,
              (0, train_loss, len(train_loader.dataset), seconds), "model", NO_WATCH)
    return state.progress


def epoch_row(state: TrainingState, epoch: int, train_loss: float, scores: dict, samples: int, seconds: float) -> dict:
    """One row of metrics.csv: valid/<key> for the raw weights, valid_ema/<key> for the EMA weights."""
    return {"epoch": epoch, "step": state.progress.step, "train/loss": train_loss,
            **{f"valid{'' if name == 'model' else '_' + name}/{k}": v for name, s in scores.items() for k, v in s.items()},
            "lr": state.optimizer.param_groups[0]["lr"], "samples/s": samples / seconds, "seconds": seconds}


def log_epoch(state: TrainingState, epoch: int, epochs: int, train_loss: float, scores: dict, metric: str,
              improved: bool, stop: bool) -> None:
    row = state.metrics[-1]
    valid = scores.get("model", {})
    log.info("epoch %d/%d  train loss %.4f  %s%s%s  %.0f samples/s  %.0fs%s",
             epoch + 1, epochs, train_loss,
             f"valid loss {valid['loss']:.4f}  " if "loss" in valid else "",
             f"{metric} " + " ".join(f"{name} {s['score']:.4f}" for name, s in scores.items()) if scores
             else "no validation rows",
             f"  * best ({state.progress.best_source})" if improved and scores else "", row["samples/s"], row["seconds"],
             "  early stop" if stop else "")


def roll_back(error: Diverged, state: TrainingState, fold: FoldDir, start: dict | None, t) -> None:
    """train.on_nan=rollback: reload the last good epoch (last.pt, else the initial state) with a lower LR."""
    if t.on_nan != "rollback":
        raise error
    rollbacks = state.progress.rollbacks
    if rollbacks >= t.max_rollbacks:
        raise Diverged(f"{error} Gave up after {rollbacks} rollbacks (train.max_rollbacks).") from None
    saved = checkpoint.load(fold.last) if fold.last.is_file() else start
    state.load_state_dict(saved)
    state.progress.rollbacks = rollbacks = rollbacks + 1
    factor = t.rollback_lr_factor ** (rollbacks - saved["progress"].get("rollbacks", 0))
    state.scale_lr(factor)
    log.warning("%s\nrolling back to %s with the LR x%g (rollback %d of %d, train.max_rollbacks)", error,
                f"epoch {state.progress.epoch + 1}" if state.progress.epoch >= 0 else "the start", factor, rollbacks,
                t.max_rollbacks)


def save_epoch(fold: FoldDir, top: TopEpochs, state: TrainingState, score: float, improved: bool, extra: dict) -> None:
    """The epoch's checkpoint (the training state and `extra`: W&B id, config), its top-N copy and metrics.csv."""
    top.offer(state.progress.epoch, score, state.model, state.ema.module)
    saved = {**state.state_dict(), **extra}
    if improved:  # best.pt before last.pt: a crash in between never leaves best.pt behind the progress
        checkpoint.save(fold.best, saved)
        checkpoint.copy(fold.best, fold.last)
    else:
        checkpoint.save(fold.last, saved)
    write_csv(fold.metrics, pd.DataFrame(state.metrics))


def no_sync(net: nn.Module):
    """DDP's no_sync() (a compiled DDP module's too); a plain model has no gradients to hold back."""
    inner = getattr(net, "_orig_mod", net)
    return inner.no_sync() if isinstance(inner, torch.nn.parallel.DistributedDataParallel) else nullcontext()


def train_epoch(task: Task, state: TrainingState, loader: DataLoader, cfg: Config, epoch: int,
                max_steps: int | None = None) -> tuple[float, int]:
    """One pass of at most max_steps optimizer steps (default: the state's steps per epoch); returns (mean loss,
    samples seen). The loss is synced to the host only at log points."""
    t, device, progress = cfg.train, state.device, state.progress
    max_steps = max_steps or state.steps_per_epoch
    model = state.net
    model.train()
    total = torch.zeros((), device=device)
    first_bad = torch.full((), -1, device=device)  # first step with a NaN/inf loss, tracked without a host sync
    batches = samples = 0
    started = time.perf_counter()
    bar = build_progress(max_steps, f"epoch {epoch + 1}/{t.epochs}", "step", cfg.tracking.progress_seconds,
                         cfg.tracking.quiet)
    state.optimizer.zero_grad(set_to_none=True)
    steps = shown = 0  # shown: the samples the progress has been told of
    for i, batch in enumerate(loader):
        batch = task.to_device(batch, device)
        stepping = not (i + 1) % t.accum_steps or i + 1 == len(loader)
        # accumulation micro-steps keep their gradients local: DDP all-reduces once, on the stepping micro-batch
        with nullcontext() if stepping else no_sync(model):
            with autocast(device, state.dtype):  # the forward only: backward runs in the ops' own dtypes
                loss = task.loss(model, batch)
            state.scaler.scale(loss / t.accum_steps).backward()
        total += loss.detach()
        first_bad = torch.where((first_bad < 0) & ~loss.detach().isfinite(), progress.step + 1, first_bad)
        batches += 1
        samples += len(batch[0])
        if not stepping:
            continue
        optimizer_step(state, model, t.clip_grad)
        steps += 1
        if steps % cfg.tracking.log_every == 0 or steps == max_steps:
            mean = distributed.mean((total / batches).item())  # every rank sees (and checks) the same loss
            _check_finite(mean, epoch, first_bad)
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{state.optimizer.param_groups[0]['lr']:.2e}",
                            sps=f"{samples / (time.perf_counter() - started):.0f}")
        # this rank's running mean, divided only when a log line is written
        bar.update(1, samples - shown, loss=lambda total=total, batches=batches: total / batches)
        shown = samples
        if steps == max_steps:
            break
    bar.close()
    mean = distributed.mean((total / max(batches, 1)).item())
    _check_finite(mean, epoch, first_bad)
    if not finite(model.parameters()):  # a last step can break them after the loss
        raise Diverged(f"weights became NaN or infinite at epoch {epoch + 1}, step {progress.step}; lower "
                       "train.base_lr or set train.clip_grad. The checkpoints on disk are from before it.")
    return mean, distributed.total(samples)


def optimizer_step(state: TrainingState, model: nn.Module, clip_grad: float) -> None:
    """One update: unscale, clip, step (the scaler skips a step with inf gradients), zero the gradients, then the
    EMA and the schedule follow the step."""
    state.scaler.unscale_(state.optimizer)
    if clip_grad > 0:
        clip_gradients(model.parameters(), clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.progress.step += 1
    state.ema.update(state.model, step=state.progress.step)
    state.scheduler.step()


def clip_gradients(parameters, max_norm: float) -> None:
    """clip_grad_norm_, less its multiply by 1.0 on the CPU when the norm is within max_norm: torch scales every
    gradient by min(1, max_norm / (norm + 1e-6)) to spare a GPU a sync, a pass over the weights the CPU need not
    make. The gradients come out bit for bit the same."""
    parameters = [p for p in parameters if p.grad is not None]
    if not parameters:
        return
    norm = nn.utils.get_total_norm([p.grad for p in parameters])
    if norm.device.type != "cpu" or bool(max_norm / (norm + 1e-6) < 1.0):  # torch's own coefficient, in float32
        nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)


def finite(tensors) -> bool:
    """Whether every element is finite. A sum is finite only when its elements are (NaN and inf carry through), so
    one reading pass and one sync settle it; the element check runs only where a sum is not (or overflowed)."""
    tensors = list(tensors)
    if not tensors or bool(torch.stack([t.detach().sum(dtype=torch.float32) for t in tensors]).isfinite().all()):
        return True
    return all(bool(t.isfinite().all()) for t in tensors)


def _check_finite(loss: float, epoch: int, first_bad: torch.Tensor) -> None:
    if not math.isfinite(loss):
        raise Diverged(
            f"training loss is {loss} at epoch {epoch + 1}, step {int(first_bad)}; lower train.base_lr, set "
            "train.clip_grad, use train.precision=fp32/bf16, or set train.on_nan=rollback. "
            "The checkpoints on disk are from before it."
        )


@torch.inference_mode()
def infer(task: Task, model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype,
          views: list[View] | None = None, progress: ProgressSpec = SILENT):
    """Outputs for every sample of the loader, in order, one slice per TTA view ([V, N, C] for classes);
    progress: a bar (or log lines) over the batches, every view of a batch in one."""
    model.eval()
    outputs = []
    bar = progress.start(len(loader), "batch")
    for batch in loader:
        batch = task.to_device(batch, device)
        with autocast(device, dtype):
            outputs.append(task.infer_batch(model, batch, views or IDENTITY))
        bar.update(1, len(batch[0]))
    bar.close()
    outputs = task.gather(distributed.gather_chunks(outputs, loader))
    order = getattr(loader.sampler, "order", None)  # a length-sorted loader: back to the dataset's order
    return outputs if order is None else task.reorder(outputs, np.argsort(order))


def evaluate(task: Task, model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype,
             progress: ProgressSpec = SILENT) -> dict[str, float]:
    """The validation scores ({'score': ..., 'loss': ...}) of one set of weights, without TTA."""
    outputs = infer(task, model, loader, device, dtype, progress=progress)[0]
    return task.evaluate(outputs, loader.dataset.labels)
