"""Test-time augmentation: named sets of views, applied to whole batches and run as one forward pass.

    predict.tta: none | hflip | vflip | flips | d4 | shifts | multiscale | "identity,hflip,rot90" (a set or a view list)
                 | search (each fold's views chosen on the other folds' OOF, see choose_views)

Each view has an exact inverse, so outputs shaped like the image (masks, heatmaps, boxes) can be mapped
back; class probabilities are invariant and are simply averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.errors import UserError

log = logging.getLogger(__name__)


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
    """A translation by 1/16 of the side per unit: the image moves, the edge it leaves is filled by reflection
    (no pixel wraps around to the other side). Its inverse moves back; what left the frame is reflected in."""
    def apply(x, sign=1):
        h, w = x.shape[-2:]
        sy, sx = sign * dy * max(1, h // 16), sign * dx * max(1, w // 16)
        padded = F.pad(x, (max(sx, 0), max(-sx, 0), max(sy, 0), max(-sy, 0)), mode="reflect")
        top, left = max(-sy, 0), max(-sx, 0)
        return padded[..., top:top + h, left:left + w]
    return apply, lambda x: apply(x, -1)


def _scale(factor: float):
    """The batch enlarged by `factor` (bilinear, antialiased): objects look as large as in training's random
    crops (FixRes). A larger input, so it runs as its own forward pass; outputs shaped like the image come back
    to the original size."""
    def apply(x):
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(round(h * factor), round(w * factor)), mode="bilinear", antialias=True,
                             align_corners=False)

    def invert(y):
        h, w = y.shape[-2:]
        return F.interpolate(y, size=(round(h / factor), round(w / factor)), mode="bilinear", antialias=True,
                             align_corners=False)
    return apply, invert


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
    "scale115": View("scale115", *_scale(1.15)),
}

SETS = {
    "none": ["identity"],
    "hflip": ["identity", "hflip"],
    "vflip": ["identity", "vflip"],
    "flips": ["identity", "hflip", "vflip", "rot180"],
    "d4": ["identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose"],  # no up or left
    "shifts": ["identity", "shift_left", "shift_right", "shift_up", "shift_down"],  # for data a flip would change (text, digits)
    "multiscale": ["identity", "scale115"],
    "all": list(VIEWS),  # the candidates of predict.tta=search, which keeps those that raise the OOF score
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


def run_views(forward, x: torch.Tensor, views: list[View]) -> list:
    """forward() on every view of the batch x [B, C, H, W]; per-view outputs (a slice of B each) in view order.

    Views of one input size go through one forward pass together, which is all of them but a rescaled view.
    Views that swap H and W (rot90, transpose) need square inputs, which image.size guarantees."""
    inputs = [view.apply(x) for view in views]
    by_size: dict[tuple, list[int]] = {}
    for i, t in enumerate(inputs):
        by_size.setdefault(tuple(t.shape[-2:]), []).append(i)
    out: list = [None] * len(views)
    for members in by_size.values():
        result = forward(torch.cat([inputs[i] for i in members]))
        for j, i in enumerate(members):
            out[i] = result[j * len(x):(j + 1) * len(x)]
    return out


def choose_views(outputs: dict[int, tuple[list, Any]], names: list[str], merge, evaluate, metric) -> dict[int, list[int]]:
    """predict.tta=search: per fold k, the views (indices, identity first) chosen by greedy forward selection on
    the other folds' OOF rows: a view joins when averaging it in raises their row-weighted mean score. Fold k's
    own rows never take part in choosing its views, so its OOF score with them is honest.

    outputs: fold -> (per-view outputs, truths). A view the model never trained on (an upside-down photo) lowers
    the score and is left out; so are views that only add noise."""
    def score(chosen: list[int], ks: list[int]) -> float:
        total = sum(len(outputs[j][1]) for j in ks)
        return sum(evaluate(merge([outputs[j][0][i] for i in chosen]), outputs[j][1])["score"] * len(outputs[j][1])
                   for j in ks) / total

    n_views, picked = len(names), {}
    for k in outputs:
        others = [j for j in outputs if j != k]
        chosen, best = [0], score([0], others)
        while len(chosen) < n_views:
            trials = [(score([*chosen, i], others), i) for i in range(n_views) if i not in chosen]
            value, i = min(trials, key=lambda t: metric.rank(t[0]))  # rank: best first
            if not metric.better(value, best):
                break
            chosen, best = [*chosen, i], value
        picked[k] = chosen
        log.info("fold %d: TTA views chosen on folds %s: %s (their OOF %s %.4f)", k, others,
                 ", ".join(names[i] for i in chosen), metric.name, best)
    return picked
