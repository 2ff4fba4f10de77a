"""Albumentations pipelines for training (random crops, flips, colour) and validation (resize only), yielding uint8
images; Normalize turns a batch of them into the model's input on its device."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from pipeline.core.config import AugmentConfig, ImageConfig

SCALE_MIN = 0.35  # the training crop's smallest area fraction where augment.scale_min is null (config.py says why)
INTERPOLATION = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


def build_transforms(image: ImageConfig, aug: AugmentConfig, train: bool) -> A.Compose:
    """Train: RandomResizedCrop + flips + colour jitter; valid/test: the short side to image.size / crop_pct and
    the centre image.size square, so the aspect ratio is kept as training's crops keep it (a plain resize squashed
    non-square images). Both end in uint8 [C, H, W] tensors: Normalize runs on the batch."""
    size = (image.size, image.size)
    resample = INTERPOLATION[image.interpolation]
    if not train:
        return A.Compose([A.SmallestMaxSize(max_size=int(round(image.size / image.crop_pct)), interpolation=resample),
                          A.CenterCrop(*size), ToTensorV2()])
    steps = [
        A.RandomResizedCrop(size=size, scale=(aug.smallest_crop(SCALE_MIN), 1.0), interpolation=resample),
        A.HorizontalFlip(p=aug.hflip),
        A.VerticalFlip(p=aug.vflip),
        A.RandomRotate90(p=aug.rotate90),
    ]
    if aug.color_jitter > 0:
        s = aug.color_jitter
        steps.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0.0, p=0.8))
    return A.Compose([*steps, ToTensorV2()])


class Normalize:
    """A uint8 [B, C, H, W] batch to the model's float32 input, on the batch's device: (x - 255·mean) · 1/(255·std)
    per channel, with the float32 constants and the two operations albumentations' Normalize applies to a uint8
    image (its per-channel lookup table), so the values are bit for bit the ones a per-sample Normalize gave.
    Per sample it cost a float copy of every image, collated and moved at four times the bytes; on the batch it is
    two passes on the device, and the loader moves uint8."""

    def __init__(self, mean, std):
        reference = A.Normalize(mean=mean, std=std)
        self.mean = torch.from_numpy(np.asarray(reference.mean_np, np.float32)).view(1, -1, 1, 1)
        self.scale = torch.from_numpy(np.asarray(reference.denominator, np.float32)).view(1, -1, 1, 1)
        ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], len(mean), axis=2)  # every value, per channel
        table = torch.from_numpy(reference(image=ramp)["image"][:, 0, :].T.copy())[None, :, :, None]
        if not torch.equal(self(torch.from_numpy(ramp[:, 0, :].T.copy())[None, :, :, None]), table):
            raise RuntimeError("albumentations' Normalize changed its arithmetic; update pipeline Normalize to match")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:  # moved once, not copied to the GPU with every batch
            self.mean, self.scale = self.mean.to(x.device), self.scale.to(x.device)
        return x.to(torch.float32, copy=True).sub_(self.mean).mul_(self.scale)  # in place: one new tensor, same ops
