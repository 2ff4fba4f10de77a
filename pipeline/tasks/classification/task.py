"""Image classification and regression: a timm backbone with a head for the target type (pipeline.scoring.targets:
classes, a binary or multilabel probability, a value or a grade), label smoothing, optional mixup/cutmix."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.data import Mixup
from torch import nn

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.data.cache import cached_images, cached_side
from pipeline.data.images import (
    ImageDataset,
    ImageFiles,
    check_images,
    image_drift_features,
    image_hashes,
    image_paths,
    read_test_images,
)
from pipeline.data.labels import label_set, settle_target
from pipeline.data.submission import score_against_solution
from pipeline.data.tables import check_test_labels, read_test, read_train
from pipeline.engine.models import build_classifier, normalisation, zero_head
from pipeline.engine.task import Demo
from pipeline.scoring.tta import View, build_views, run_views
from pipeline.tasks.base import ClassProbabilities
from pipeline.tasks.classification.demo_data import write_digits_competition
from pipeline.tasks.classification.gpu_augment import GpuAugment, UInt8Dataset, canvas_side
from pipeline.tasks.classification.transforms import INTERPOLATION, SCALE_MIN, Normalize, build_transforms

log = logging.getLogger(__name__)


def build_images(cfg: Config, ids) -> Sequence[np.ndarray]:
    """The images of these ids: decoded from their files, or read from the decoded cache (data.cache)."""
    paths = image_paths(cfg, ids)
    if not cfg.data.cache:
        return ImageFiles(paths, cfg.image.max_pixels)
    every = image_paths(cfg, pd.concat([read_train(cfg)[cfg.data.id_col], read_test(cfg)[cfg.data.id_col]]))
    side = cached_side(cfg.image.size, cfg.augment.smallest_crop(SCALE_MIN), cfg.image.cache_margin)
    return cached_images(paths, every, side, cfg.cache_dir, cfg.image.max_pixels)


class ClassificationTask(ClassProbabilities):
    demo = Demo("data/demo-digits", lambda root: write_digits_competition(root, size=32),
                ("demo-resnet.yaml", "demo-effnet.yaml"), "demo-ensemble",
                lambda sub, sol, cfg: {"accuracy": score_against_solution(sub, sol, cfg)})
    has_gpu_augment = True  # augment.on_gpu: crops, flips, turns and colour on the device (gpu_augment.py)

    def __init__(self, cfg: Config, classes: list):
        super().__init__(cfg, classes)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        a = cfg.augment
        mixing = a.mixup_alpha > 0 or a.cutmix_alpha > 0
        if mixing and cfg.train.batch_size != "auto" and cfg.train.batch_size % 2:  # auto picks an even batch
            raise UserError(f"mixup/cutmix pairs samples within a batch: make train.batch_size even (is {cfg.train.batch_size})")
        # Mixup makes soft targets (with the smoothing folded in); the target's loss takes them (pipeline.scoring.targets).
        self.mixup = Mixup(mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha, prob=a.mix_prob,
                           label_smoothing=cfg.train.label_smoothing, num_classes=max(1, len(classes))) if mixing else None
        self.mean, self.std = None, None

    @staticmethod
    def sample_table(cfg: Config) -> tuple[pd.DataFrame, list]:
        """train.csv (one row per image) and its label set (pipeline.data.labels: the target type is settled and logged
        here), after checking every image decodes."""
        train = read_train(cfg)
        kind, classes = label_set(cfg, train, cfg.data_path("train_csv"))
        settle_target(cfg, kind, classes)
        paths = image_paths(cfg, train[cfg.data.id_col])  # refuses ids that leave data.root, even unchecked
        if cfg.data.check_images:
            check_images(paths, cfg.data_path("train_csv"), max_pixels=cfg.image.max_pixels)
        if cfg.data.cache:
            build_images(cfg, [])  # decode every train and test image into the cache now, not in fold 0's epoch 1
        return train, classes

    @staticmethod
    def test_table(cfg: Config, check: bool = False) -> pd.DataFrame:
        """test.csv (read_test_images); a label column in it (a labelled hold-out) may only hold train's labels."""
        test = read_test_images(cfg, check)
        target = cfg.data.target_col
        # a labelled hold-out's labels against train's (pipeline infer has no train.csv: nothing to check against)
        if target in test.columns and cfg.data.target_type in ("auto", "multiclass", "binary") and \
                cfg.data_path("train_csv").is_file():
            check_test_labels(test, cfg.data_path("test_csv"), target, read_train(cfg)[target].unique())
        return test

    fingerprints = staticmethod(image_hashes)
    drift_features = staticmethod(image_drift_features)

    @staticmethod
    def input_size(cfg: Config) -> int:
        return cfg.image.size

    def views(self, spec: str) -> list[View]:
        return build_views(spec, self.cfg.augment)

    def build_model(self) -> nn.Module:
        model = build_classifier(self.cfg.model, self.target.width)
        if self.target.kind != "multiclass":  # probabilities of independent labels, values: start neutral
            zero_head(model)
        self.mean, self.std = normalisation(model, self.cfg.image.mean, self.cfg.image.std)
        self.normalize = Normalize(self.mean, self.std)
        return model

    def build_dataset(self, rows: pd.DataFrame, train: bool) -> ImageDataset:
        if self.mean is None:
            raise RuntimeError("build_model() sets the normalisation; call it before build_dataset()")
        if train and self.augments_on_gpu():
            self.gpu_augment = GpuAugment(self.cfg.image, self.cfg.augment, self.mean, self.std)
            return UInt8Dataset(build_images(self.cfg, rows["id"]), self.labels(rows),
                                canvas_side(self.cfg.image, self.cfg.augment), INTERPOLATION[self.cfg.image.interpolation])
        transform = build_transforms(self.cfg.image, self.cfg.augment, train)
        return ImageDataset(build_images(self.cfg, rows["id"]), self.labels(rows), transform)

    def augments_on_gpu(self) -> bool:
        """augment.on_gpu where this process has CUDA; said once where it has not."""
        if not self.cfg.augment.on_gpu:
            return False
        if torch.cuda.is_available():
            return True
        if not getattr(self, "_said_no_gpu", False):
            log.info("augment.on_gpu: no CUDA device here; training batches are augmented on the CPU")
            self._said_no_gpu = True
        return False

    def to_device(self, batch, device: torch.device):
        if len(batch) == 3:  # uint8 training images and their seeds (augment.on_gpu): augmented here, batched
            x, y, seeds = batch
            x = self.gpu_augment(x.to(device, non_blocking=True), seeds)
            return x.contiguous(memory_format=self.memory_format), y.to(device, non_blocking=True)
        x, y = batch  # uint8 images: normalised here, a quarter of the bytes to collate and move
        x = self.normalize(x.to(device, non_blocking=True, memory_format=self.memory_format))
        return x, y.to(device, non_blocking=True)

    def loss(self, model: nn.Module, batch, mix: bool = True) -> torch.Tensor:
        x, y = batch
        if mix and self.mixup is not None and model.training:
            x, y = self.mix(x, y, self.mixup)
        return self.target.loss(model(x), y)

    def infer_batch(self, model: nn.Module, batch, views: list[View]) -> torch.Tensor:
        """[V, B, C] outputs (probabilities or values): every TTA view of the batch in a single forward pass."""
        def forward(x):
            return self.target.activate(model(x.contiguous(memory_format=self.memory_format)))
        return torch.stack(run_views(forward, batch[0], views)).cpu()

    def report_sections(self, oof: pd.DataFrame, out: Path) -> list:
        """The shared confusion and per-class sections, then the highest-loss OOF images."""
        from pipeline.tasks.classification.report import (
            hardest_images,  # matplotlib only when a report is drawn
        )

        sections = super().report_sections(oof, out)
        if self.target.kind != "multiclass":
            return sections
        truth, probs = self.targets(oof), self.read_outputs(oof).astype(np.float64)
        return [*sections, hardest_images(self.cfg, oof, probs, truth, [str(c) for c in self.classes], out)]
