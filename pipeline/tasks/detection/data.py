"""Detection data: the box table (one row per box) read and checked, letterboxed images with their boxes.

Images are letterboxed onto a square canvas of image.size (scaled so the long side fits, padded right and
bottom), which keeps the mapping back to the original image exact and lets every TTA view be undone on boxes.
"""

from __future__ import annotations

import warnings
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
from pipeline.data.tables import _require_clean_ids, _row_numbers, read_table, require_columns
from pipeline.tasks.detection.boxes import to_xyxy

EDGE_TOLERANCE = 2.0  # pixels a box may stick out of its image (annotation tools round outwards); clipped


def read_box_table(cfg: Config) -> pd.DataFrame:
    """train.csv as one row per box: id, label (NaN for an image without boxes), x1, y1, x2, y2, line.

    Every bad row is a UserError naming its line: a partial or non-numeric box, x2 <= x1, an unknown class.
    """
    d = cfg.data
    path = cfg.data_path("train_csv")
    df = read_table(path, "train_csv", d.id_col)
    require_columns(df, path, {"data.id_col": d.id_col, "data.target_col": d.target_col, "data.group_col": d.group_col,
                               **{f"data.box_cols[{i}]": c for i, c in enumerate(d.box_cols)}})
    if len(d.box_cols) != 4:
        raise UserError(f"data.box_cols needs four columns in {d.box_format} order, got {d.box_cols}")
    _require_clean_ids(df, path, d.id_col, unique=False)  # one row per box: ids repeat
    raw = df[d.box_cols].apply(pd.to_numeric, errors="coerce")
    text = df[d.box_cols].notna() & raw.isna()
    if text.any().any():
        col = text.any().idxmax()
        raise UserError(f"{path}: non-numeric values in column {col!r} (rows {_row_numbers(text[col])})")
    empty = raw.isna().all(axis=1)
    partial = raw.isna().any(axis=1) & ~empty
    if partial.any():
        raise UserError(f"{path}: boxes with some coordinates missing (rows {_row_numbers(partial)}); "
                        "give all four, or none for an image without boxes")
    no_class = df[d.target_col].isna() & ~empty
    if no_class.any():
        raise UserError(f"{path}: boxes without a class in column {d.target_col!r} (rows {_row_numbers(no_class)})")
    boxes = to_xyxy(raw.to_numpy(), d.box_format)
    flat = ~empty & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if flat.any():
        raise UserError(f"{path}: boxes with no area (x2 <= x1 or y2 <= y1) in rows {_row_numbers(pd.Series(flat))}; "
                        f"is data.box_format={d.box_format!r} right?")
    labels = df[d.target_col].where(~empty)
    if d.classes is not None:
        unknown = labels.notna() & ~labels.astype(str).isin(d.classes)
        if unknown.any():
            first = labels[unknown].iloc[0]
            raise UserError(f"{path}: class {first!r} is not in data.classes (rows {_row_numbers(unknown)})")
    table = pd.DataFrame({"id": df[d.id_col].to_numpy(), "label": labels.to_numpy(), "x1": boxes[:, 0],
                          "y1": boxes[:, 1], "x2": boxes[:, 2], "y2": boxes[:, 3], "line": np.arange(len(df)) + 2})
    if d.group_col:
        table["group"] = df[d.group_col].to_numpy()
    return table


def box_classes(cfg: Config, table: pd.DataFrame) -> list[str]:
    return list(cfg.data.classes) if cfg.data.classes is not None else sorted(table["label"].dropna().astype(str).unique())


def table_image_sizes(cfg: Config, table: pd.DataFrame) -> dict:
    """id -> (width, height) for every image of a box table."""
    ids = table["id"].drop_duplicates()
    sizes = image_sizes(image_paths(cfg, ids))
    return dict(zip(ids, zip(sizes["width"].tolist(), sizes["height"].tolist(), strict=True), strict=True))


def check_inside(cfg: Config, table: pd.DataFrame, sizes: dict) -> None:
    w = table["id"].map(lambda i: sizes[i][0]).to_numpy(dtype=np.float64)
    h = table["id"].map(lambda i: sizes[i][1]).to_numpy(dtype=np.float64)
    if cfg.data.box_units == "normalised":
        w, h = np.ones_like(w), np.ones_like(h)
    tol = EDGE_TOLERANCE if cfg.data.box_units == "pixels" else EDGE_TOLERANCE / 1000
    x1, y1, x2, y2 = (table[c].to_numpy() for c in ("x1", "y1", "x2", "y2"))
    outside = pd.Series((x1 < -tol) | (y1 < -tol) | (x2 > w + tol) | (y2 > h + tol))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise UserError(
            f"{cfg.data_path('train_csv')}: boxes outside their image in rows "
            f"{', '.join(str(n) for n in table['line'][outside].head(20))} (line {table['line'].iloc[i]}: "
            f"box {[x1[i], y1[i], x2[i], y2[i]]} on a {int(w[i])}x{int(h[i])} image); "
            f"check data.box_format={cfg.data.box_format!r} and data.box_units={cfg.data.box_units!r}")


def truths_by_image(cfg: Config, table: pd.DataFrame, classes: list[str], sizes: dict) -> dict:
    """id -> (normalised xyxy boxes clipped to the image, class ids)."""
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for image_id, rows in table.groupby("id", sort=False):
        rows = rows[rows["label"].notna()]
        boxes = rows[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        if cfg.data.box_units == "pixels":
            w, h = sizes[image_id]
            boxes = boxes / np.array([w, h, w, h])
        out[image_id] = (np.clip(boxes, 0, 1).astype(np.float32),
                         rows["label"].astype(str).map(index).to_numpy(dtype=np.int64))
    return out


class DetectionDataset(Dataset):
    """Letterboxed images with their boxes in canvas pixels; `labels` holds the normalised truths for scoring."""

    def __init__(self, paths: list[Path], truths: list | None, side: int, transform: A.Compose,
                 max_pixels: int = MAX_PIXELS):
        self.paths, self.side, self.transform, self.max_pixels = list(paths), side, transform, max_pixels
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        self.labels = truths if truths is not None else [empty] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        i, seed = unpack(key)
        seed_transform(self.transform, seed)
        image = load_image(self.paths[i], self.max_pixels)
        h, w = image.shape[:2]
        scale = self.side / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.zeros((self.side, self.side, 3), np.uint8)
        canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        boxes, labels = self.labels[i]
        out = self.transform(image=canvas, bboxes=boxes * np.array([nw, nh, nw, nh], np.float32), labels=labels)
        target = {"boxes": torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)),
                  "labels": torch.as_tensor(np.asarray(out["labels"], np.int64))}
        return out["image"], target, torch.tensor([w, h, nw, nh], dtype=torch.float32)

    @staticmethod
    def collate(batch):
        images, targets, meta = zip(*batch, strict=True)
        return torch.stack(images), list(targets), torch.stack(meta)


def build_box_transforms(cfg: Config, train: bool) -> A.Compose:
    """Flips, turns, scale/shift and colour on the canvas, boxes moved along (albumentations bbox_params)."""
    a = cfg.augment
    steps = []
    if train:
        steps = [A.HorizontalFlip(p=a.hflip), A.VerticalFlip(p=a.vflip), A.RandomRotate90(p=a.rotate90),
                 A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT,
                          fill=0, p=0.5)]
        if a.color_jitter > 0:
            s = a.color_jitter
            steps.append(A.ColorJitter(brightness=s, contrast=s, saturation=s, hue=0.0, p=0.8))
    # Boxes mostly cut away by a shift leave the target: a sliver is no longer the object.
    params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, clip=True)
    with warnings.catch_warnings():  # validation has no geometric step for the box processor: fine
        warnings.filterwarnings("ignore", message="Got processor for bboxes")
        return A.Compose([*steps, A.ToFloat(max_value=255.0), ToTensorV2()], bbox_params=params)
