"""The search space: config keys and the ranges Optuna draws them from.

On the command line, one key each: `--param train.base_lr=log:1e-4:1e-2`, `uniform:LOW:HIGH`, `int:LOW:HIGH`,
`choice:A|B|C`. In the config, the same strings or a mapping, where a choice may gate keys of its own:

    tune:
      space:
        train.base_lr: log:1e-4:1e-2
        model.drop_rate: {uniform: [0, 0.5]}
        model.name:
          choice:
            resnet18: {image.size: "int:96:160"}      # image.size is searched only when resnet18 is drawn
            efficientnet_lite0: {image.size: "choice:128|160"}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.config import Config, parse_value, with_values
from pipeline.core.errors import UserError
from pipeline.tasks import TASKS

KINDS = ("log", "uniform", "int", "choice")
USAGE = ("expected KIND:LOW:HIGH with KIND log, uniform or int, or choice:A|B|C, e.g. train.base_lr=log:1e-4:1e-2; "
         "in the config also {uniform: [0, 0.5]} or {choice: {value: {gated.key: ...}}}")


@dataclass(frozen=True)
class Param:
    """One searched config key. A choice's `gated` maps some of its values to keys searched only with them."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()
    gated: dict = field(default_factory=dict)

    def suggest(self, trial, within: str = "") -> dict[str, Any]:
        """Draw this key (and the keys its drawn choice gates) from an Optuna trial -> {config key: value}.
        A gated key's Optuna name says which choice it belongs to: each has its own range."""
        name = f"{within}{self.key}"
        if self.kind == "choice":
            value = trial.suggest_categorical(name, list(self.choices))
            drawn = {self.key: value}
            for param in self.gated.get(value, ()):
                drawn |= param.suggest(trial, within=f"{name}={value}/")
            return drawn
        if self.kind == "int":
            return {self.key: trial.suggest_int(name, int(self.low), int(self.high))}
        return {self.key: trial.suggest_float(name, self.low, self.high, log=self.kind == "log")}

    def every_key(self) -> list[Param]:
        """This param and every param its choices gate, depth first."""
        return [self, *(p for params in self.gated.values() for q in params for p in q.every_key())]

    def position(self, value) -> float | None:
        """Where value sits in the range: 0 at the low end, 1 at the high end (log scale for log); None for choices."""
        if self.kind == "choice" or self.high == self.low:
            return None
        if self.kind == "log":
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def __str__(self) -> str:
        if self.kind != "choice":
            return f"{self.key}={self.kind}:{self.low:g}:{self.high:g}"
        gates = "".join(f" [{v}: {', '.join(map(str, ps))}]" for v, ps in self.gated.items() if ps)
        return f"{self.key}=choice:{'|'.join(map(str, self.choices))}{gates}"


def parse_param(text: str) -> Param:
    """`key=KIND:...`, as --param and a list-form tune.space give it."""
    return parse_spec(*split(text))


def split(text: str) -> tuple[str, str]:
    key, _, spec = text.partition("=")
    if not key.strip() or not spec:
        raise UserError(f"--param {text!r}: {USAGE}")
    return key.strip(), spec


def parse_spec(key: str, spec: Any) -> Param:
    """One key's range: the string form, or a mapping {kind: [low, high]} / {choice: [values] or {value: space}}."""
    if isinstance(spec, str):
        kind, _, rest = spec.partition(":")
        if kind == "choice":
            return choice(key, [parse_value(key, v) for v in rest.split("|") if v != ""], {})
        bounds = rest.split(":")
    elif isinstance(spec, dict) and len(spec) == 1:
        (kind, rest), = spec.items()
        if kind == "choice":
            gates = rest if isinstance(rest, dict) else {}
            values = list(gates) if isinstance(rest, dict) else rest if isinstance(rest, list) else []
            return choice(key, values, {v: parse_space(sub or {}, f"{key}={v}: ") for v, sub in gates.items()})
        bounds = rest if isinstance(rest, list) else []
    else:
        raise UserError(f"tune space {key}={spec!r}: {USAGE}")
    return ranged(key, kind, bounds, spec)


def ranged(key: str, kind: str, bounds: list, spec: Any) -> Param:
    if kind not in KINDS or len(bounds) != 2:
        raise UserError(f"tune space {key}={spec!r}: {USAGE}")
    try:
        low, high = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise UserError(f"tune space {key}={spec!r}: LOW and HIGH must be numbers") from None
    if not low < high:
        raise UserError(f"tune space {key}={spec!r}: an empty range; needs LOW < HIGH")
    if kind == "log" and low <= 0:
        raise UserError(f"tune space {key}={spec!r}: a log range needs LOW > 0")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise UserError(f"tune space {key}={spec!r}: an int range needs whole numbers")
    return Param(key, kind, low, high)


def choice(key: str, values: list, gated: dict) -> Param:
    if not values:
        raise UserError(f"tune space {key}: a choice with no values; e.g. choice:32|64 or {{choice: [32, 64]}}")
    if len(set(map(repr, values))) < len(values):
        raise UserError(f"tune space {key}: a choice lists a value twice ({values})")
    for value in values:
        if not (value is None or isinstance(value, bool | int | float | str)):
            raise UserError(f"tune space {key}: choice values are numbers, text, true/false or null, not {value!r}")
    return Param(key, "choice", choices=tuple(values), gated={v: tuple(ps) for v, ps in gated.items() if ps})


def parse_space(space: dict | list, where: str = "") -> list[Param]:
    """tune.space (or a choice's gated keys): a list of key=KIND:... strings, or a mapping key -> range."""
    if isinstance(space, dict):
        items = list(space.items())
    elif isinstance(space, list):
        items = [split(str(text)) for text in space]
    else:
        raise UserError(f"{where}tune.space must be a list of key=KIND:... or a mapping of keys to ranges")
    params = [parse_spec(str(key), spec) for key, spec in items]
    seen = [p.key for p in params]
    if len(set(seen)) < len(seen):
        raise UserError(f"{where}tune.space names a key twice: {sorted({k for k in seen if seen.count(k) > 1})}")
    return params


def default_space(cfg: Config) -> list[Param]:
    """The values that matter most on a new competition, centred on the config's own: LR and weight decay a
    decade either way (log-uniform), and for classifiers dropout and label smoothing (uniform)."""
    t = cfg.train
    decay = (t.weight_decay / 10, t.weight_decay * 10) if t.weight_decay > 0 else (1e-4, 1e-1)
    space = [Param("train.base_lr", "log", t.base_lr / 10, t.base_lr * 10), Param("train.weight_decay", "log", *decay)]
    if TASKS[cfg.task].tunes_head:  # not detection: torchvision detectors take neither
        space += [Param("model.drop_rate", "uniform", 0.0, 0.5), Param("train.label_smoothing", "uniform", 0.0, 0.2)]
    return space


def build_space(cfg: Config, params: list[str]) -> list[Param]:
    """--param values if given, else tune.space, else the default space; every key checked against the config now
    (an unknown key or a value of the wrong type), not after an hour of trials."""
    space = [parse_param(p) for p in params] if params else parse_space(cfg.tune.space) if cfg.tune.space \
        else default_space(cfg)
    for param in (p for top in space for p in top.every_key()):
        for value in param.choices or (param.low, param.high):
            value = int(value) if param.kind == "int" else value
            with_values(cfg, {param.key: value})
    return space
