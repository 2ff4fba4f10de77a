"""The training state: everything one optimizer step changes, in one object that a checkpoint saves and restores.

    state = TrainingState.build(model, cfg, steps_per_epoch, device, dtype)
    state.load_state_dict(checkpoint.load(fold.last))      # resume
"""

from __future__ import annotations

import logging
import math
from copy import deepcopy
from dataclasses import dataclass, field

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.core import distributed
from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.engine.optim import ResolvedLR, build_optimizer, build_scheduler, scale_lr
from pipeline.runs import checkpoint

log = logging.getLogger(__name__)


class NoEMA:
    """EMA switched off: same interface, nothing kept."""

    module = None

    def update(self, model: nn.Module, step: int) -> None:
        pass


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

    def record_unvalidated(self, epoch: int, epochs: int, source: str) -> tuple[bool, bool]:
        """An epoch of a run with no validation rows (`--fold full`): the latest weights are the ones kept, from
        `source` (model | ema, as most folds picked), and the run ends at `epochs`."""
        self.epoch = self.best_epoch = epoch
        self.best_source, self.done = source, epoch == epochs - 1
        return True, False


def steps_per_epoch(batches: int, cfg: Config) -> int:
    """Optimizer steps in one epoch of `batches` loader batches (accumulation, train.max_steps_per_epoch)."""
    steps = math.ceil(batches / cfg.train.accum_steps)
    return min(steps, cfg.train.max_steps_per_epoch) if cfg.train.max_steps_per_epoch else steps


@dataclass
class TrainingState:
    """Model, its DDP/compiled wrapper, EMA, optimizer, schedule, grad scaler, progress and metrics rows."""

    model: nn.Module  # the bare model: EMA, evaluation and checkpoints use it
    net: nn.Module  # what the training step runs: the model, or its DDP / compiled wrapper (same parameters)
    ema: ModelEmaV3 | NoEMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    lr: ResolvedLR  # the LR rule's result, logged
    steps_per_epoch: int
    device: torch.device
    dtype: torch.dtype  # autocast precision (float32: none)
    warmup_steps: int = 0  # as the short-run cap left it, logged
    progress: Progress = field(default_factory=Progress)
    metrics: list[dict] = field(default_factory=list)  # one row per finished epoch: metrics.csv

    @classmethod
    def build(cls, model: nn.Module, cfg: Config, steps: int, device: torch.device, dtype: torch.dtype,
              memory_format: torch.memory_format = torch.contiguous_format) -> TrainingState:
        """Move the model to the device, wrap it (DDP under torchrun, torch.compile), and build what steps it:
        AdamW at the batch-scaled LR, warmup + cosine per optimizer step, a grad scaler (fp16 only), EMA."""
        t, world = cfg.train, distributed.world()
        if t.sync_bn and world.size > 1:  # one set of BN statistics over all ranks' samples
            if device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                log.warning("train.sync_bn needs CUDA (SyncBatchNorm has no CPU kernel); each %s rank keeps its own "
                            "BatchNorm statistics", device.type)
        model.to(device, memory_format=memory_format)
        # DDP averages gradients over ranks in backward; EMA, evaluation and checkpoints use the bare model.
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if world.size > 1 else model
        net = torch.compile(net) if t.compile else net  # the compiled wrapper shares model's parameters
        lr = scale_lr(t, world.size)
        optimizer = build_optimizer(model, t, lr.lr)
        if not 0 < t.short_run_cap <= 1:
            raise UserError(f"train.short_run_cap={t.short_run_cap}: the share of a run's steps that warmup and the "
                            "EMA window may span, in (0, 1]; 1 leaves them uncapped")
        total = t.epochs * steps
        cap = max(1, round(t.short_run_cap * total))  # steps the warmup and the EMA window may span
        warmup = min(round(t.warmup_epochs * steps), cap)
        scheduler = build_scheduler(optimizer, total, warmup, t.min_lr_ratio)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        # timm's warmup grows the EMA window as (1 + step)^(2/3); the ceiling keeps it within the cap at the end
        ema = ModelEmaV3(model, decay=min(t.ema_decay, 1 - 1 / cap), use_warmup=True) if t.ema else NoEMA()
        return cls(model, net, ema, optimizer, scheduler, scaler, lr, steps, device, dtype, warmup)

    def weights(self) -> dict[str, nn.Module]:
        """The weights evaluated each epoch: raw, and EMA when it is on."""
        return {"model": self.model} | ({"ema": self.ema.module} if self.ema.module is not None else {})

    def state_dict(self) -> dict:
        """Everything a resume needs, RNG states included (weights_only-loadable)."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema.module is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": vars(self.progress).copy(),
            "metrics": self.metrics,
            "rng": checkpoint.rng_state(),
        }

    def snapshot(self) -> dict:
        """state_dict() detached from the live tensors: an in-memory copy to roll back to."""
        return deepcopy(self.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema.module is not None and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        self.progress, self.metrics = Progress(**state["progress"]), list(state["metrics"])

    def scale_lr(self, factor: float) -> None:
        """Multiply the LR from here on (the schedule's base LRs and the current one)."""
        self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
