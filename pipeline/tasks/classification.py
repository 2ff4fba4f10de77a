"""Image classification: a timm backbone, cross-entropy with label smoothing, optional mixup/cutmix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from pipeline.cache import cached_images, cached_side
from pipeline.config import Config
from pipeline.data import (
    ImageDataset,
    ImageFiles,
    check_images,
    check_test_labels,
    image_paths,
    read_test,
    read_train,
)
from pipeline.duplicates import file_hashes
from pipeline.ensemble import Blend, blend_probabilities
from pipeline.errors import UserError
from pipeline.metrics import METRICS, logloss
from pipeline.models import build_model, normalisation
from pipeline.submission import check_labels, decode
from pipeline.transforms import build_transforms
from pipeline.tta import View, build_views, stack_views

RESERVED = {"id", "target", "fold"}  # prediction-frame columns that class names may not take


def build_images(cfg: Config, ids) -> Sequence[np.ndarray]:
    """The images of these ids: decoded from their files, or read from the decoded cache (data.cache)."""
    paths = image_paths(cfg, ids)
    if not cfg.data.cache:
        return ImageFiles(paths)
    every = image_paths(cfg, pd.concat([read_train(cfg)[cfg.data.id_col], read_test(cfg)[cfg.data.id_col]]))
    side = cached_side(cfg.image.size, cfg.image.cache_margin)
    return cached_images(paths, every, side, cfg.cache_dir)


def read_test_images(cfg: Config, check: bool = False) -> pd.DataFrame:
    """test.csv, one row per image; check=True decodes every image (prepare does)."""
    test = read_test(cfg)
    paths = image_paths(cfg, test[cfg.data.id_col])
    if check and cfg.data.check_images:
        check_images(paths, cfg.data_path("test_csv"))
    return test


class ClassificationTask:
    def __init__(self, cfg: Config, classes: list):
        clash = RESERVED & {str(c) for c in classes}
        if clash:
            raise UserError(f"class label(s) {sorted(clash)} clash with prediction columns id/target/fold; rename them")
        self.cfg, self.classes = cfg, classes
        self.index = {c: i for i, c in enumerate(classes)}
        self.metric = METRICS[cfg.train.metric]
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        a = cfg.augment
        mixing = a.mixup_alpha > 0 or a.cutmix_alpha > 0
        if mixing and cfg.train.batch_size % 2:
            raise UserError(f"mixup/cutmix pairs samples within a batch: make train.batch_size even (is {cfg.train.batch_size})")
        smoothing = cfg.train.label_smoothing
        # Mixup makes soft targets (with the smoothing folded in), so the loss must take soft targets too.
        self.mixup = Mixup(mixup_alpha=a.mixup_alpha, cutmix_alpha=a.cutmix_alpha, prob=a.mix_prob,
                           label_smoothing=smoothing, num_classes=len(classes)) if mixing else None
        self.criterion = SoftTargetCrossEntropy() if mixing else nn.CrossEntropyLoss(label_smoothing=smoothing)
        self.mean, self.std = None, None

    @staticmethod
    def sample_table(cfg: Config) -> tuple[pd.DataFrame, list]:
        """train.csv (one row per image) and its sorted labels, after checking every image decodes."""
        train = read_train(cfg)
        paths = image_paths(cfg, train[cfg.data.id_col])  # refuses ids that leave data.root, even unchecked
        if cfg.data.check_images:
            check_images(paths, cfg.data_path("train_csv"))
        if cfg.data.cache:
            build_images(cfg, [])  # decode every train and test image into the cache now, not in fold 0's epoch 1
        return train, sorted(train[cfg.data.target_col].unique().tolist())

    @staticmethod
    def test_table(cfg: Config, check: bool = False) -> pd.DataFrame:
        """test.csv (read_test_images); a label column in it (a labelled hold-out) may only hold train's labels."""
        test = read_test_images(cfg, check)
        target = cfg.data.target_col
        if target in test.columns:
            check_test_labels(test, cfg.data_path("test_csv"), target, read_train(cfg)[target].unique())
        return test

    @staticmethod
    def fingerprints(cfg: Config, table: pd.DataFrame) -> list[str] | None:
        """A content hash per row (its image file's bytes), for duplicate detection at prepare."""
        return file_hashes(image_paths(cfg, table[cfg.data.id_col]))

    def fit_fold(self, train_rows: pd.DataFrame) -> dict:
        """Preprocessing fitted on a fold's training rows, saved as fold{k}/preprocess.json: none for images."""
        return {}

    def load_fold(self, state: dict) -> None:
        pass

    def views(self, spec: str) -> list[View]:
        return build_views(spec, self.cfg.augment)

    def build_model(self) -> nn.Module:
        model = build_model(self.cfg.model, len(self.classes))
        self.mean, self.std = normalisation(model, self.cfg.image.mean, self.cfg.image.std)
        return model

    def build_dataset(self, rows: pd.DataFrame, train: bool) -> ImageDataset:
        if self.mean is None:
            raise RuntimeError("build_model() sets the normalisation; call it before build_dataset()")
        transform = build_transforms(self.cfg.image, self.cfg.augment, train, self.mean, self.std)
        labels = rows["target"].map(self.index).to_numpy() if "target" in rows else None
        return ImageDataset(build_images(self.cfg, rows["id"]), labels, transform)


    def to_device(self, batch, device: torch.device):
        x, y = batch
        return x.to(device, non_blocking=True, memory_format=self.memory_format), y.to(device, non_blocking=True)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None and model.training:
            x, y = self.mixup(x, y)
        return self.criterion(model(x), y)

    def predict(self, model: nn.Module, batch, views: list[View]) -> torch.Tensor:
        """[V, B, C] class probabilities: every TTA view of the batch in a single forward pass."""
        x = stack_views(batch[0], views).contiguous(memory_format=self.memory_format)
        return model(x).float().softmax(dim=1).view(len(views), len(batch[0]), -1).cpu()

    def gather(self, chunks: list[torch.Tensor]) -> np.ndarray:
        """[V, N, C] from per-batch [V, B, C] outputs."""
        return torch.cat(chunks, dim=1).numpy()

    def merge(self, outputs: list[np.ndarray], weights=None) -> np.ndarray:
        """Average several predictions of the same rows (TTA views, folds)."""
        return np.average(np.stack(outputs), axis=0, weights=weights).astype(np.float32)

    def evaluate(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        return {"loss": logloss(targets, outputs), "score": self.metric(targets, outputs)}

    def prediction_frame(self, rows: pd.DataFrame, outputs: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame(outputs.astype(self.cfg.predict.dtype), columns=[str(c) for c in self.classes])
        keys = rows[[c for c in ("id", "target", "fold") if c in rows]].reset_index(drop=True)
        return pd.concat([keys, frame], axis=1)

    def blend(self, method: str, oofs: list[np.ndarray], tests: list[np.ndarray], target: np.ndarray,
              folds: np.ndarray) -> Blend:
        return blend_probabilities(method, oofs, tests, target, folds, self.metric)

    def submission(self, test: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
        return decode(test, sample, self.cfg, self.classes)

    def check_submission(self, sub: pd.DataFrame) -> None:
        check_labels(sub, self.classes, self.cfg)

    def read_outputs(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[[str(c) for c in self.classes]].to_numpy(dtype=np.float32)

    def targets(self, frame: pd.DataFrame) -> np.ndarray:
        index = {str(c): i for i, c in enumerate(self.classes)}
        return frame["target"].astype(str).map(index).to_numpy(dtype=np.int64)
