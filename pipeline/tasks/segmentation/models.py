"""segmentation_models_pytorch networks on timm encoders (`tu-<name>`), filled from a local weights file; the
losses by name."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.engine.models import check_model_name, load_backbone, normalisation

log = logging.getLogger(__name__)


def import_smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise UserError("task: segmentation needs segmentation_models_pytorch: pip install 'pipeline[segmentation]' "
                        "(make setup installs it)") from None
    return smp


def build_segmenter(cfg: Config, k: int, sides: int = 0) -> tuple[nn.Module, tuple, tuple]:
    """cfg.segment.architecture on timm's model.name as encoder, k output channels. model.weights_file fills the
    encoder from a local file (offline, a code competition); without one, model.pretrained asks timm's hub (internet).
    `sides` constant planes follow the image's three channels (segment.side_csv): the weights file's first
    convolution keeps its RGB filters and the planes' start at zero. Returns the network and the image's
    normalisation (the config's, else the encoder's pretraining)."""
    smp = import_smp()
    check_model_name(cfg.model.name)
    hub = cfg.model.pretrained and not cfg.model.weights_file
    try:
        model = smp.create_model(cfg.segment.architecture, encoder_name=f"tu-{cfg.model.name}",
                                 encoder_weights="imagenet" if hub else None, in_channels=3 + sides, classes=k)
    except (OSError, ConnectionError) as e:
        raise UserError(f"could not fetch pretrained weights for {cfg.model.name} ({type(e).__name__}); offline? "
                        "save them once (`pipeline weights save`) and set model.weights_file=<path>") from None
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"segment.architecture={cfg.segment.architecture!r} with encoder tu-{cfg.model.name}: "
                        f"{str(e).splitlines()[0][:200]}") from None
    encoder = model.encoder.model  # the timm features model smp wraps
    if cfg.model.weights_file:
        load_backbone(encoder, Path(cfg.model.weights_file))
    mean, std = normalisation(encoder, cfg.image.mean, cfg.image.std)
    return model, tuple(mean)[:3], tuple(std)[:3]


class Sum(nn.Module):
    """The sum of several losses on the same logits and targets."""

    def __init__(self, terms: dict[str, nn.Module]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(term(logits, target) for term in self.terms.values())


def build_loss(spec: str, k: int) -> nn.Module:
    """segment.loss: "+"-joined terms (bce, dice, lovasz, focal) on per-class sigmoid logits [B, K, H, W]."""
    losses = import_smp().losses
    mode = "binary" if k == 1 else "multilabel"
    makers = {"bce": lambda: nn.BCEWithLogitsLoss(), "dice": lambda: losses.DiceLoss(mode, from_logits=True),
              "lovasz": lambda: losses.LovaszLoss(mode, per_image=True, from_logits=True),
              "focal": lambda: losses.FocalLoss(mode)}
    names = [n.strip() for n in spec.split("+") if n.strip()]
    unknown = [n for n in names if n not in makers]
    if unknown or not names:
        raise UserError(f"segment.loss={spec!r}: join terms from {', '.join(makers)} with '+', e.g. bce+dice")
    return Sum({n: makers[n]() for n in names})
