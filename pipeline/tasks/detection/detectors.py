"""Detectors: a timm backbone (features_only) with torchvision's FPN and FCOS head.

FCOS is anchor-free (no anchor sizes to tune per competition), trains from scratch at small sizes in tests,
and takes a pretrained backbone from a local weights file; torchvision supplies its losses and NMS.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.engine.models import check_model_name, load_backbone, normalisation

STRIDES = (8, 16, 32)  # backbone levels fed to the FPN (P3-P5); P6-P7 are added on top, as in FCOS


class TimmFPN(nn.Module):
    """timm feature maps at strides 8/16/32 -> FPN P3-P7 with `out_channels` each (what FCOS expects)."""

    def __init__(self, body: nn.Module, channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), channels,
                                         extra_blocks=LastLevelP6P7(channels, channels))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def build_detector(cfg: Config, num_classes: int) -> tuple[nn.Module, tuple, tuple]:
    """(FCOS model, mean, std): the backbone from timm, weights from model.weights_file when given."""
    m = cfg.model
    check_model_name(m.name)
    if cfg.detect.fpn_channels % 32:
        raise UserError(f"detect.fpn_channels={cfg.detect.fpn_channels}: use a multiple of 32 (FCOS's head "
                        "normalises in 32 groups)")
    probe = timm.create_model(m.name, features_only=True, pretrained=False)
    reductions = probe.feature_info.reduction()
    missing = [s for s in STRIDES if s not in reductions]
    if missing:
        raise UserError(f"model.name={m.name!r} has no feature maps at strides {missing}; pick a CNN backbone "
                        "(resnet*, efficientnet*, convnext*, ...)")
    indices = tuple(len(reductions) - 1 - reductions[::-1].index(s) for s in STRIDES)  # deepest map per stride
    try:
        body = timm.create_model(m.name, features_only=True, out_indices=indices,
                                 pretrained=m.pretrained and not m.weights_file, drop_path_rate=m.drop_path_rate)
    except (OSError, RuntimeError) as e:
        raise UserError(f"could not fetch pretrained weights for {m.name} ({type(e).__name__}); offline? "
                        "set model.weights_file=<path> with model.pretrained=false") from None
    if m.weights_file:
        load_backbone(body, Path(m.weights_file))
    if (m.pretrained or m.weights_file) and cfg.detect.freeze_bn:
        body = freeze_batch_norm_2d(body)
    mean, std = normalisation(body, cfg.image.mean, cfg.image.std)
    d, side = cfg.detect, cfg.image.size
    model = FCOS(TimmFPN(body, d.fpn_channels), num_classes=num_classes,
                 min_size=side, max_size=side,  # the dataset already letterboxes to side x side
                 image_mean=list(mean), image_std=list(std), score_thresh=d.score_thr,
                 nms_thresh=d.nms_iou, detections_per_img=d.max_det)
    return model, mean, std
