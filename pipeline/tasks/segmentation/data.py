"""Segmentation data: the per-image table and its masks (RLE rows or mask files), checked once at prepare; images
and masks through the same albumentations transform."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.seeding import seed_transform, unpack
from pipeline.data.images import MAX_PIXELS, image_paths, image_sizes, load_image
from pipeline.data.tables import read_table, require_columns
from pipeline.tasks.segmentation.masks import channels, read_mask_file, rle_decode

INTERPOLATION = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}
COVERAGE_BINS = [-1.0, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]  # stratification: empty, then shares of the image
COVERAGE_NAMES = ["empty", "0-10%", "10-30%", "30-50%", "50-70%", "70-90%", "90-100%"]


def mask_classes(cfg: Config) -> list[str]:
    return list(cfg.segment.classes or ["mask"])


class MaskSource:
    """The true masks of some images, decoded when read: uint8 [K, H, W] per image, from RLE strings (one per class)
    or from mask files. Holding strings and paths, not pixels, keeps a large set's truths small."""

    def __init__(self, cfg: Config, ids: Sequence, sizes: Sequence[tuple[int, int]], rles: list[list] | None):
        self.cfg, self.ids, self.sizes, self.rles = cfg, list(ids), list(sizes), rles
        self.k = len(mask_classes(cfg))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> np.ndarray:
        s, (h, w) = self.cfg.segment, self.sizes[i]
        if self.rles is None:
            path = Path(self.cfg.data.root) / s.mask_dir / f"{self.ids[i]}{s.mask_ext}"
            values = s.mask_values or (list(range(1, self.k + 1)) if s.classes else None)
            return channels(read_mask_file(path, values, (h, w)), self.k)
        where = f"{self.cfg.data_path('train_csv')}, id {self.ids[i]}"
        return np.stack([rle_decode(r, (h, w), s.rle_order, where) for r in self.rles[i]])


def read_mask_table(cfg: Config) -> tuple[pd.DataFrame, list[list] | None]:
    """One row per training image (id) and, for RLE masks, each image's RLE per class; long tables (a class column)
    are pivoted. An id without an RLE row (or mask file) is refused."""
    d, s = cfg.data, cfg.segment
    source = cfg.data_path("train_csv")
    train = read_table(source, "train_csv", d.id_col)  # an empty RLE is an empty mask, not a missing label
    require_columns(train, source, {"data.id_col": d.id_col})
    if train[d.id_col].isna().any():
        raise UserError(f"{source}: row {int(train[d.id_col].isna().to_numpy().argmax()) + 2} has no {d.id_col}")
    if s.mask_dir:
        ids = train[d.id_col].drop_duplicates().tolist()
        missing = [i for i in ids if not (Path(d.root) / s.mask_dir / f"{i}{s.mask_ext}").is_file()]
        if missing:
            raise UserError(f"id {missing[0]!r} of {source} has no mask file {Path(d.root) / s.mask_dir}/"
                            f"{missing[0]}{s.mask_ext} ({len(missing)} ids lack one); an empty mask is a mask too")
        return pd.DataFrame({"id": ids}), None
    if d.target_col not in train.columns:
        raise UserError(f"{source} has no column {d.target_col!r} (data.target_col: the RLE masks); columns: "
                        f"{list(train.columns)}; or set segment.mask_dir to a folder of mask images")
    classes = mask_classes(cfg)
    if not s.class_col:
        if train[d.id_col].duplicated().any():
            dup = train[d.id_col][train[d.id_col].duplicated()].iloc[0]
            raise UserError(f"{source}: id {dup!r} has several rows; one RLE per image, or set segment.class_col")
        return pd.DataFrame({"id": train[d.id_col].tolist()}), [[r] for r in train[d.target_col]]
    if s.class_col not in train.columns:
        raise UserError(f"{source} has no column {s.class_col!r} (segment.class_col)")
    names = train[s.class_col].astype(str)
    stray = sorted(set(names) - set(classes))
    if stray:
        raise UserError(f"{source}: {s.class_col} value {stray[0]!r} is not one of segment.classes {classes}")
    ids = train[d.id_col].drop_duplicates().tolist()
    lookup = {(i, c): r for i, c, r in zip(train[d.id_col], names, train[d.target_col], strict=True)}
    return pd.DataFrame({"id": ids}), [[lookup.get((i, c), "") for c in classes] for i in ids]


def read_side(cfg: Config) -> pd.DataFrame | None:
    """segment.side_csv indexed by id (its side_cols, or every numeric column but the id); None when unset."""
    s, d = cfg.segment, cfg.data
    if not s.side_csv:
        return None
    path = Path(d.root) / s.side_csv
    table = read_table(path, "segment.side_csv", d.id_col)
    require_columns(table, path, {"data.id_col": d.id_col, **{f"segment.side_cols[{i}]": c
                                                              for i, c in enumerate(s.side_cols or [])}})
    columns = s.side_cols or [c for c in table.columns if c != d.id_col and pd.api.types.is_numeric_dtype(table[c])]
    if not columns:
        raise UserError(f"{path} has no numeric column besides {d.id_col!r}; set segment.side_cols")
    values = table.set_index(table[d.id_col].astype(str))[columns].astype(np.float32)
    if values.isna().any().any():
        column = values.columns[values.isna().any()][0]
        raise UserError(f"{path}: column {column!r} has empty values (id {values.index[values[column].isna()][0]}); "
                        "fill them")
    return values


def side_values(side: pd.DataFrame | None, ids: Sequence, path: str) -> np.ndarray:
    """[N, S] side values of these ids ([N, 0] without a side table); an id the table lacks is refused."""
    ids = [str(i) for i in ids]
    if side is None:
        return np.zeros((len(ids), 0), np.float32)
    missing = [i for i in ids if i not in side.index]
    if missing:
        raise UserError(f"{path} has no row for id {missing[0]!r} ({len(missing)} ids missing); every train and "
                        "test image needs its side values")
    return side.loc[ids].to_numpy(np.float32)


def image_shapes(cfg: Config, ids: Sequence) -> list[tuple[int, int]]:
    """(height, width) of each image, from file headers."""
    sizes = image_sizes(image_paths(cfg, ids))
    return list(zip(sizes["height"].astype(int), sizes["width"].astype(int), strict=True))


def coverage_bins(masks: MaskSource) -> list[str]:
    """Each image's share of mask pixels (any class) as a bin name: what folds are stratified on."""
    shares = np.array([float(masks[i].any(axis=0).mean()) for i in range(len(masks))])
    return [COVERAGE_NAMES[j] for j in np.digitize(shares, COVERAGE_BINS[1:-1], right=True)]


# the training crop's smallest area where augment.scale_min is null: none, a mask is scored on object sizes as they
# are (config.py has the TGS figures)
SCALE_MIN = 1.0


def build_mask_transforms(cfg: Config, train: bool) -> A.Compose:
    """Train: a random resized crop (a plain resize at the default scale_min, 1), flips and turns,
    brightness/contrast (the image only); valid/test: a resize to image.size. The same geometry goes to the mask
    (nearest neighbour)."""
    size, a = cfg.image.size, cfg.augment
    resample = INTERPOLATION[cfg.image.interpolation]
    if not train:
        return A.Compose([A.Resize(size, size, interpolation=resample), ToTensorV2(transpose_mask=True)])
    steps = [A.RandomResizedCrop(size=(size, size), scale=(a.smallest_crop(SCALE_MIN), 1.0), ratio=(0.8, 1.25),
                                 interpolation=resample),
             A.HorizontalFlip(p=a.hflip), A.VerticalFlip(p=a.vflip), A.RandomRotate90(p=a.rotate90)]
    if a.color_jitter > 0:
        steps.append(A.RandomBrightnessContrast(a.color_jitter, a.color_jitter, p=0.8))
    return A.Compose([*steps, ToTensorV2(transpose_mask=True)])


class SegmentationDataset(Dataset):
    """(uint8 image [3, S, S], uint8 mask [K, S, S], (height, width) of the original, side values [S]) per row;
    `labels` are the true masks at full size (MaskSource), None for test rows."""

    def __init__(self, paths: Sequence[Path], sizes: Sequence[tuple[int, int]], labels: MaskSource | None,
                 transform: A.Compose, k: int, side: np.ndarray, max_pixels: int = MAX_PIXELS):
        self.paths, self.sizes, self.labels, self.transform, self.k = list(paths), list(sizes), labels, transform, k
        self.max_pixels = max_pixels
        self.side = torch.from_numpy(side)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        i, seed = unpack(key)
        seed_transform(self.transform, seed)
        image = load_image(self.paths[i], self.max_pixels)
        h, w = self.sizes[i]
        if image.shape[:2] != (h, w):
            raise UserError(f"image {self.paths[i]} is {image.shape[1]}x{image.shape[0]}, not the {w}x{h} it had "
                            "at prepare; rerun `pipeline prepare --force`")
        mask = self.labels[i].transpose(1, 2, 0) if self.labels is not None else np.zeros((h, w, self.k), np.uint8)
        out = self.transform(image=image, mask=np.ascontiguousarray(mask))
        return out["image"], out["mask"], torch.tensor([h, w]), self.side[i]
