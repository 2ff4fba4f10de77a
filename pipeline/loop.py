"""The training loop, written once for every task: fit() trains and checkpoints one fold, predict() infers.

Per step: forward under autocast, scaled backward with accumulation, unscale, clip, optimizer step,
EMA update, scheduler step. Per epoch: evaluate raw and EMA weights, log, checkpoint, early-stop.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import nullcontext
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import checkpoint, distributed
from pipeline.averaging import TopEpochs
from pipeline.config import Config, to_dict
from pipeline.errors import UserError
from pipeline.files import write_csv
from pipeline.optim import build_optimizer, build_scheduler, scale_lr
from pipeline.tta import VIEWS, View

log = logging.getLogger(__name__)
IDENTITY = [VIEWS["identity"]]


def pick_device() -> torch.device:
    """This process's device: its torchrun LOCAL_RANK's GPU, the only GPU, or the CPU."""
    return distributed.device()


def resolve_precision(requested: str, device: torch.device) -> torch.dtype:
    """auto: fp32 on CPU (bf16 autocast is ~15x slower on common CPUs), bf16 on CUDA, fp16 where bf16 is missing."""
    if requested == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]


def autocast(device: torch.device, dtype: torch.dtype):
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


class NoEMA:
    """EMA switched off: same interface, nothing kept."""

    module = None

    def update(self, model: nn.Module, step: int) -> None:
        pass


class Diverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class Progress:
    """Where a fold stands; saved in every checkpoint."""

    epoch: int = -1  # last finished epoch
    step: int = 0  # optimizer steps so far
    best_score: float | None = None
    best_epoch: int = -1
    best_source: str = "model"  # which weights scored best: model | ema
    done: bool = False
    rollbacks: int = 0  # NaN rollbacks so far (train.on_nan=rollback)

    def record(self, epoch: int, scores: dict[str, dict], metric, epochs: int, patience: int) -> tuple[bool, bool]:
        """Take one epoch's valid scores (per weight source); return (improved, stop early).
        A NaN score never counts as an improvement, so weights that broke are never saved as best."""
        best = metric.best(s["score"] for s in scores.values())
        source = next((name for name, s in scores.items() if s["score"] == best), None)  # None: all NaN
        improved = source is not None and metric.better(best, self.best_score)
        if improved:
            self.best_score, self.best_epoch, self.best_source = scores[source]["score"], epoch, source
        self.epoch = epoch
        stop = patience > 0 and epoch - self.best_epoch >= patience
        self.done = stop or epoch == epochs - 1
        return improved, stop and epoch < epochs - 1


def build_training(model: nn.Module, t, steps_per_epoch: int, world_size: int, device: torch.device, dtype: torch.dtype):
    """(LR rule, AdamW, warmup+cosine schedule, grad scaler, EMA): what one optimizer step updates."""
    lr = scale_lr(t, world_size)
    optimizer = build_optimizer(model, t, lr.lr)
    scheduler = build_scheduler(optimizer, t.epochs * steps_per_epoch, round(t.warmup_epochs * steps_per_epoch), t.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = ModelEmaV3(model, decay=t.ema_decay, use_warmup=True) if t.ema else NoEMA()
    return lr, optimizer, scheduler, scaler, ema


def fit(task, model: nn.Module, train_loader: DataLoader, valid_loader: DataLoader, cfg: Config,
        fold_dir: Path, tracker, resume: dict | None = None) -> Progress:
    """Train one fold to the end (or early stop), writing last.pt, best.pt and metrics.csv in fold_dir."""
    t = cfg.train
    device = pick_device()
    dtype = resolve_precision(t.precision, device)
    model.to(device, memory_format=task.memory_format)
    world = distributed.world()
    # DDP averages gradients over ranks in backward; EMA, evaluation and checkpoints use the bare model.
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world.size > 1 else model
    net = torch.compile(net) if t.compile else net  # compiled wrapper shares model's parameters
    steps_per_epoch = math.ceil(len(train_loader) / t.accum_steps)
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    lr, optimizer, scheduler, scaler, ema = build_training(model, t, steps_per_epoch, world.size, device, dtype)
    top = TopEpochs(fold_dir, t.keep_top, task.metric.greater_is_better)
    progress, rows = Progress(), []
    if resume is not None:
        progress, rows = _restore(resume, model, ema, optimizer, scheduler, scaler)
        log.info("resuming after epoch %d (step %d) from %s", progress.epoch + 1, progress.step, fold_dir / "last.pt")
    log.info("device %s, precision %s, %s, %d steps/epoch", device, str(dtype).removeprefix("torch."), lr, steps_per_epoch)
    tracker.summary({"lr": lr.lr, "effective_batch": lr.effective_batch, "lr_rule": lr.rule})

    start = _state(model, ema, optimizer, scheduler, scaler, progress, rows, tracker, cfg, copy=True) \
        if t.on_nan == "rollback" and resume is None else None  # where a first-epoch NaN rolls back to
    epoch = progress.epoch + 1
    while epoch < t.epochs:
        train_loader.sampler.set_epoch(epoch)  # same order on a resumed epoch
        started = time.perf_counter()
        try:
            train_loss, samples = train_epoch(task, net, train_loader, optimizer, scheduler, scaler, ema,
                                               device, dtype, cfg, epoch, progress, steps_per_epoch)
        except Diverged as e:
            progress, rows = roll_back(e, fold_dir, start, t, progress, model, ema, optimizer, scheduler, scaler)
            epoch = progress.epoch + 1
            continue
        seconds = time.perf_counter() - started
        scores = {name: evaluate(task, m, valid_loader, device, dtype)
                  for name, m in (("model", model), ("ema", ema.module)) if m is not None}
        improved, stop = progress.record(epoch, scores, task.metric, t.epochs, t.patience)
        row = {"epoch": epoch, "step": progress.step, "train/loss": train_loss,
               **{f"valid{'' if name == 'model' else '_' + name}/{k}": v for name, s in scores.items() for k, v in s.items()},
               "lr": optimizer.param_groups[0]["lr"], "samples/s": samples / seconds, "seconds": seconds}
        rows.append(row)
        if world.main:  # every rank holds the same weights and scores; one writes them
            save_epoch(fold_dir, top, epoch, task.metric.best(s["score"] for s in scores.values()), improved,
                       _state(model, ema, optimizer, scheduler, scaler, progress, rows, tracker, cfg), model, ema)
        tracker.log(row, step=progress.step)
        log.info("epoch %d/%d  train loss %.4f  %s%s %s%s  %.0f samples/s  %.0fs%s",
                 epoch + 1, t.epochs, train_loss,
                 f"valid loss {scores['model']['loss']:.4f}  " if "loss" in scores["model"] else "", task.metric.name,
                 " ".join(f"{name} {s['score']:.4f}" for name, s in scores.items()),
                 f"  * best ({progress.best_source})" if improved else "", samples / seconds, seconds,
                 "  early stop" if stop else "")
        if stop:
            break
        epoch += 1
    return progress


def roll_back(error: Diverged, fold_dir: Path, start: dict | None, t, progress: Progress, model, ema, optimizer,
              scheduler, scaler) -> tuple[Progress, list]:
    """train.on_nan=rollback: reload the last good epoch (last.pt, else the initial state) with a lower LR."""
    if t.on_nan != "rollback":
        raise error
    if progress.rollbacks >= t.max_rollbacks:
        raise Diverged(f"{error} Gave up after {progress.rollbacks} rollbacks (train.max_rollbacks).") from None
    last = fold_dir / "last.pt"
    state = checkpoint.load(last) if last.is_file() else start
    rollbacks = progress.rollbacks + 1
    restored, rows = _restore(state, model, ema, optimizer, scheduler, scaler)
    restored.rollbacks = rollbacks
    factor = t.rollback_lr_factor ** (rollbacks - state["progress"].get("rollbacks", 0))
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["lr"] *= factor
    log.warning("%s\nrolling back to %s with the LR x%g (rollback %d of %d, train.max_rollbacks)", error,
                f"epoch {restored.epoch + 1}" if restored.epoch >= 0 else "the start", factor, rollbacks, t.max_rollbacks)
    return restored, rows


def save_epoch(fold_dir: Path, top, epoch: int, score: float, improved: bool, state: dict, model, ema) -> None:
    top.offer(epoch, score, model, ema.module)
    if improved:  # best.pt before last.pt: a crash in between never leaves best.pt behind the progress
        checkpoint.save(fold_dir / "best.pt", state)
        checkpoint.copy(fold_dir / "best.pt", fold_dir / "last.pt")
    else:
        checkpoint.save(fold_dir / "last.pt", state)
    write_csv(fold_dir / "metrics.csv", pd.DataFrame(state["metrics"]))


def train_epoch(task, model, loader, optimizer, scheduler, scaler, ema, device, dtype, cfg, epoch, progress, max_steps):
    """One pass; returns (mean loss, samples seen). The loss is synced to the host only at log points."""
    t = cfg.train
    model.train()
    total = torch.zeros((), device=device)
    first_bad = torch.full((), -1, device=device)  # first step with a NaN/inf loss, tracked without a host sync
    batches = samples = 0
    started = time.perf_counter()
    bar = tqdm(total=max_steps, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, dynamic_ncols=True,
               disable=cfg.tracking.quiet or not sys.stderr.isatty())
    optimizer.zero_grad(set_to_none=True)
    steps = 0
    for i, batch in enumerate(loader):
        batch = task.to_device(batch, device)
        with autocast(device, dtype):
            loss = task.loss(model, batch)
        scaler.scale(loss / t.accum_steps).backward()
        total += loss.detach()
        first_bad = torch.where((first_bad < 0) & ~loss.detach().isfinite(), progress.step + 1, first_bad)
        batches += 1
        samples += len(batch[0])
        if (i + 1) % t.accum_steps and i + 1 < len(loader):
            continue
        scaler.unscale_(optimizer)
        if t.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        ema.update(model, step=progress.step)
        scheduler.step()
        steps += 1
        bar.update()
        if steps % cfg.tracking.log_every == 0 or steps == max_steps:
            mean = distributed.mean((total / batches).item())  # every rank sees (and checks) the same loss
            _check_finite(mean, epoch, first_bad)
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            sps=f"{samples / (time.perf_counter() - started):.0f}")
        if steps == max_steps:
            break
    bar.close()
    mean = distributed.mean((total / max(batches, 1)).item())
    _check_finite(mean, epoch, first_bad)
    if not all(bool(p.isfinite().all()) for p in model.parameters()):  # a last step can break them after the loss
        raise Diverged(f"weights became NaN or infinite at epoch {epoch + 1}, step {progress.step}; lower "
                       "train.base_lr or set train.clip_grad. The checkpoints on disk are from before it.")
    return mean, distributed.total(samples)


def _check_finite(loss: float, epoch: int, first_bad: torch.Tensor) -> None:
    if not math.isfinite(loss):
        raise Diverged(
            f"training loss is {loss} at epoch {epoch + 1}, step {int(first_bad)}; lower train.base_lr, set "
            "train.clip_grad, use train.precision=fp32/bf16, or set train.on_nan=rollback. "
            "The checkpoints on disk are from before it."
        )


@torch.inference_mode()
def predict(task, model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype,
            views: list[View] | None = None):
    """Outputs for every sample of the loader, in order, one slice per TTA view ([V, N, C] for classes)."""
    model.eval()
    outputs = []
    for batch in loader:
        batch = task.to_device(batch, device)
        with autocast(device, dtype):
            outputs.append(task.predict(model, batch, views or IDENTITY))
    return task.gather(distributed.gather_chunks(outputs, loader))


def evaluate(task, model: nn.Module, loader: DataLoader, device, dtype) -> dict[str, float]:
    outputs = predict(task, model, loader, device, dtype)[0]
    return task.evaluate(outputs, loader.dataset.labels)


def _state(model, ema, optimizer, scheduler, scaler, progress: Progress, rows: list, tracker, cfg: Config,
           copy: bool = False) -> dict:
    """Everything a resume needs; copy=True detaches it from the live tensors (an in-memory snapshot)."""
    state = {
        "model": model.state_dict(),
        "ema": ema.module.state_dict() if ema.module is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "progress": vars(progress).copy(),
        "metrics": rows,
        "wandb_id": tracker.run_id,
        "rng": checkpoint.rng_state(),
        "config": to_dict(cfg),
    }
    return deepcopy(state) if copy else state


def _restore(state: dict, model, ema, optimizer, scheduler, scaler) -> tuple[Progress, list]:
    model.load_state_dict(state["model"])
    if ema.module is not None and state["ema"] is not None:
        ema.module.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    checkpoint.set_rng_state(state["rng"])
    return Progress(**state["progress"]), list(state["metrics"])


def best_weights(state: dict) -> dict:
    """The state_dict that scored best in a checkpoint: the raw or the EMA weights."""
    return state["ema"] if state["progress"]["best_source"] == "ema" else state["model"]
