"""AdamW with sensible parameter groups, LR scaling by batch size, and warmup + cosine per optimizer step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.core.config import TrainConfig
from pipeline.core.errors import UserError


@dataclass(frozen=True)
class ResolvedLR:
    lr: float  # peak LR actually used for the head
    effective_batch: int  # samples per optimizer step across all processes
    rule: str  # linear | sqrt | none

    def __str__(self) -> str:
        return f"lr={self.lr:.3g} (effective batch {self.effective_batch}, {self.rule} scaling)"


def scale_lr(cfg: TrainConfig, world_size: int = 1) -> ResolvedLR:
    """lr = base_lr x (batch x accum x world) / base_batch, linearly or by its square root."""
    effective = cfg.batch_size * cfg.accum_steps * world_size
    ratio = effective / cfg.base_batch
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scale]
    return ResolvedLR(lr=cfg.base_lr * factor, effective_batch=effective, rule=cfg.lr_scale)


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float,
                 layer_lr_decay: float = 1.0) -> list[dict]:
    """(backbone | head) x (decay | no decay) groups; norms, biases and 1-d params never decay. With layer-wise
    decay (a model with lr_layer(name): 0 for the embeddings .. num_layers + 1 above the last layer), backbone
    groups are split by layer as well: layer i gets the backbone LR x decay^(num_layers + 1 - i)."""
    if layer_lr_decay != 1.0 and not hasattr(model, "lr_layer"):
        raise UserError(f"train.layer_lr_decay={layer_lr_decay}: this model has no layers to decay over "
                        "(hf: encoders do); leave it at 1.0")
    if not 0 < layer_lr_decay <= 1:
        raise UserError(f"train.layer_lr_decay={layer_lr_decay}: expected a factor in (0, 1]; 1.0 turns it off")
    head_get = getattr(model, "get_classifier", None)
    head_ids = {id(p) for p in head_get().parameters()} if head_get else set()
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    top = getattr(model, "num_layers", 0) + 1
    groups: dict[tuple[bool, bool, int], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and name not in skip and not name.endswith(".bias")
        head = id(p) in head_ids
        layer = top if head or layer_lr_decay == 1.0 else model.lr_layer(name)
        groups.setdefault((head, decay, layer), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0,
         "lr": lr if head else lr * backbone_lr_mult * layer_lr_decay ** (top - layer)}
        for (head, decay, layer), params in groups.items()
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, lr, cfg.weight_decay, cfg.backbone_lr_mult, cfg.layer_lr_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), foreach=True)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float):
    """Multiplier on each group's LR: linear warmup from ~0 to 1, then cosine down to min_ratio."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
