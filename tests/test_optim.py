import math

import pytest
import timm
import torch

from pipeline.core.config import load_config
from pipeline.engine.optim import build_scheduler, param_groups, scale_lr


@pytest.mark.parametrize("rule, batch, accum, world, expected_lr, expected_batch", [
    ("linear", 64, 1, 1, 1e-3 * 64 / 256, 64),
    ("linear", 64, 4, 1, 1e-3, 256),           # accumulation counts toward the effective batch
    ("linear", 32, 2, 8, 2e-3, 512),           # and so does the world size
    ("sqrt", 64, 1, 1, 1e-3 * 0.5, 64),        # sqrt(64/256) = 0.5
    ("sqrt", 128, 2, 4, 1e-3 * 2.0, 1024),     # sqrt(1024/256) = 2
    ("none", 32, 4, 2, 1e-3, 256),
])
def test_lr_scaling_rules(rule, batch, accum, world, expected_lr, expected_batch):
    cfg = load_config(None, [f"train.lr_scale={rule}", f"train.batch_size={batch}", f"train.accum_steps={accum}",
                             "train.base_lr=1e-3", "train.base_batch=256"]).train
    resolved = scale_lr(cfg, world_size=world)
    assert resolved.lr == pytest.approx(expected_lr) and resolved.effective_batch == expected_batch
    assert f"effective batch {expected_batch}" in str(resolved)


def test_no_decay_on_norms_and_biases_and_lower_backbone_lr():
    model = timm.create_model("test_resnet", num_classes=5)
    groups = param_groups(model, lr=1.0, weight_decay=0.05, backbone_lr_mult=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            is_norm_or_bias = p.ndim <= 1
            assert (g["weight_decay"] == 0.0) == is_norm_or_bias, names[id(p)]
            assert g["lr"] == (1.0 if names[id(p)].startswith("fc.") else 0.1), names[id(p)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_warmup_then_cosine_per_step():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=110, warmup_steps=10, min_ratio=0.01)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.1 and all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # rising warmup
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(0.01, abs=1e-3)


@pytest.mark.parametrize("epochs, cap, warmup, ema_decay", [
    (6, 0.1, 6, 1 - 1 / 6),      # 6 epochs of 10 steps: a 1-epoch warmup would be a sixth of the run
    (30, 0.1, 10, 1 - 1 / 30),   # long enough: the configured epoch of warmup
    (6, 1.0, 10, 1 - 1 / 60),    # uncapped: as configured (a window of the whole run never binds timm's warmup)
])
def test_short_runs_cap_the_warmup_and_the_ema_window(epochs, cap, warmup, ema_decay):
    from pipeline.engine.state import TrainingState

    cfg = load_config(None, [f"train.epochs={epochs}", f"train.short_run_cap={cap}", "train.warmup_epochs=1"])
    state = TrainingState.build(timm.create_model("test_resnet", num_classes=3), cfg, 10, torch.device("cpu"),
                                torch.float32)
    assert state.warmup_steps == warmup
    assert state.ema.decay == pytest.approx(ema_decay)
