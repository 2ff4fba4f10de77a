"""Object detection: one row per box in, FCOS on a timm backbone, boxes fused across TTA views and folds with WBF.

Predictions are stored per image as normalised xyxy boxes, so folds and models fuse regardless of image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.data.images import (
    check_images,
    image_drift_features,
    image_hashes,
    image_paths,
    read_test_images,
)
from pipeline.data.submission import in_sample_order
from pipeline.engine.task import Demo, Task
from pipeline.scoring.blend import Blend
from pipeline.scoring.metrics import Metric
from pipeline.scoring.noise import paired_noise, verdict
from pipeline.scoring.tta import View, build_views, run_views
from pipeline.tasks.detection.boxes import (
    BOX_VIEWS,
    Detections,
    average_precision,
    box_hits,
    check_box_views,
    fuse,
    match_images,
    mean_average_precision,
    unview_boxes,
)
from pipeline.tasks.detection.data import (
    DetectionDataset,
    box_classes,
    build_box_transforms,
    check_inside,
    read_box_table,
    table_image_sizes,
    truths_by_image,
)
from pipeline.tasks.detection.demo_data import score_boxes, write_digit_boxes_competition
from pipeline.tasks.detection.detectors import build_detector
from pipeline.tasks.detection.submission import check_boxes, decode_boxes


class DetectionTask(Task):
    # memory_format stays contiguous: torchvision's detection transform re-batches images anyway
    demo = Demo("data/demo-boxes", write_digit_boxes_competition, ("demo-detect.yaml", "demo-detect-wide.yaml"),
                "demo-detect-ensemble", score_boxes)
    tunes_head = False  # torchvision detectors take neither dropout nor label smoothing
    learns_soft_targets = False  # boxes are kept or not: no soft box targets to distil or pseudo-label

    @staticmethod
    def strata(cfg: Config, target: pd.Series, classes: list) -> np.ndarray:
        """sample_table's per-image key (its box classes), as it is."""
        return target.to_numpy()

    @staticmethod
    def describe_targets(cfg: Config, classes: list) -> str:
        return f"{len(classes)} classes"

    def __init__(self, cfg: Config, classes: list):
        if cfg.train.metric == "auto":
            cfg.train.metric = "map50"
        if cfg.train.metric not in ("map50", "map"):
            raise UserError(f"train.metric={cfg.train.metric!r} is not a detection metric; set train.metric=map50 or map")
        super().__init__(cfg, [str(c) for c in classes])
        name = cfg.train.metric
        self.metric = Metric(name, lambda truths, outputs: mean_average_precision(outputs, truths)[name], True)
        self._truths: dict | None = None

    @staticmethod
    def sample_table(cfg: Config) -> tuple[pd.DataFrame, list]:
        """One row per image (id, stratification key, group) for the folds, after checking every box; an auto
        train.metric is settled (map50), so config.yaml and folds.json name it."""
        if cfg.train.metric == "auto":
            cfg.train.metric = "map50"
        table = read_box_table(cfg)
        classes = box_classes(cfg, table)
        if cfg.data.check_images:
            check_images(image_paths(cfg, table["id"].drop_duplicates()), cfg.data_path("train_csv"),
                         max_pixels=cfg.image.max_pixels)
        sizes = table_image_sizes(cfg, table)
        check_inside(cfg, table, sizes)
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
    fingerprints = staticmethod(image_hashes)
    drift_features = staticmethod(image_drift_features)

    @staticmethod
    def input_size(cfg: Config) -> int:
        return cfg.image.size

    def views(self, spec: str) -> list[View]:
        views = build_views(spec, self.cfg.augment)
        if spec == "all":  # the search's candidates: the views that can be undone on boxes
            views = [v for v in views if v.name in BOX_VIEWS]
        check_box_views([v.name for v in views])
        return views

    @property
    def truths(self) -> dict:
        if self._truths is None:
            table = read_box_table(self.cfg)
            self._truths = truths_by_image(self.cfg, table, self.classes, table_image_sizes(self.cfg, table))
        return self._truths

    def build_model(self) -> nn.Module:
        model, _, _ = build_detector(self.cfg, len(self.classes))
        return model

    def build_dataset(self, rows: pd.DataFrame, train: bool) -> DetectionDataset:
        truths = [self.truths[i] for i in rows["id"]] if "fold" in rows else None
        return DetectionDataset(image_paths(self.cfg, rows["id"]), truths, self.cfg.image.size,
                                build_box_transforms(self.cfg, train), self.cfg.image.max_pixels)

    def to_device(self, batch, device: torch.device):
        images, targets, meta = batch
        return (images.to(device, non_blocking=True),
                [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets], meta)

    def loss(self, model: nn.Module, batch, mix: bool = True) -> torch.Tensor:  # nothing to mix
        images, targets, _ = batch
        return sum(model(list(images), targets).values())  # FCOS: classification + box regression + centerness

    def infer_batch(self, model: nn.Module, batch, views: list[View]) -> list[list[Detections]]:
        """[V][B] detections per view and image, boxes mapped back to normalised original-image coordinates."""
        check_box_views([v.name for v in views])
        images, _, meta = batch
        side = images.shape[-1]
        outputs = [o for per_view in run_views(lambda x: model(list(x)), images, views) for o in per_view]
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

    def evaluate(self, outputs: list[Detections], targets: list, params: dict | None = None) -> dict[str, float]:
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
        """WBF across experiments: mean (equal weights, detect.wbf_iou) or weighted (IoU and weights tuned on OOF).

        Tuned settings are kept only when, tuned on the other folds, they beat the mean fusion on the held-out folds
        by more than that gain's noise (pipeline.scoring.noise, images resampled); the OOF then holds every fold fused as
        tuned without it, so its score is the honest CV."""
        if method not in ("mean", "weighted", "wbf"):
            raise UserError(f"--method {method}: detection ensembles fuse boxes; use mean or weighted (alias wbf)")
        oofs, tests = list(oofs), list(tests)  # fusion reads each member per image: held in memory
        uniform, iou = np.full(len(oofs), 1 / len(oofs)), self.cfg.detect.wbf_iou
        mean = Blend(self.merge(oofs), self.merge(tests), uniform, None, {"iou_thr": iou})
        if method == "mean":
            return mean
        held = np.empty(len(target), dtype=object)
        for k in np.unique(folds):  # the honest score: settings tuned on the other folds
            fit, out = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            w, t = self.tune_fusion([[m[i] for i in fit] for m in oofs], [target[i] for i in fit])
            held[out] = self._fuse_members([[m[i] for i in out] for m in oofs], w, t)
        params = self.judge_fusion(list(held), mean.oof, target)
        if params["weights_from"] == "uniform":
            mean.params.update(params)
            return mean
        weights, iou = self.tune_fusion(oofs, target)
        in_sample = self.evaluate(self._fuse_members(oofs, weights, iou), target)["score"]
        return Blend(list(held), self._fuse_members(tests, weights, iou), weights, params["fitted_held_out"],
                     {"iou_thr": iou, **params, "cv_in_sample": in_sample})

    def judge_fusion(self, tuned: list[Detections], mean: list[Detections], target: list) -> dict:
        """pipeline.scoring.noise's verdict on tuned against mean fusion: each image's boxes matched once, then images resampled
        (0.8 s for 1000 images of 10 classes, 3 s of 80 classes: a fraction of tune_fusion's own time)."""
        a, b = (match_images(outputs, target, self.cfg.detect.max_det) for outputs in (tuned, mean))
        def score(matches):
            return average_precision(matches)[self.metric.name]
        noise = paired_noise(lambda rows: score(a.take(rows)) - score(b.take(rows)), len(target))
        return verdict("tuned", self.metric, score(a), score(b), noise)

    def blend_test(self, fitted: dict, tests: list[list[Detections]]) -> list[Detections]:
        if fitted.get("weights_from") == "tuned":
            return self._fuse_members(tests, np.asarray(fitted["weights"]), fitted["iou_thr"])
        return self.merge(tests)  # mean fusion, as blend() made it

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

    # -- pseudo-labels: boxes whose score passes a threshold calibrated on OOF boxes (precision at IoU 0.5) ----------
    def confidence(self, outputs: list[Detections]) -> np.ndarray:
        return np.concatenate([d.scores for d in outputs]) if outputs else np.zeros(0, np.float32)

    def hits(self, outputs: list[Detections], truths: list) -> np.ndarray:
        return box_hits(outputs, truths)

    def keep_confident(self, frame: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
        """The images with at least one box at or above the threshold, with those boxes alone."""
        frame = frame.reset_index(drop=True).copy()
        dets = self.read_outputs(frame)
        keep = [d.scores >= (-np.inf if threshold is None else threshold) for d in dets]
        frame["boxes"] = [d.boxes[m].reshape(-1) for d, m in zip(dets, keep, strict=True)]
        frame["scores"] = [d.scores[m] for d, m in zip(dets, keep, strict=True)]
        frame["labels"] = [d.labels[m] for d, m in zip(dets, keep, strict=True)]
        return frame[[bool(m.any()) for m in keep]].reset_index(drop=True)

    def pseudo_counts(self, frame: pd.DataFrame) -> dict[str, int]:
        labels = np.concatenate([np.asarray(lab, np.int64) for lab in frame["labels"]]) if len(frame) else []
        counts = np.bincount(np.asarray(labels, np.int64), minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True) if n}

    def pseudo_dataset(self, train_rows: pd.DataFrame, pseudo: pd.DataFrame, soft: bool) -> DetectionDataset:
        """Training images with their boxes, then the test images with their kept boxes as truths."""
        if soft:
            raise UserError("pseudo.soft: detection pseudo-labels are boxes, kept or not; drop --soft")
        truths = [self.truths[i] for i in train_rows["id"]] + \
                 [(d.boxes, d.labels) for d in self.read_outputs(pseudo)]
        ids = [*train_rows["id"], *pseudo["id"]]
        return DetectionDataset(image_paths(self.cfg, ids), truths, self.cfg.image.size,
                                build_box_transforms(self.cfg, True), self.cfg.image.max_pixels)

    def submission(self, test: pd.DataFrame, sample: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """PredictionString per sample id, in sample order (column name from sample_submission)."""
        if len(sample.columns) != 2:
            raise UserError(f"sample_submission has columns {list(sample.columns)}; detection expects an id and "
                            "one prediction-string column")
        rows = in_sample_order(test, sample, self.cfg).reset_index()
        return decode_boxes(self.read_outputs(rows), rows["id"], self.cfg, self.classes, sample.columns[1])

    def check_submission(self, sub: pd.DataFrame, sample: pd.DataFrame) -> None:
        check_boxes(sub, self.cfg)

    def read_outputs(self, frame: pd.DataFrame) -> list[Detections]:
        return [Detections(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32),
                           np.asarray(lab, np.int64), (int(w), int(h)))
                for b, s, lab, w, h in zip(frame["boxes"], frame["scores"], frame["labels"], frame["width"],
                                           frame["height"], strict=True)]

    def targets(self, frame: pd.DataFrame) -> list:
        return [(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lab, np.int64))
                for b, lab in zip(frame["true_boxes"], frame["true_labels"], strict=True)]

    def report_sections(self, oof: pd.DataFrame, out: Path) -> list:
        from pipeline.tasks.detection.report import (
            detection_section,  # matplotlib only when a report is drawn
        )

        return [detection_section(self.cfg, oof, self.read_outputs(oof), self.targets(oof), self.classes, out)]
