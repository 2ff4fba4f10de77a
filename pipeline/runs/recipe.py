"""Each fold predicts with its own recipe: the config its checkpoint was trained with, not today's command line.

`make train FOLD=0 SET="image.size=256"` and then `pipeline predict --config configs/leaves.yaml` infer fold 0 at
256 px. What shaped a model (RECIPE) comes from the fold's checkpoint; what is decided at predict time (TTA,
batch size, weights, post-processing, where the data is now) from today's config. predict.image_size is the one
deliberate override of the recipe: a test-time resolution, logged.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from pipeline.core.config import Config, _assign, config_from_dict, to_dict
from pipeline.core.errors import UserError
from pipeline.runs import checkpoint
from pipeline.runs.rundir import FoldDir

log = logging.getLogger(__name__)

# Dotted keys (or whole sections) that shaped a fold's model and its inputs.
# image.crop_pct is not among them: how test images are framed is a predict-time choice, like TTA.
RECIPE = ("task", "model", "image.size", "image.mean", "image.std", "image.cache_margin", "image.interpolation",
          "augment", "sequence", "detect.fpn_channels", "detect.freeze_bn", "data.feature_cols", "data.step_col",
          "data.text_col", "data.text_cols")
SHOWN = ("model.name", "image.size")  # the recipe keys logged per fold


MISSING = object()


def _get(tree: dict, key: str, default: Any = None) -> Any:
    for part in key.split("."):
        tree = tree.get(part, MISSING) if isinstance(tree, dict) else MISSING
    return default if tree is MISSING else tree


def _recipe_value(tree: dict, key: str, defaults: dict) -> Any:
    """A RECIPE key's value in a config tree; a key newer than a checkpoint holds its default there (the fold was
    trained with it)."""
    return _get(tree, key, _get(defaults, key))


def saved_config(fold: FoldDir) -> dict:
    """The resolved config a fold's best.pt was trained with (read without loading its tensors)."""
    state = checkpoint.load(fold.best, mmap=True)
    if "config" not in state:
        raise UserError(f"{fold.best} holds no training recipe (saved by an older version of the pipeline); "
                        f"retrain the fold: pipeline train --config <config> --fold {fold.k} --force")
    return state["config"]


def fold_recipe(cfg: Config, fold: FoldDir) -> Config:
    """Today's config with every RECIPE key as fold k was trained; predict.image_size, if set, overrides image.size."""
    tree, saved, defaults = to_dict(cfg), saved_config(fold), to_dict(Config())
    for key in RECIPE:
        _assign(tree, key.split("."), _recipe_value(saved, key, defaults))
    recipe = config_from_dict(tree, f"{fold.best} (its training recipe)")
    if cfg.predict.image_size:
        log.info("fold %s: predicting at %d px (predict.image_size), trained at %d px", fold.k,
                 cfg.predict.image_size, recipe.image.size)
        recipe = replace(recipe, image=replace(recipe.image, size=cfg.predict.image_size))
    # the fold's own weights replace everything: no backbone weights file is read again
    return replace(recipe, model=replace(recipe.model, pretrained=False, weights_file=None))


def differences(a: dict, b: dict) -> list[str]:
    """The RECIPE keys whose values differ between two config trees, as `key=b (a)`."""
    out, defaults = [], to_dict(Config())
    for key in RECIPE:
        va, vb = _recipe_value(a, key, defaults), _recipe_value(b, key, defaults)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += [f"{key}.{k}={vb.get(k)!r} ({va.get(k)!r})" for k in sorted(set(va) | set(vb))
                    if va.get(k) != vb.get(k) and k not in ("pretrained", "weights_file")]
        elif va != vb:
            out.append(f"{key}={vb!r} ({va!r})")
    return out


def mixed_recipes(saved: dict[int, dict], today: Config) -> list[str]:
    """Warnings when folds were trained with different recipes, or with another one than today's config."""
    first = min(saved)
    notes = [f"fold {k} was trained with {', '.join(diff)} (fold {first}: in brackets); each fold predicts with "
             "its own recipe" for k, tree in sorted(saved.items()) if k != first and (diff := differences(saved[first], tree))]
    if diff := differences(to_dict(today), saved[first]):
        notes.append(f"fold {first} was trained with {', '.join(diff)} (today's config: in brackets); each fold "
                     "predicts with its own recipe")
    for note in notes:
        log.warning(note)
    return notes
