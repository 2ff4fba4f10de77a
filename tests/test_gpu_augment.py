"""augment.on_gpu: the batched device augmentation draws the CPU path's family from each sample's own seed. The
module is device-agnostic, so its draws and geometry are checked here on the CPU (tests/test_gpu.py trains with it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.config import AugmentConfig, ImageConfig
from pipeline.core.seeding import SeededSampler, sample_seed
from pipeline.tasks.classification.gpu_augment import GpuAugment, UInt8Dataset, canvas_side

IMAGE = ImageConfig(size=32)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
OFF = AugmentConfig(scale_min=1.0, hflip=0.0, vflip=0.0, rotate90=0.0, color_jitter=0.0)  # a plain resize


def batch(n: int = 6, side: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, side, side), dtype=np.uint8))


def test_the_draws_repeat_per_seed_and_differ_between_seeds():
    aug = GpuAugment(IMAGE, AugmentConfig(hflip=0.5, vflip=0.5, rotate90=0.5, color_jitter=0.3), MEAN, STD)
    x, seeds = batch(), torch.tensor([sample_seed(0, 0, i) for i in range(6)])
    a, b = aug(x, seeds), aug(x, seeds)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32 and torch.equal(a, b)
    other = aug(x, torch.tensor([sample_seed(0, 1, i) for i in range(6)]))  # the next epoch's seeds
    assert all(not torch.allclose(a[i], other[i]) for i in range(6))
    assert torch.equal(aug(x[2:3], seeds[2:3]), a[2:3])  # a sample's draws do not depend on its batch
    plain = GpuAugment(IMAGE, OFF, MEAN, STD)(x, seeds)
    assert all(not torch.allclose(a[i], plain[i], atol=1e-2) for i in range(6))  # every image changed


def test_no_augmentation_is_a_plain_resize_then_normalisation():
    x = batch()
    out = GpuAugment(IMAGE, OFF, MEAN, STD)(x, torch.arange(6))
    resized = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    expected = (resized - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_flips_and_turns_act_on_the_crop_as_the_cpu_path_does():
    base = AugmentConfig(scale_min=0.5, hflip=0.0, vflip=0.0, rotate90=0.0, color_jitter=0.0)
    x, seeds = batch(), torch.arange(100, 106)
    plain = GpuAugment(IMAGE, base, MEAN, STD)(x, seeds)
    flipped = GpuAugment(IMAGE, dataclasses.replace(base, hflip=1.0), MEAN, STD)(x, seeds)
    torch.testing.assert_close(flipped, plain.flip(-1), atol=1e-5, rtol=0)
    vflipped = GpuAugment(IMAGE, dataclasses.replace(base, vflip=1.0), MEAN, STD)(x, seeds)
    torch.testing.assert_close(vflipped, plain.flip(-2), atol=1e-5, rtol=0)


def test_draw_rates_follow_the_probabilities():
    aug = GpuAugment(IMAGE, AugmentConfig(scale_min=0.35, hflip=0.5, vflip=0.25, rotate90=0.5, color_jitter=0.2),
                     MEAN, STD)
    p = aug.params(np.arange(4000))
    assert abs(p["hflip"].mean() - 0.5) < 0.03 and abs(p["vflip"].mean() - 0.25) < 0.03
    assert abs((p["turns"] > 0).mean() - 0.5 * 0.75) < 0.03  # a turn of 0 is among the four
    area = (2 * p["hw"]) * (2 * p["hh"])
    assert area.min() >= 0.35 - 1e-9 and area.max() <= 1 + 1e-9
    assert abs((p["jitter"] != 1).any(axis=1).mean() - 0.8) < 0.03 and p["jitter"].min() >= 0.8 - 1e-9


def test_the_loader_side_hands_over_uint8_squares_with_each_samples_seed():
    images = [np.full((40 + 10 * i, 60, 3), i, np.uint8) for i in range(4)]
    side = canvas_side(IMAGE, AugmentConfig())
    ds = UInt8Dataset(images, np.arange(4), side, 1)
    keys = list(SeededSampler(range(4), seed=7))
    image, label, seed = ds[keys[2]]
    assert image.dtype == torch.uint8 and image.shape == (3, side, side) and int(label) == 2
    assert int(seed) == sample_seed(7, 0, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests/test_gpu.py trains it on the GPU")
def test_off_cuda_the_setting_is_said_and_the_cpu_path_trains(competition, make_config, caplog):
    from pipeline.stages import prepare, train

    _, cfg = make_config(competition, train={"epochs": 1}, augment={"on_gpu": True})
    prepare.run(cfg)
    with caplog.at_level("INFO", logger="pipeline"):
        train.run(cfg, fold=0)
    assert "augment.on_gpu: no CUDA device here" in caplog.text and (cfg.run_dir / "fold0/oof.parquet").is_file()


def test_the_training_loader_and_to_device_augment_each_batch_and_repeat_an_epoch(competition, make_config,
                                                                                   monkeypatch):
    """The GPU path's glue, run on the CPU: with CUDA (faked while the dataset is built) training rows come as uint8
    squares with their seeds, to_device augments them, every image differs from its plain resize, and an epoch's
    draws repeat while the next epoch's differ."""
    from pipeline.data.folds import load_folds
    from pipeline.data.tables import build_loader
    from pipeline.stages import prepare
    from pipeline.tasks import build_task

    _, cfg = make_config(competition, augment={"on_gpu": True})
    prepare.run(cfg)
    folds = load_folds(cfg)
    task = build_task(cfg, folds.classes)
    task.build_model()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dataset = task.build_dataset(folds.split(0)[0], train=True)
    monkeypatch.undo()  # the loader and the augmentation run on the CPU
    assert isinstance(dataset, UInt8Dataset)
    loader = build_loader(dataset, cfg, True, 8, seed=3)
    plain = GpuAugment(cfg.image, OFF, task.mean, task.std)

    def first_batch(epoch: int):
        loader.sampler.set_epoch(epoch)
        images, labels, seeds = next(iter(loader))
        side = canvas_side(cfg.image, cfg.augment)
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, side, side)
        x, y = task.to_device((images, labels, seeds), torch.device("cpu"))
        assert x.shape == (8, 3, 32, 32) and torch.equal(y, labels)
        return images, seeds, x

    images, seeds, x = first_batch(0)
    unchanged = plain(images, seeds)
    assert all(not torch.allclose(x[i], unchanged[i], atol=1e-2) for i in range(8))  # augmented, every one
    again = first_batch(0)
    assert torch.equal(again[1], seeds) and torch.equal(again[2], x)  # the same epoch: the same draws
    assert not torch.equal(first_batch(1)[2], x)
