"""Object detection: one row per box in, FCOS on a timm backbone, boxes fused across TTA views and folds with WBF.

Images are letterboxed onto a square canvas of image.size (scaled so the long side fits, padded right and
bottom), which keeps the mapping back to the original image exact and lets every TTA view be undone on boxes.
Predictions are stored per image as normalised xyxy boxes, so folds and models fuse regardless of image size.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from pipeline.boxes import Detections, check_box_views, fuse, mean_average_precision, to_xyxy, unview_boxes
from pipeline.config import Config
from pipeline.data import (
    _require_clean_ids,
    _row_numbers,
    check_images,
    image_paths,
    load_image,
    read_table,
    require_columns,
)
from pipeline.detectors import build_detector
from pipeline.ensemble import Blend
from pipeline.errors import UserError
from pipeline.metrics import Metric
from pipeline.seeding import seed_transform, unpack
from pipeline.submission import check_boxes, decode_boxes, in_sample_order
from pipeline.tasks.classification import ClassificationTask, read_test_images
from pipeline.tta import View, build_views, stack_views

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


def image_sizes(paths: list[Path], workers: int = 8) -> list[tuple[int, int]]:
    """(width, height) from each image's header; no full decode."""
    def size(p):
        with Image.open(p) as img:
            return img.size
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(size, paths))


def table_image_sizes(cfg: Config, table: pd.DataFrame) -> dict:
    """id -> (width, height) for every image of a box table."""
    ids = table["id"].drop_duplicates()
    return dict(zip(ids, image_sizes(image_paths(cfg, ids)), strict=True))


def _check_inside(cfg: Config, table: pd.DataFrame, sizes: dict) -> None:
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


def _truths(cfg: Config, table: pd.DataFrame, classes: list[str], sizes: dict) -> dict:
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

    def __init__(self, paths: list[Path], truths: list | None, side: int, transform: A.Compose):
        self.paths, self.side, self.transform = list(paths), side, transform
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        self.labels = truths if truths is not None else [empty] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        i, seed = unpack(key)
        seed_transform(self.transform, seed)
        image = load_image(self.paths[i])
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


class DetectionTask:
    memory_format = torch.contiguous_format  # torchvision's detection transform re-batches images anyway

    def __init__(self, cfg: Config, classes: list):
        if cfg.train.metric not in ("map50", "map"):
            raise UserError(f"train.metric={cfg.train.metric!r} is not a detection metric; set train.metric=map50 or map")
        self.cfg, self.classes = cfg, [str(c) for c in classes]
        name = cfg.train.metric
        self.metric = Metric(name, lambda truths, outputs: mean_average_precision(outputs, truths)[name], True)
        self._truths: dict | None = None

    @staticmethod
    def sample_table(cfg: Config) -> tuple[pd.DataFrame, list]:
        """One row per image (id, stratification key, group) for the folds, after checking every box."""
        table = read_box_table(cfg)
        classes = box_classes(cfg, table)
        if cfg.data.check_images:
            check_images(image_paths(cfg, table["id"].drop_duplicates()), cfg.data_path("train_csv"))
        sizes = table_image_sizes(cfg, table)
        _check_inside(cfg, table, sizes)
        # Folds are per image, stratified on the dominant class and a box-count bucket.
        per_image = table.groupby("id", sort=False).agg(
            n=("label", "count"), top=("label", lambda s: s.mode().iloc[0] if s.notna().any() else "<none>"))
        bucket = pd.cut(per_image["n"], [-1, 0, 1, 3, 7, np.inf], labels=["0", "1", "2-3", "4-7", "8+"])
        samples = pd.DataFrame({cfg.data.id_col: per_image.index,
                                cfg.data.target_col: per_image["top"].astype(str) + "|" + bucket.astype(str)})
        if cfg.data.group_col:
            samples[cfg.data.group_col] = table.groupby("id", sort=False)["group"].first().to_numpy()
        return samples.reset_index(drop=True), classes

    test_table = staticmethod(read_test_images)  # test.csv: one row per image; other columns (a class too) ignored
    fingerprints = staticmethod(ClassificationTask.fingerprints)  # image file hashes

    def fit_fold(self, train_rows: pd.DataFrame) -> dict:
        return {}

    def load_fold(self, state: dict) -> None:
        pass

    def views(self, spec: str) -> list[View]:
        views = build_views(spec, self.cfg.augment)
        check_box_views([v.name for v in views])
        return views

    @property
    def truths(self) -> dict:
        if self._truths is None:
            table = read_box_table(self.cfg)
            self._truths = _truths(self.cfg, table, self.classes, table_image_sizes(self.cfg, table))
        return self._truths

    def build_model(self) -> nn.Module:
        model, _, _ = build_detector(self.cfg, len(self.classes))
        return model

    def build_dataset(self, rows: pd.DataFrame, train: bool) -> DetectionDataset:
        truths = [self.truths[i] for i in rows["id"]] if "fold" in rows else None
        return DetectionDataset(image_paths(self.cfg, rows["id"]), truths, self.cfg.image.size,
                                build_box_transforms(self.cfg, train))

    def to_device(self, batch, device: torch.device):
        images, targets, meta = batch
        return (images.to(device, non_blocking=True),
                [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets], meta)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        images, targets, _ = batch
        return sum(model(list(images), targets).values())  # FCOS: classification + box regression + centerness

    def predict(self, model: nn.Module, batch, views: list[View]) -> list[list[Detections]]:
        """[V][B] detections per view and image, boxes mapped back to normalised original-image coordinates."""
        check_box_views([v.name for v in views])
        images, _, meta = batch
        side = images.shape[-1]
        outputs = model(list(stack_views(images, views)))
        result = []
        for vi, view in enumerate(views):
            per_image = []
            for bi, (w, h, nw, nh) in enumerate(meta.tolist()):
                o = outputs[vi * len(images) + bi]
                boxes = unview_boxes(o["boxes"].float().cpu().numpy(), view.name, side) / np.array([nw, nh, nw, nh])
                boxes = np.clip(boxes, 0, 1)
                keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # boxes wholly on the padding
                per_image.append(Detections(boxes[keep].astype(np.float32), o["scores"].float().cpu().numpy()[keep],
                                            o["labels"].cpu().numpy()[keep].astype(np.int64), (int(w), int(h))))
            result.append(per_image)
        return result

    def gather(self, chunks: list) -> list[list[Detections]]:
        return [[d for chunk in chunks for d in chunk[v]] for v in range(len(chunks[0]))] if chunks else [[]]

    def merge(self, outputs: list, weights=None, iou_thr: float | None = None) -> list[Detections]:
        """Fuse several predictions of the same images (views, folds, models) with WBF."""
        d = self.cfg.detect
        iou = d.wbf_iou if iou_thr is None else iou_thr
        return [fuse([m[i] for m in outputs], weights, iou, d.wbf_skip) for i in range(len(outputs[0]))]

    def evaluate(self, outputs: list[Detections], targets: list) -> dict[str, float]:
        scores = mean_average_precision(outputs, targets, self.cfg.detect.max_det)
        return {"score": scores[self.metric.name], **scores}

    def prediction_frame(self, rows: pd.DataFrame, outputs: list[Detections]) -> pd.DataFrame:
        frame = rows[[c for c in ("id", "target", "fold") if c in rows]].reset_index(drop=True)
        frame["width"] = [d.size[0] for d in outputs]
        frame["height"] = [d.size[1] for d in outputs]
        frame["boxes"] = [d.boxes.reshape(-1).astype(np.float32) for d in outputs]  # x1 y1 x2 y2 per box
        frame["scores"] = [d.scores.astype(np.float32) for d in outputs]
        frame["labels"] = [d.labels.astype(np.int64) for d in outputs]
        if "fold" in rows:
            truths = [self.truths[i] for i in frame["id"]]
            frame["true_boxes"] = [b.reshape(-1) for b, _ in truths]
            frame["true_labels"] = [lab for _, lab in truths]
        return frame

    def blend(self, method: str, oofs: list[list[Detections]], tests: list[list[Detections]], target: list,
              folds: np.ndarray) -> Blend:
        """WBF across experiments: mean (equal weights, detect.wbf_iou) or weighted (IoU and weights tuned on OOF)."""
        if method not in ("mean", "weighted", "wbf"):
            raise UserError(f"--method {method}: detection ensembles fuse boxes; use mean or weighted (alias wbf)")
        oofs, tests = list(oofs), list(tests)  # fusion reads each member per image: held in memory
        if method == "mean":
            return Blend(self.merge(oofs), self.merge(tests), np.full(len(oofs), 1 / len(oofs)), None,
                         {"iou_thr": self.cfg.detect.wbf_iou})
        weights, iou = self.tune_fusion(oofs, target)
        held = np.empty(len(target), dtype=object)
        for k in np.unique(folds):  # the honest score: settings tuned on the other folds
            fit, out = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            w, t = self.tune_fusion([[m[i] for i in fit] for m in oofs], [target[i] for i in fit])
            held[out] = self._fuse_members([[m[i] for i in out] for m in oofs], w, t)
        held_out = self.evaluate(list(held), target)["score"]
        return Blend(self._fuse_members(oofs, weights, iou), self._fuse_members(tests, weights, iou), weights,
                     held_out, {"iou_thr": iou})

    def tune_fusion(self, oofs: list, target: list) -> tuple[np.ndarray, float]:
        """WBF IoU on a grid, then member weights by coordinate ascent, maximising the OOF score."""
        def score(w, iou):
            return self.evaluate(self._fuse_members(oofs, w, iou), target)["score"]
        weights, iou = np.ones(len(oofs)), self.cfg.detect.wbf_iou
        best = score(weights, iou)
        for candidate in (0.4, 0.5, 0.6, 0.7):
            s = score(weights, candidate)
            if s > best:
                best, iou = s, candidate
        for _ in range(2):
            for i in range(len(oofs)):
                for value in (0.0, 0.5, 2.0, 3.0):
                    trial = weights.copy()
                    trial[i] = value
                    if trial.sum() == 0:
                        continue
                    s = score(trial, iou)
                    if s > best:
                        best, weights = s, trial
        return weights / weights.sum(), iou

    def _fuse_members(self, outputs: list, weights: np.ndarray, iou: float) -> list[Detections]:
        used = [i for i, w in enumerate(weights) if w > 0]  # a zero weight leaves the member out altogether
        return self.merge([outputs[i] for i in used], [float(weights[i]) for i in used], iou)

    def submission(self, test: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
        """PredictionString per sample id, in sample order (column name from sample_submission)."""
        if len(sample.columns) != 2:
            raise UserError(f"sample_submission has columns {list(sample.columns)}; detection expects an id and "
                            "one prediction-string column")
        rows = in_sample_order(test, sample, self.cfg).reset_index()
        return decode_boxes(self.read_outputs(rows), rows["id"], self.cfg, self.classes, sample.columns[1])

    def check_submission(self, sub: pd.DataFrame) -> None:
        check_boxes(sub, self.cfg)

    def read_outputs(self, frame: pd.DataFrame) -> list[Detections]:
        return [Detections(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32),
                           np.asarray(lab, np.int64), (int(w), int(h)))
                for b, s, lab, w, h in zip(frame["boxes"], frame["scores"], frame["labels"], frame["width"],
                                           frame["height"], strict=True)]

    def targets(self, frame: pd.DataFrame) -> list:
        return [(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lab, np.int64))
                for b, lab in zip(frame["true_boxes"], frame["true_labels"], strict=True)]
