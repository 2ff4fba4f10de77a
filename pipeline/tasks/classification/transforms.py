"""Albumentations pipelines for training (random crops, flips, colour) and validation (resize only)."""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from pipeline.core.config import AugmentConfig, ImageConfig

INTERPOLATION = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


def build_transforms(image: ImageConfig, aug: AugmentConfig, train: bool, mean, std) -> A.Compose:
    """Train: RandomResizedCrop + flips + colour jitter; valid/test: the short side to image.size / crop_pct and
    the centre image.size square, so the aspect ratio is kept as training's crops keep it (a plain resize squashed
    non-square images). Both normalise."""
    size = (image.size, image.size)
    resample = INTERPOLATION[image.interpolation]
    if not train:
        return A.Compose([A.SmallestMaxSize(max_size=int(round(image.size / image.crop_pct)), interpolation=resample),
                          A.CenterCrop(*size),
                          A.Normalize(mean=mean, std=std), ToTensorV2()])
    steps = [
        A.RandomResizedCrop(size=size, scale=(aug.scale_min, 1.0), interpolation=resample),
        A.HorizontalFlip(p=aug.hflip),
        A.VerticalFlip(p=aug.vflip),
        A.RandomRotate90(p=aug.rotate90),
    ]
    if aug.color_jitter > 0:
        s = aug.color_jitter
        steps.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0.0, p=0.8))
    return A.Compose([*steps, A.Normalize(mean=mean, std=std), ToTensorV2()])
