"""CUDA paths, run where a GPU is (`pytest -m gpu`, or `make gpu-check`); skipped without one. Every test here
trains or predicts through the same code as on the CPU: the GPU changes the precision, memory format, compiled
kernels, batch size and process group, and these check that each of them is what was asked and still repeats."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from pipeline.core import precision
from pipeline.engine import loop
from pipeline.runs import checkpoint
from pipeline.stages import prepare, train
from tests.test_reliability import assert_same_fold

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def expected_auto() -> torch.dtype:
    return precision.choose_precision("auto", "cuda", torch.cuda.get_device_capability())


def test_the_auto_precision_is_the_one_the_forward_runs_in(competition, make_config, monkeypatch):
    """train.precision=auto picks by compute capability, and the training forward really runs in it."""
    from pipeline.tasks.classification.task import ClassificationTask

    seen, real = [], ClassificationTask.loss

    def spy(task, model, batch, mix=True):
        seen.append(torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.float32)
        return real(task, model, batch, mix)

    monkeypatch.setattr(ClassificationTask, "loss", spy)
    _, cfg = make_config(competition, train={"epochs": 1})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    assert seen and set(seen) == {expected_auto()}


def test_fp16_grad_scaler_skips_a_step_with_inf_gradients():
    from pipeline.core.config import Config
    from pipeline.engine.state import TrainingState

    cfg = Config()
    model = torch.nn.Linear(8, 2)
    state = TrainingState.build(model, cfg, steps=10, device=torch.device("cuda"), dtype=torch.float16)
    assert state.scaler.is_enabled()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale = state.scaler.get_scale()
    x = torch.randn(4, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(x).float().sum() * float("inf")
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the step was skipped
    assert state.scaler.get_scale() < scale  # and the scale backed off

    state.optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(x).float().sum()
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    assert not torch.equal(before["weight"], model.weight)  # a finite step goes through


def test_fp16_training_with_channels_last_trains_and_writes_fp32_checkpoints(competition, make_config):
    _, cfg = make_config(competition, train={"epochs": 2, "precision": "fp16", "channels_last": True},
                         model={"name": "test_resnet"})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    metrics = pd.read_csv(cfg.run_dir / "fold0/metrics.csv")
    assert metrics["train/loss"].notna().all()
    state = checkpoint.load(cfg.run_dir / "fold0/best.pt")
    assert all(v.dtype != torch.float16 for v in state["model"].values())
    assert state["scaler"]["scale"] > 0  # the GradScaler ran


def test_channels_last_is_the_memory_format_on_the_gpu():
    from pipeline.core.config import Config
    from pipeline.engine.state import TrainingState
    from pipeline.tasks.classification.task import ClassificationTask

    cfg = Config()
    cfg.model.name, cfg.model.pretrained = "test_resnet", False
    task = ClassificationTask(cfg, ["a", "b"])
    model = task.build_model()
    TrainingState.build(model, cfg, 10, torch.device("cuda"), torch.float32, task.memory_format)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compiled_training_on_the_gpu(competition, make_config):
    _, cfg = make_config(competition, train={"epochs": 1, "compile": True})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    state = checkpoint.load(cfg.run_dir / "fold0/best.pt")
    assert not any(k.startswith("_orig_mod") for k in state["model"])


def test_deterministic_resume_is_bit_for_bit(competition, make_config, monkeypatch):
    from tests.conftest import interrupt_at_epoch

    sections = {"train": {"epochs": 3, "patience": 0, "deterministic": True}}
    _, whole = make_config(competition, name="whole", **sections)
    prepare.run(whole)
    train.run(whole, fold=0)
    _, cfg = make_config(competition, name="resumed", **sections)
    prepare.run(cfg)
    real = interrupt_at_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, fold=0)
    monkeypatch.setattr(loop, "train_epoch", real)
    train.run(cfg, fold=0)
    assert_same_fold(whole.run_dir, cfg.run_dir)


def test_auto_batch_size_fits_and_scales_the_lr(competition, make_config, caplog):
    _, cfg = make_config(competition, train={"epochs": 1, "batch_size": "auto"})
    prepare.run(cfg)
    with caplog.at_level("INFO", logger="pipeline"):
        train.run(cfg, fold=0)
    state = checkpoint.load(cfg.run_dir / "fold0/best.pt")
    chosen = state["config"]["train"]["batch_size"]
    assert isinstance(chosen, int) and chosen >= 16 and "train.batch_size=auto: batch" in caplog.text
    assert f"effective batch {chosen}" in caplog.text


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_train_one_fold_with_nccl(competition, make_config):
    path, cfg = make_config(competition, train={"epochs": 1, "sync_bn": True})
    prepare.run(cfg)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "pipeline", "train", "--config", str(path), "--fold", "0"],
                            capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (cfg.run_dir / "fold0/oof.parquet").is_file()


def test_training_with_gpu_augmentation(competition, make_config, caplog, monkeypatch):
    from pipeline.tasks.classification.gpu_augment import GpuAugment

    batches, real = [], GpuAugment.__call__

    def spy(self, images, seeds):
        batches.append((images.device.type, images.dtype))
        return real(self, images, seeds)

    monkeypatch.setattr(GpuAugment, "__call__", spy)
    _, cfg = make_config(competition, train={"epochs": 2}, augment={"on_gpu": True, "vflip": 0.5, "rotate90": 0.5})
    prepare.run(cfg)
    with caplog.at_level("INFO", logger="pipeline"):  # the fallback is said at INFO, before train's log file
        train.run(cfg, fold=0)
    metrics = pd.read_csv(cfg.run_dir / "fold0/metrics.csv")
    assert metrics["train/loss"].notna().all() and (cfg.run_dir / "fold0/oof.parquet").is_file()
    assert "no CUDA device here" not in caplog.text and "fold 0: 100 train / 50 valid rows" in caplog.text
    assert batches == [("cuda", torch.uint8)] * (2 * (100 // 16))  # every training batch augmented on the GPU
