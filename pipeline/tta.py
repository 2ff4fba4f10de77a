"""Test-time augmentation: named sets of views, applied to whole batches and run as one forward pass.

    predict.tta: none | hflip | vflip | flips | d4 | shifts | "identity,hflip,rot90"   (a set or a view list)

Each view has an exact inverse, so outputs shaped like the image (masks, heatmaps, boxes) can be mapped
back; class probabilities are invariant and are simply averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.errors import UserError


@dataclass(frozen=True)
class View:
    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]  # NCHW -> NCHW for images; one sequence for sequence views
    invert: Callable[[torch.Tensor], torch.Tensor]  # undoes apply on image-shaped outputs


def _flip(dims):
    return lambda x: x.flip(dims)


def _rot(k):
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


def _anti_transpose(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 2, dims=(-2, -1)).transpose(-2, -1)


def _shift(dy: int, dx: int):
    """Circular shift by 1/16 of the side per unit: small translations, exactly undone by the opposite shift."""
    def apply(x, sign=1):
        h, w = x.shape[-2:]
        return torch.roll(x, shifts=(sign * dy * max(1, h // 16), sign * dx * max(1, w // 16)), dims=(-2, -1))
    return apply, lambda x: apply(x, -1)


VIEWS = {
    "identity": View("identity", lambda x: x, lambda x: x),
    "hflip": View("hflip", _flip((-1,)), _flip((-1,))),
    "vflip": View("vflip", _flip((-2,)), _flip((-2,))),
    "rot90": View("rot90", _rot(1), _rot(-1)),
    "rot180": View("rot180", _rot(2), _rot(-2)),
    "rot270": View("rot270", _rot(3), _rot(-3)),
    "transpose": View("transpose", _transpose, _transpose),
    "antitranspose": View("antitranspose", _anti_transpose, _anti_transpose),
    "shift_left": View("shift_left", *_shift(0, -1)),
    "shift_right": View("shift_right", *_shift(0, 1)),
    "shift_up": View("shift_up", *_shift(-1, 0)),
    "shift_down": View("shift_down", *_shift(1, 0)),
}

SETS = {
    "none": ["identity"],
    "hflip": ["identity", "hflip"],
    "vflip": ["identity", "vflip"],
    "flips": ["identity", "hflip", "vflip", "rot180"],
    "d4": ["identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose"],  # no up or left
    "shifts": ["identity", "shift_left", "shift_right", "shift_up", "shift_down"],  # for data a flip would change (text, digits)
}


def auto_views(augment) -> str:
    """predict.tta=auto: the symmetries training saw (augment.hflip/vflip/rotate90), no others.

    A view the model never trained on is a distribution shift (a mirrored digit is another digit)."""
    flips = [name for name, p in (("hflip", augment.hflip), ("vflip", augment.vflip)) if p > 0]
    if augment.rotate90 > 0:
        return "d4" if flips else "identity,rot90,rot180,rot270"
    return "flips" if len(flips) == 2 else (flips[0] if flips else "none")


def build_views(spec: str, augment=None) -> list[View]:
    """A set name, auto (needs the augment config) or a comma-separated list of view names; identity first."""
    if spec == "auto":
        spec = auto_views(augment)
    names = SETS.get(spec) or [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in VIEWS]
    if unknown or not names:
        raise UserError(f"predict.tta={spec!r}: unknown view(s) {unknown}; use one of {', '.join(SETS)} "
                        f"or a comma-separated list of {', '.join(VIEWS)}")
    return [VIEWS["identity"]] + [VIEWS[n] for n in names if n != "identity"]


def stack_views(x: torch.Tensor, views: list[View]) -> torch.Tensor:
    """[B, C, H, W] -> [V*B, C, H, W]: every view of the batch in one tensor, for one forward pass.

    Views that swap H and W (rot90, transpose) need square inputs, which image.size guarantees.
    """
    return torch.cat([v.apply(x) for v in views])
