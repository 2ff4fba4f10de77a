"""Training augmentation on the GPU (`augment.on_gpu`): for a few CPU cores feeding a fast GPU (a Kaggle T4 box).

The loader workers only read each image (decoded cache or file) and bring it to a fixed uint8 square (short side to
`cached_side`, centre square): no float maths, no crops, no colour. On the device, one batched step does the rest
of the CPU path's family (pipeline.tasks.classification.transforms): RandomResizedCrop (scale [scale_min, 1],
ratio [3/4, 4/3]), horizontal/vertical flips and 90-degree turns, folded into one affine per sample and sampled
with a single `grid_sample`; brightness/contrast/saturation jitter (p 0.8); normalisation. Each sample's draws come
from its own seed (pipeline.core.seeding: seed, epoch, index), so they repeat with any number of workers or ranks and
after a resume. Validation and prediction keep the CPU path, so TTA and OOF are unchanged.
"""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.config import AugmentConfig, ImageConfig
from pipeline.core.seeding import unpack
from pipeline.data.cache import cached_side
from pipeline.data.images import ImageDataset
from pipeline.tasks.classification.transforms import SCALE_MIN

LUMA = (0.299, 0.587, 0.114)
TURNS = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, -1.0], [1.0, 0.0]],  # k quarter turns counter-clockwise
                      [[-1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [-1.0, 0.0]]])  # grey level for contrast and saturation, as albumentations' ColorJitter


def canvas_side(image: ImageConfig, aug: AugmentConfig) -> int:
    """The uint8 square the loader hands over: big enough that the smallest crop is not upsampled."""
    return cached_side(image.size, aug.smallest_crop(SCALE_MIN))


class UInt8Dataset(ImageDataset):
    """Training images as [3, S, S] uint8 tensors plus each sample's augmentation seed: (image, label, seed)."""

    def __init__(self, images, labels, side: int, interpolation: int):
        super().__init__(images, labels, A.Compose([A.SmallestMaxSize(max_size=side, interpolation=interpolation),
                                                    A.CenterCrop(side, side)]))

    def __getitem__(self, key):
        i, seed = unpack(key)
        image = self.transform(image=self.images[i])["image"]  # deterministic: no draws on the CPU
        seed = seed if seed is not None else i
        return (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), torch.as_tensor(self.labels[i]),
                torch.tensor(seed & (2**63 - 1), dtype=torch.int64))


class GpuAugment:
    """The batched device half of the GPU path: uint8 [B, 3, S, S] + seeds -> normalised float [B, 3, size, size]."""

    def __init__(self, image: ImageConfig, aug: AugmentConfig, mean, std):
        self.size, self.aug = image.size, aug
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def params(self, seeds) -> dict[str, np.ndarray]:
        """Each sample's draws from its own seed: crop centre and half-extent (as fractions), flips, turns, jitter."""
        a = self.aug
        out = {k: [] for k in ("cx", "cy", "hw", "hh", "hflip", "vflip", "turns", "jitter")}
        for seed in np.asarray(seeds, dtype=np.int64).tolist():
            rng = np.random.default_rng(seed)
            w, h = 1.0, 1.0  # albumentations' fallback: the whole image
            for _ in range(10):
                area = rng.uniform(a.smallest_crop(SCALE_MIN), 1.0)
                ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
                cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
                if cw <= 1 and ch <= 1:
                    w, h = cw, ch
                    break
            out["cx"].append(rng.uniform(w / 2, 1 - w / 2))
            out["cy"].append(rng.uniform(h / 2, 1 - h / 2))
            out["hw"].append(w / 2)
            out["hh"].append(h / 2)
            out["hflip"].append(rng.random() < a.hflip)
            out["vflip"].append(rng.random() < a.vflip)
            out["turns"].append(int(rng.integers(0, 4)) if rng.random() < a.rotate90 else 0)
            s = a.color_jitter
            on = s > 0 and rng.random() < 0.8
            out["jitter"].append(rng.uniform(max(0.0, 1 - s), 1 + s, 3) if on else np.ones(3))
        return {k: np.asarray(v) for k, v in out.items()}

    def __call__(self, images: torch.Tensor, seeds) -> torch.Tensor:
        p, device, n = self.params(seeds.cpu()), images.device, len(images)
        # output (u, v) in [-1, 1] -> input: flips and turns act on the output grid, then the crop box maps it
        flip = torch.ones(n, 2)
        flip[torch.from_numpy(p["hflip"]), 0] = -1
        flip[torch.from_numpy(p["vflip"]), 1] = -1
        rot = TURNS[torch.from_numpy(p["turns"])]
        scale = torch.diag_embed(torch.from_numpy(np.stack([p["hw"], p["hh"]], 1) * 2).float())
        linear = scale @ rot @ torch.diag_embed(flip)
        shift = torch.from_numpy(np.stack([p["cx"], p["cy"]], 1) * 2 - 1).float()
        theta = torch.cat([linear, shift[:, :, None]], dim=2).to(device)
        x = images.float().div_(255)
        grid = F.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        x = self.jitter(x, torch.from_numpy(p["jitter"]).float().to(device))
        return (x - self.mean.to(device)) / self.std.to(device)

    @staticmethod
    def jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation by per-sample factors [B, 3] (1: unchanged), on [0, 1] images."""
        luma = torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)
        x = x * factors[:, 0, None, None, None]
        grey = (x * luma).sum(1, keepdim=True)
        x = (x - grey.mean((2, 3), keepdim=True)) * factors[:, 1, None, None, None] + grey.mean((2, 3), keepdim=True)
        grey = (x * luma).sum(1, keepdim=True)
        x = (x - grey) * factors[:, 2, None, None, None] + grey
        return x.clamp_(0, 1)
