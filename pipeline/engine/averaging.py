"""Checkpoint averaging: keep a fold's best N epochs, average them into fold{k}/avg.pt, re-estimate BatchNorm.

Averaging the weights of several good epochs (SWA-style) lands in a flatter region than any one of them;
BatchNorm statistics of an average are not the average of statistics, so they can be re-measured on
training images (predict.bn_batches).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from pipeline.core import distributed
from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.data.folds import Folds
from pipeline.engine.task import Task
from pipeline.runs import checkpoint
from pipeline.runs.rundir import RunDir, best_weights

log = logging.getLogger(__name__)
BN_DATA = "train-augmented-shuffled"  # what BatchNorm is re-measured on; an avg.pt made otherwise is rebuilt


class TopEpochs:
    """top/epoch{e}.pt (in a fold's folder) for the n best epochs so far: raw and EMA weights, the epoch's score."""

    def __init__(self, top: Path, n: int, greater_is_better: bool):
        self.dir, self.n, self.sign = top, n, 1 if greater_is_better else -1

    def kept(self) -> list[tuple[float, Path]]:
        """(score, path) of the kept epochs, best first."""
        found = [(checkpoint.load(p, mmap=True)["score"], p) for p in self.dir.glob("epoch*.pt")]
        return sorted(found, key=lambda sp: -self.sign * sp[0])

    def offer(self, epoch: int, score: float, model: nn.Module, ema_module: nn.Module | None) -> None:
        if self.n <= 0 or not math.isfinite(score):  # NaN-scored weights are never averaged in
            return
        kept = self.kept()
        if len(kept) >= self.n and self.sign * score <= self.sign * kept[-1][0]:
            return
        checkpoint.save(self.dir / f"epoch{epoch:03d}.pt", {
            "score": score, "epoch": epoch, "model": model.state_dict(),
            "ema": ema_module.state_dict() if ema_module is not None else None})
        for _, path in self.kept()[self.n:]:
            path.unlink()


def together(kept: list[tuple[float, Path]], within: float) -> list[tuple[float, Path]]:
    """The kept epochs (best first) whose score is within `within` (a fraction) of the best one's."""
    if not kept:
        return kept
    best = kept[0][0]
    return [(s, p) for s, p in kept if abs(s - best) <= within * abs(best)]


def average_state_dicts(states: list[dict]) -> dict:
    """Element-wise mean of floating tensors; integer buffers (BN batch counters) come from the first state."""
    if not states:
        raise ValueError("nothing to average")
    out = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            out[key] = (sum(s[key].double() for s in states) / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, task: Task, device: torch.device, batches: int) -> int:
    """Reset BN running statistics and re-measure them (cumulative average) on up to `batches` batches of the
    loader: training-mode forwards without batch mixing, since mixed images are not what the model will see."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None = exact cumulative average over all batches seen
    model.train()
    seen = 0
    for seen, batch in enumerate(loader, start=1):
        task.loss(model, task.to_device(batch, device), mix=False)  # a training-mode forward
        if seen == batches:
            break
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    return seen


def averaged_weights(cfg: Config, task: Task, model: nn.Module, folds: Folds, k: int) -> dict:
    """fold{k}/avg.pt (built on first use): the mean of the kept top epochs, BN re-estimated if asked."""
    from pipeline.data.tables import build_loader

    fold = RunDir(cfg.run_dir).fold(k)
    avg_path = fold.avg
    source = "ema" if cfg.predict.avg_ema else "model"
    if avg_path.is_file():
        saved = checkpoint.load(avg_path)
        if saved["source"] == source and saved["bn_batches"] == cfg.predict.bn_batches and \
                saved.get("bn_data") == BN_DATA and saved.get("within") == cfg.predict.avg_within:
            return saved["model"]
    kept = together(TopEpochs(fold.top, cfg.train.keep_top, task.metric.greater_is_better).kept(),
                    cfg.predict.avg_within)
    states = [checkpoint.load(p)[source] for _, p in kept]
    if not states or any(s is None for s in states):
        raise UserError(f"{fold.top} holds no {source} epoch weights to average; train with "
                        "train.keep_top>=2 (and train.ema=true for predict.avg_ema) or use --weights best")
    model.load_state_dict(average_state_dicts(states))
    device = distributed.device()  # this process's device, as the loop picks it
    model.to(device, memory_format=task.memory_format)
    train_rows, _ = folds.split(k)
    # Shuffled, augmented training batches (seeded, as training's first epoch): the first N rows in file order
    # can be a few classes only, and un-augmented images are not what BatchNorm saw in training.
    batch = cfg.train.batch_size if cfg.train.batch_size != "auto" else cfg.predict.batch_size  # any size re-fits BN
    loader = build_loader(task.build_dataset(train_rows, train=True), cfg, True, batch, seed=cfg.seed + k)
    loader.sampler.set_epoch(0)
    seen = recalibrate_batchnorm(model, loader, task, device, cfg.predict.bn_batches)
    weights = {key: v.detach().cpu().clone() for key, v in model.state_dict().items()}  # not the model's own tensors
    checkpoint.save(avg_path, {"model": weights, "source": source, "bn_batches": cfg.predict.bn_batches, "bn_data": BN_DATA,
                               "within": cfg.predict.avg_within,
                               "epochs": [checkpoint.load(p, mmap=True)["epoch"] for _, p in kept]})
    log.info("fold %d: averaged %d epochs (%s weights), BatchNorm re-estimated on %d batches -> %s",
             k, len(states), source, seen, avg_path)
    return weights


def fold_weights(cfg: Config, task: Task, model, folds: Folds, k: int, choice: str) -> dict:
    """best: whichever of raw/EMA validated best; ema: the EMA weights of best.pt; avg: averaged top epochs."""
    if choice == "avg":
        return averaged_weights(cfg, task, model, folds, k)
    path = RunDir(cfg.run_dir).fold(k).best
    best = checkpoint.load(path)
    if choice == "ema":
        if best["ema"] is None:
            raise UserError(f"{path} has no EMA weights (trained with train.ema=false); use --weights best")
        return best["ema"]
    return best_weights(best)
