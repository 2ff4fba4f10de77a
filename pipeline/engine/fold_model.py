"""One trained fold as `predict` used it: its recipe, its weights (best, EMA or averaged, as predict chose) and the
TTA views predict kept; rebuilt from a run directory (export, distill) or from an export folder (infer)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.data.folds import load_folds
from pipeline.data.tables import build_loader
from pipeline.engine.averaging import fold_weights
from pipeline.engine.loop import infer, pick_device, resolve_precision
from pipeline.engine.progress import ProgressSpec
from pipeline.engine.task import Task, build_task
from pipeline.runs.recipe import fold_recipe
from pipeline.runs.rundir import RunDir
from pipeline.scoring.tta import View


@dataclass
class FoldModel:
    cfg: Config  # the fold's recipe, predict.tta as predict ran it
    task: Task
    model: nn.Module  # on CPU until predict() moves it
    views: list[View]  # the views predict merged (identity first)
    record: dict = field(default_factory=dict)  # the fold's predict.json

    def predict(self, rows: pd.DataFrame, device: torch.device | None = None, views: list[View] | None = None,
                progress: str | None = None):
        """Outputs for rows (id column) with the views merged, as predict merged them into test.parquet;
        progress: the label of its bar (or log lines), None for none."""
        device = device or pick_device()
        task = self.task
        self.model.to(device, memory_format=task.memory_format)
        loader = build_loader(task.build_dataset(rows, train=False), self.cfg, False, self.cfg.predict.batch_size)
        dtype = resolve_precision(self.cfg.train.precision, device)
        shown = ProgressSpec.of(progress, self.cfg.tracking)
        return task.merge(list(infer(task, self.model, loader, device, dtype, views or self.views, shown)))


def chosen_views(task: Task, spec: str, names: list[str]) -> list[View]:
    """The views named (predict.json "views") out of those the spec makes (search: every view the task allows)."""
    return [v for v in task.views("all" if spec == "search" else spec) if v.name in names]


def from_run(cfg: Config, k: int) -> FoldModel:
    """Fold k of the run at cfg.run_dir with the weights and views its predict.json records; cfg is the run's
    config (config.yaml, target type resolved)."""
    fold = RunDir(cfg.run_dir).fold(k)
    record = json.loads(fold.predict_json.read_text())
    recipe = fold_recipe(cfg, fold)
    recipe.predict.tta = record["tta"]  # as predict ran it (its --tta), not as config.yaml says
    choice = record.get("weights_used", record["weights"])
    record = {**record, "weights_used": choice}
    task = build_task(recipe, RunDir(cfg.run_dir).classes())
    if fold.preprocess.is_file():
        task.load_fold(json.loads(fold.preprocess.read_text()))
    model = task.build_model()
    model.load_state_dict(fold_weights(recipe, task, model, load_folds(recipe) if choice == "avg" else None, k,
                                       choice))
    return FoldModel(recipe, task, model, chosen_views(task, record["tta"], record["views"]), record)


def from_export(fold_dir: Path, recipe: Config, classes: list) -> FoldModel:
    """A fold of an export folder (pipeline.runs.exported), its recipe already pointed at the test files."""
    from safetensors.torch import load_file

    from pipeline.runs.exported import PREDICT, PREPROCESS, WEIGHTS

    record = json.loads((fold_dir / PREDICT).read_text())
    task = build_task(recipe, classes)
    if (fold_dir / PREPROCESS).is_file():
        task.load_fold(json.loads((fold_dir / PREPROCESS).read_text()))
    model = task.build_model()
    # an fp16 export is widened here: the model computes in fp32 (or the recipe's autocast), as it was validated
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in load_file(str(fold_dir / WEIGHTS)).items()})
    except Exception as e:  # safetensors' own error type, or load_state_dict's RuntimeError: a file edited
        raise UserError(f"{fold_dir / WEIGHTS} does not hold weights that fit its recipe's model "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); export the experiment again") from None
    return FoldModel(recipe, task, model, chosen_views(task, recipe.predict.tta, record["views"]), record)
