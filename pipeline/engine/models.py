"""timm models by name for the image tasks (classifiers, detection backbones), offline from local weights files."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from pipeline.core.config import ModelConfig
from pipeline.core.errors import UserError

log = logging.getLogger(__name__)


def build_classifier(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A timm classifier; `weights_file` fills the backbone and leaves the new head freshly initialised."""
    check_model_name(cfg.name)
    kwargs = dict(num_classes=num_classes, drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    try:
        model = timm.create_model(cfg.name, pretrained=cfg.pretrained and not cfg.weights_file, **kwargs)
    except (OSError, RuntimeError) as e:
        if not cfg.pretrained:
            raise
        raise UserError(
            f"could not fetch pretrained weights for {cfg.name} ({type(e).__name__}); offline? "
            "download them once and set model.weights_file=<path> with model.pretrained=false"
        ) from None
    if cfg.weights_file:
        load_backbone(model, Path(cfg.weights_file))
    return model


def zero_head(model: nn.Module) -> nn.Module:
    """Start a one-value head (binary logit, regression value) at zero: p = 0.5, the training mean. timm's
    EfficientNet head draws weights from U(-1/sqrt(outputs), ...), U(-1, 1) for one output, so an untrained
    age model first predicted ~150 years (utkface-age, MAE 178 after 3 steps)."""
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return model


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:5]
        raise UserError(f"model.name={name!r} is not a timm model; similar: {', '.join(close) or 'none'}")


def load_backbone(model: nn.Module, path: Path) -> None:
    """Load every tensor whose name and shape match; only the classifier may be left out. A first convolution with
    more input channels than the file's (an RGB encoder given side-feature planes) keeps the file's RGB filters and
    starts its extra channels at zero, so the model begins as the pretrained one."""
    if not path.is_file():
        raise UserError(f"model.weights_file {path} not found")
    try:
        # weights_only: a pickled checkpoint can run code; a state_dict needs nothing else.
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"model.weights_file {path} is not a loadable state_dict ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    head = _classifier_prefixes(model)
    state = {k: widened(v, own[k]) if k in own else v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not k.startswith(head)}
    missing = [k for k in own if k not in usable and not k.startswith(head)]
    if missing:
        raise UserError(
            f"model.weights_file {path} does not fit model {type(model).__name__}: {len(missing)} backbone tensors "
            f"missing or mis-shaped (e.g. {', '.join(missing[:3])}); is model.name the architecture it was saved from?"
        )
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d backbone tensors from %s; classifier re-initialised", len(usable), path)


def widened(saved: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """A conv weight [out, in, k, k] zero-padded to own's larger input-channel count; any other tensor as it is."""
    if saved.ndim != 4 or own.ndim != 4 or saved.shape[1] >= own.shape[1] or \
            (saved.shape[0], *saved.shape[2:]) != (own.shape[0], *own.shape[2:]):
        return saved
    extra = torch.zeros(saved.shape[0], own.shape[1] - saved.shape[1], *saved.shape[2:], dtype=saved.dtype)
    return torch.cat([saved, extra], dim=1)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"
    names = names if isinstance(names, (list, tuple)) else [names]
    return tuple(f"{n}." for n in names)


def normalisation(model: nn.Module, mean, std) -> tuple[tuple, tuple]:
    """Config mean/std when set, else what the model was pretrained with (0.5/0.5 for TF ports)."""
    data_cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(mean or data_cfg["mean"]), tuple(std or data_cfg["std"])


def save_pretrained(name: str, out: Path, source: str | None = None) -> int:
    """A timm model's pretrained weights as one safetensors file that model.weights_file reads: from the hub (where
    there is internet), or `source`, a file timm reads as the model's pretrained weights (another format, a copy).
    For a Kaggle dataset or a machine without internet. Returns the number of tensors written."""
    from safetensors.torch import save_file

    from pipeline.core.files import atomic_path

    check_model_name(name)
    if source and not Path(source).is_file():
        raise UserError(f"--from {source} not found")
    overlay = {"file": str(source)} if source else None
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError, ValueError) as e:
        where = source or "the hub (needs internet)"
        raise UserError(f"could not read {name}'s pretrained weights from {where} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}); run this where there is internet, or pass --from FILE") from None
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"model": name, "source": str(source or "hub")})
    return len(state)
