"""`train.batch_size: auto`: the largest batch that fits in a share of the GPU's memory (like Ultralytics' AutoBatch).

Trial steps (forward and backward of real training batches, under the run's autocast) at a few small batch sizes
measure peak memory; a line through them gives the batch at train.auto_batch_fraction of the device's memory, less
what the optimizer's moments and the EMA copy will hold. It is rounded down to a multiple of 8 (tensor-core
shapes) and tried once; an out-of-memory halves it until a step fits. The LR then follows by the usual scaling
rule (pipeline.engine.optim). Off CUDA there is no memory to measure: the default batch size is used, and said.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from pipeline.core.config import Config, TrainConfig
from pipeline.data.tables import build_loader
from pipeline.engine.loop import autocast, resolve_precision
from pipeline.engine.task import Task
from pipeline.runs import checkpoint

log = logging.getLogger(__name__)
DEFAULT = TrainConfig.batch_size  # off CUDA, and the fallback
PROBES = (2, 4, 8, 16)  # the batch sizes measured
MULTIPLE = 8


def resolve_batch_size(cfg: Config, task: Task, model: nn.Module, dataset, device: torch.device) -> Config:
    """cfg with train.batch_size a number: as configured, or (auto) chosen here."""
    if cfg.train.batch_size != "auto":
        return cfg
    if device.type != "cuda":
        chosen = DEFAULT
        log.info("train.batch_size=auto: no GPU memory to measure on %s; batch size %d (the default)", device.type,
                 chosen)
    else:
        chosen = auto_batch(cfg, task, model, dataset, device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=chosen))


def auto_batch(cfg: Config, task: Task, model: nn.Module, dataset, device: torch.device) -> int:
    """The batch size for this model and data on this GPU (see the module docstring)."""
    dtype = resolve_precision(cfg.train.precision, device)
    total = torch.cuda.get_device_properties(device).total_memory
    budget = cfg.train.auto_batch_fraction * total
    model.to(device, memory_format=task.memory_format)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    fixed = params * (2 + (1 if cfg.train.ema else 0))  # AdamW's two moments and the EMA copy, not yet allocated
    limit = max(MULTIPLE, len(dataset) // 2)  # a batch is never more than half the fold (drop_last, mixup pairs)
    # the trials update BatchNorm statistics and draw from the RNGs: training starts from what was here before
    weights, rng = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, checkpoint.rng_state()
    try:
        probe = partial(trial_step, cfg, task, model, dataset, device, dtype)  # batch size -> peak bytes or None
        chosen, measured = _search(probe, budget - fixed, limit)
        if measured:
            log.info("train.batch_size=auto: batch %d (%.0f%% of %.1f GiB on %s; %s)", chosen,
                     100 * cfg.train.auto_batch_fraction, total / 2**30, torch.cuda.get_device_name(device), measured)
        return chosen
    finally:
        model.load_state_dict(weights)
        checkpoint.set_rng_state(rng)
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def _search(probe: Callable[[int], float | None], budget: float, limit: int) -> tuple[int, str]:
    """(the batch whose trial step's peak memory, on a line through the probes' peaks, fits the budget, what was
    measured); halved while a trial at it runs out of memory."""
    measured = {}
    for b in (b for b in PROBES if b <= limit):
        peak = probe(b)
        if peak is None:
            break
        measured[b] = peak
    if len(measured) < 2:
        chosen = max(1, min(measured or {1: 0}))
        log.warning("train.batch_size=auto: only batch %d fits a trial step; using it", chosen)
        return chosen, ""
    sizes, peaks = list(measured), list(measured.values())
    slope = (peaks[-1] - peaks[0]) / (sizes[-1] - sizes[0])
    intercept = peaks[0] - slope * sizes[0]
    estimate = int((budget - intercept) / max(slope, 1.0))
    chosen = max(sizes[-1], min(limit, estimate) // MULTIPLE * MULTIPLE)
    while chosen > sizes[-1] and probe(chosen) is None:
        chosen = max(sizes[-1], chosen // 2 // MULTIPLE * MULTIPLE)
    return chosen, f"{slope / 2**20:.1f} MiB per sample, measured at {', '.join(map(str, sizes))}"


def trial_step(cfg: Config, task: Task, model: nn.Module, dataset, device: torch.device, dtype: torch.dtype,
               batch_size: int) -> int | None:
    """Peak bytes of one forward and backward at batch_size, or None when it runs out of memory."""
    probe = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size, num_workers=0))
    batch = task.to_device(next(iter(build_loader(dataset, probe, True, batch_size, seed=0))), device)
    model.train()
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        with autocast(device, dtype):
            loss = task.loss(model, batch)
        loss.backward()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    except torch.OutOfMemoryError:
        return None
    finally:
        del batch
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
