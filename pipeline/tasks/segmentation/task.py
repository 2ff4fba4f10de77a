"""Semantic segmentation: masks in (RLE rows or mask images), a segmentation_models_pytorch network on a timm
encoder, mask probabilities out, RLE in the submission.

Outputs are per image uint8 [K, H, W] probabilities (x255) at the image's own size: TTA views are undone on the
probabilities before they are resized back, folds and experiments average them, and files store them as bytes.
The decision rules (a pixel threshold, a minimum mask area, an image-level "any mask" peak) are fitted on OOF,
each fold's by the other folds (metrics.RuleSearch), so the headline CV is the honest one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
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
from pipeline.scoring.tta import View, build_views, run_views
from pipeline.tasks.segmentation.data import (
    MaskSource,
    SegmentationDataset,
    build_mask_transforms,
    coverage_bins,
    image_shapes,
    mask_classes,
    read_mask_table,
    read_side,
    side_values,
)
from pipeline.tasks.segmentation.demo_data import score_masks, write_digit_masks_competition
from pipeline.tasks.segmentation.masks import rle_decode, rle_encode
from pipeline.tasks.segmentation.metrics import METRICS, Rules, RuleSearch, counts, pair_scores, score
from pipeline.tasks.segmentation.models import build_loss, build_segmenter


class SegmentationTask(Task):
    demo = Demo("data/demo-masks", write_digit_masks_competition, ("demo-seg.yaml", "demo-seg-fpn.yaml"),
                "demo-seg-ensemble", score_masks)
    tunes_head = False  # smp decoders take neither dropout nor label smoothing
    learns_soft_targets = False  # distillation and pseudo-labels learn class rows, not masks: refused in one line
    bare_batches = True  # bench's bare loop replays the loader's images and masks

    def __init__(self, cfg: Config, classes: list):
        if cfg.train.metric == "auto":
            cfg.train.metric = "dice"
        if cfg.train.metric not in METRICS:
            raise UserError(f"train.metric={cfg.train.metric!r} is not a segmentation metric; choose one of "
                            f"{', '.join(METRICS)}")
        super().__init__(cfg, mask_classes(cfg))
        self.k = len(self.classes)
        self.metric = Metric(cfg.train.metric, lambda truths, outputs: self.evaluate(outputs, truths)["score"], True)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.loss_fn = build_loss(cfg.segment.loss, self.k)
        self._table = None
        self.side = read_side(cfg)  # per-image side values (segment.side_csv), standardised per fold
        self.side_mean = self.side_std = None

    # -- data -------------------------------------------------------------------------------------------------
    @staticmethod
    def sample_table(cfg: Config) -> tuple[pd.DataFrame, list]:
        """One row per training image (id, its mask coverage bin as the stratification key), after decoding every
        mask against its image's size; an auto train.metric is settled (dice)."""
        if cfg.train.metric == "auto":
            cfg.train.metric = "dice"
        table, rles = read_mask_table(cfg)
        paths = image_paths(cfg, table["id"])
        if cfg.data.check_images:
            check_images(paths, cfg.data_path("train_csv"), max_pixels=cfg.image.max_pixels)
        masks = MaskSource(cfg, table["id"], image_shapes(cfg, table["id"]), rles)
        bins = coverage_bins(masks)  # decodes every mask: a bad run or file fails here, before any fold
        samples = pd.DataFrame({cfg.data.id_col: table["id"], cfg.data.target_col: bins})
        return samples, mask_classes(cfg)

    @staticmethod
    def strata(cfg: Config, target: pd.Series, classes: list) -> np.ndarray:
        """The coverage bins sample_table made: empty, 0-10%, ..., 90-100% of the image."""
        return target.astype(str).to_numpy()

    @staticmethod
    def describe_targets(cfg: Config, classes: list) -> str:
        return f"masks of {len(classes)} class{'es' * (len(classes) > 1)}, folds stratified by coverage"

    test_table = staticmethod(read_test_images)
    fingerprints = staticmethod(image_hashes)
    drift_features = staticmethod(image_drift_features)

    @staticmethod
    def input_size(cfg: Config) -> int:
        return cfg.image.size

    def masks(self, ids) -> MaskSource:
        """The true masks of these training ids."""
        if self._table is None:
            table, rles = read_mask_table(self.cfg)
            self._table = (dict(zip(table["id"].astype(str), range(len(table)), strict=True)), rles)
        index, rles = self._table
        ids = [str(i) for i in ids]
        return MaskSource(self.cfg, ids, image_shapes(self.cfg, ids), None if rles is None else [rles[index[i]] for i in ids])

    # -- per fold: the side values' scale, from the fold's training images ------------------------------------
    def fit_fold(self, train_rows: pd.DataFrame) -> dict:
        if self.side is None:
            return {}
        values = side_values(self.side, train_rows["id"], self.cfg.segment.side_csv)
        self.side_mean, self.side_std = values.mean(axis=0), values.std(axis=0) + 1e-6
        return {"side_mean": self.side_mean.tolist(), "side_std": self.side_std.tolist()}

    def load_fold(self, state: dict) -> None:
        if "side_mean" in state:
            self.side_mean, self.side_std = np.asarray(state["side_mean"]), np.asarray(state["side_std"])

    # -- model and batches ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        sides = 0 if self.side is None else self.side.shape[1]
        model, self.mean, self.std = build_segmenter(self.cfg, self.k, sides)
        return model

    def build_dataset(self, rows: pd.DataFrame, train: bool) -> SegmentationDataset:
        labels = self.masks(rows["id"]) if "fold" in rows else None
        sizes = labels.sizes if labels is not None else image_shapes(self.cfg, rows["id"])
        side = side_values(self.side, rows["id"], self.cfg.segment.side_csv)
        if self.side is not None:
            if self.side_mean is None:
                raise RuntimeError("fit_fold() (or load_fold()) sets the side values' scale; call it first")
            side = ((side - self.side_mean) / self.side_std).astype(np.float32)
        return SegmentationDataset(image_paths(self.cfg, rows["id"]), sizes, labels,
                                   build_mask_transforms(self.cfg, train), self.k, side, self.cfg.image.max_pixels)

    def to_device(self, batch, device: torch.device):
        """The normalised image, with one constant plane per side value after its three channels."""
        x, y, meta, side = batch
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1) * 255
        x = (x.to(device, non_blocking=True).float() - mean) / std
        if side.shape[1]:
            planes = side.to(device, non_blocking=True)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            x = torch.cat([x, planes], dim=1)
        return x.contiguous(memory_format=self.memory_format), y.to(device, non_blocking=True).float(), meta

    def loss(self, model: nn.Module, batch, mix: bool = True) -> torch.Tensor:
        x, y = batch[0], batch[1]
        return self.loss_fn(model(x), y)

    def views(self, spec: str) -> list[View]:
        return build_views(spec, self.cfg.augment)

    def infer_batch(self, model: nn.Module, batch, views: list[View]) -> list[list[np.ndarray]]:
        """[V][B] uint8 [K, H, W] probabilities: each view's output undone (flipped back, scaled back), then resized
        to the image's own size."""
        x, _, meta = batch
        outputs = run_views(lambda t: torch.sigmoid(model(t.contiguous(memory_format=self.memory_format)).float()),
                            x, views)
        sizes = [tuple(s) for s in meta.tolist()]
        result = []
        for view, probs in zip(views, outputs, strict=True):
            probs = view.invert(probs)
            per_image: list = [None] * len(sizes)
            for size in set(sizes):  # one resize per image size in the batch
                at = [i for i, s in enumerate(sizes) if s == size]
                resized = F.interpolate(probs[at], size=size, mode="bilinear", align_corners=False)
                for j, i in enumerate(at):
                    per_image[i] = (resized[j] * 255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
            result.append(per_image)
        return result

    def gather(self, chunks: list) -> list[list[np.ndarray]]:
        return [[m for chunk in chunks for m in chunk[v]] for v in range(len(chunks[0]))] if chunks else [[]]

    def merge(self, outputs: list, weights=None) -> list[np.ndarray]:
        """The (weighted) mean probability per pixel of several predictions of the same images."""
        w = np.ones(len(outputs)) if weights is None else np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
        return [np.rint(sum(wi * m[i].astype(np.float32) for wi, m in zip(w, outputs, strict=True))).astype(np.uint8)
                for i in range(len(outputs[0]))]

    # -- scores and decision rules -----------------------------------------------------------------------------
    def rules(self, params: dict | None) -> Rules:
        return Rules(**params) if params else Rules()

    def evaluate(self, outputs: list[np.ndarray], targets, params: dict | None = None) -> dict[str, float]:
        rules = self.rules(params)
        c = counts(outputs, targets, rules.threshold).emptied(rules.min_area, rules.empty_below)
        scores = {m: score(c, m) for m in METRICS}
        return {"score": scores[self.metric.name], **scores}

    def search(self, outputs: list[np.ndarray], targets) -> RuleSearch:
        pixels = float(np.median([m.shape[1] * m.shape[2] for m in outputs])) if outputs else 1.0
        return RuleSearch(outputs, targets, self.metric.name, pixels)

    def pairs(self, images: np.ndarray) -> np.ndarray:
        """The (image, class) pair rows of these image rows."""
        return (np.asarray(images)[:, None] * self.k + np.arange(self.k)).ravel()

    def fit_params(self, outputs: list[np.ndarray], targets) -> dict:
        if not self.cfg.segment.fit_rules:
            return {}
        return self.search(outputs, targets).fit()[0].as_dict()

    def fitted_scores(self, outputs: list[np.ndarray], targets, folds: np.ndarray) -> dict:
        """The rules fitted on all OOF images (what submit applies), and the honest CV: each fold's images decided by
        rules fitted on the other folds."""
        if not self.cfg.segment.fit_rules:
            return {}
        search, metric = self.search(outputs, targets), self.metric.name
        held_scores, per_fold, chosen = np.zeros(len(outputs) * self.k), {}, {}
        for k in np.unique(folds):
            held, rest = self.pairs(np.flatnonzero(folds == k)), self.pairs(np.flatnonzero(folds != k))
            rules = search.fit(rest)[0]
            held_scores[held] = pair_scores(search.apply(rules, held), metric)
            per_fold[int(k)], chosen[int(k)] = float(held_scores[held].mean()), rules.as_dict()
        rules, in_sample = search.fit()
        decided = search.apply(rules)
        return {"decisions": rules.as_dict(), "cv": float(held_scores.mean()), "folds": per_fold,
                "cv_fitted_in_sample": in_sample, "cv_default_decisions": score(search.apply(Rules()), metric),
                "rules_per_fold": chosen, "predicted_empty": float((decided.pred == 0).mean())}

    # -- files --------------------------------------------------------------------------------------------------
    def prediction_frame(self, rows: pd.DataFrame, outputs: list[np.ndarray]) -> pd.DataFrame:
        """id, (target, fold,) height, width, probs (uint8 bytes, K x H x W) and, for OOF rows, truth (bit-packed)
        with its shape. An ensemble's frame takes its truths from the keys it is given."""
        frame = rows[[c for c in ("id", "target", "fold") if c in rows]].reset_index(drop=True)
        frame["height"] = [m.shape[1] for m in outputs]
        frame["width"] = [m.shape[2] for m in outputs]
        frame["probs"] = [m.tobytes() for m in outputs]
        if "truth" in rows:  # an ensemble's keys carry the truths already
            for column in ("truth", "truth_height", "truth_width"):
                frame[column] = rows[column].to_numpy()
        elif "fold" in rows:
            truths = self.masks(frame["id"])
            frame["truth"] = [np.packbits(truths[i]).tobytes() for i in range(len(frame))]
            # the truth's own shape columns: an ensemble reads OOF keys (the columns test files lack) alone
            frame["truth_height"], frame["truth_width"] = frame["height"], frame["width"]
        return frame

    def read_outputs(self, frame: pd.DataFrame) -> list[np.ndarray]:
        return [np.frombuffer(b, np.uint8).reshape(self.k, h, w)
                for b, h, w in zip(frame["probs"], frame["height"], frame["width"], strict=True)]

    def targets(self, frame: pd.DataFrame) -> list[np.ndarray]:
        return [np.unpackbits(np.frombuffer(b, np.uint8), count=self.k * h * w).reshape(self.k, h, w)
                for b, h, w in zip(frame["truth"], frame["truth_height"], frame["truth_width"], strict=True)]

    # -- ensembles -----------------------------------------------------------------------------------------------
    def blend(self, method: str, oofs: list, tests: list, target, folds: np.ndarray) -> Blend:
        """mean: equal weights; weighted: member weights chosen on a grid by the OOF score with default rules, each
        fold's weights fitted on the other folds (the OOF holds those held-out blends, so its score is honest)."""
        if method not in ("mean", "weighted"):
            raise UserError(f"--method {method}: segmentation ensembles average mask probabilities; use mean or weighted")
        oofs, tests = list(oofs), list(tests)
        uniform = np.full(len(oofs), 1 / len(oofs))
        if method == "mean" or len(oofs) == 1:
            return Blend(self.merge(oofs), self.merge(tests), uniform, None, {})
        held: list = [None] * len(target)
        for k in np.unique(folds):
            fit, out = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            w = self.fit_weights([[m[i] for i in fit] for m in oofs], [target[i] for i in fit])
            for i, m in zip(out, self.merge([[m[i] for i in out] for m in oofs], w), strict=True):
                held[i] = m
        weights = self.fit_weights(oofs, target)
        in_sample = self.evaluate(self.merge(oofs, weights), target)["score"]
        return Blend(held, self.merge(tests, weights), weights, self.evaluate(held, target)["score"],
                     {"weights_from": "fitted on OOF, each fold's on the other folds", "cv_in_sample": in_sample})

    def fit_weights(self, oofs: list, target) -> np.ndarray:
        """Member weights from a coarse grid (each member 0-1 in quarters), by the OOF score at default rules."""
        best, best_score = np.ones(len(oofs)), self.evaluate(self.merge(oofs), target)["score"]
        for i in range(len(oofs)):
            for value in (0.0, 0.5, 2.0):
                trial = best.copy()
                trial[i] = value
                if trial.sum() == 0:
                    continue
                s = self.evaluate(self.merge(oofs, trial), target)["score"]
                if s > best_score + 1e-9:
                    best, best_score = trial, s
        return best / best.sum()

    def blend_test(self, fitted: dict, tests: list) -> list[np.ndarray]:
        return self.merge(tests, fitted["weights"])

    # -- submission and report ----------------------------------------------------------------------------------
    def submission(self, test: pd.DataFrame, sample: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One RLE per id (binary), or per id and class where sample ids are <id>_<class> (Severstal's layout);
        empty masks are empty strings."""
        if len(sample.columns) != 2:
            raise UserError(f"sample_submission has columns {list(sample.columns)}; segmentation expects an id and "
                            "one RLE column")
        rules, order = self.rules(params), self.cfg.segment.rle_order
        id_col, rle_col = sample.columns
        if self.k == 1:
            rows = in_sample_order(test, sample, self.cfg).reset_index()
            return pd.DataFrame({id_col: sample[id_col].to_numpy(),
                                 rle_col: [rle_encode(decide(m[0], rules), order) for m in self.read_outputs(rows)]})
        decided = {f"{i}_{name}": rle_encode(decide(m[c], rules), order)
                   for i, m in zip(test["id"].astype(str), self.read_outputs(test), strict=True)
                   for c, name in enumerate(self.classes)}
        missing = [s for s in sample[id_col].astype(str) if s not in decided]
        if missing:
            raise UserError(f"sample_submission id {missing[0]!r} is not <test id>_<class> for a test id and one of "
                            f"segment.classes {self.classes}")
        return pd.DataFrame({id_col: sample[id_col], rle_col: [decided[s] for s in sample[id_col].astype(str)]})

    def check_submission(self, sub: pd.DataFrame, sample: pd.DataFrame) -> None:
        """Every RLE cell decodes: whole numbers in start/length pairs, starts rising."""
        col = sub.columns[1]
        for n, text in enumerate(sub[col]):
            if isinstance(text, str) and text.strip():
                values = np.asarray(text.split(), dtype=np.int64)
                if len(values) % 2 or (np.diff(values[::2]) <= 0).any() or (values[1::2] <= 0).any():
                    raise UserError(f"submission row {n + 2}: {col} is not a run-length encoding (pairs of rising "
                                    "starts and positive lengths)")

    def report_sections(self, oof: pd.DataFrame, out: Path) -> list:
        from pipeline.tasks.segmentation.report import segmentation_sections  # matplotlib only for a report

        return segmentation_sections(self, oof, out)


def decide(probs: np.ndarray, rules: Rules) -> np.ndarray:
    """One class's uint8 probabilities (x255) to a 0/1 mask under the rules."""
    mask = probs >= int(np.ceil(rules.threshold * 255 - 1e-9))
    if mask.sum() < rules.min_area or probs.max() / 255.0 < rules.empty_below:
        return np.zeros_like(mask, dtype=np.uint8)
    return mask.astype(np.uint8)


__all__ = ["SegmentationTask", "decide", "rle_decode", "rle_encode"]
