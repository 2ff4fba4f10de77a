"""Run under torchrun by tests/test_distributed.py: how many gradient all-reduces DDP makes in train_epoch.

    torchrun --nproc_per_node=2 tests/ddp_probe.py CONFIG ACCUM_STEPS OPTIMIZER_STEPS

Prints (rank 0) one JSON line: {"allreduces": N, "steps": S}. The comm hook is DDP's own allreduce, counted.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from pipeline.core import distributed
from pipeline.core.config import load_config
from pipeline.data.folds import load_folds
from pipeline.data.tables import build_loader
from pipeline.engine.loop import pick_device, train_epoch
from pipeline.engine.state import TrainingState, steps_per_epoch
from pipeline.tasks import build_task

config, accum, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
world = distributed.init()
cfg = load_config(config, [f"train.accum_steps={accum}"])
folds = load_folds(cfg)
task = build_task(cfg, folds.classes)
train_rows, _ = folds.split(0)
task.fit_fold(train_rows)
model = task.build_model()
loader = build_loader(task.build_dataset(train_rows, train=True), cfg, True, cfg.train.batch_size, seed=0)
device = pick_device()
state = TrainingState.build(model, cfg, steps_per_epoch(len(loader), cfg), device,
                            torch.float32, task.memory_format)
calls = [0]


def counted(process_group, bucket):
    calls[0] += 1
    return allreduce_hook(process_group, bucket)


state.net.register_comm_hook(None, counted)
train_epoch(task, state, loader, cfg, 0, max_steps=steps)
if world.main:
    print(json.dumps({"allreduces": calls[0], "steps": state.progress.step}))
dist.destroy_process_group()
