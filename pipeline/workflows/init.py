"""`pipeline init DATA_DIR`: a config for a competition folder, inferred from its files, then `prepare` on it.

    pipeline init data/classify-leaves                       # -> configs/classify-leaves.yaml, folds in runs/
    pipeline init data/cactus --name cactus --weights-file weights/lite0.pth     # offline ImageNet weights

Every line the survey inferred (pipeline.data.survey) is written with its evidence as a comment and every guess
between candidates as a doubt at the top. prepare then checks every file and settles the target type and the
metric, which the config records with their reasons. A folder prepare refuses gets its one line and no config.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.core.config import Config, check_name, with_values
from pipeline.core.errors import UserError
from pipeline.core.files import write_text
from pipeline.data.labels import infer_target_type
from pipeline.data.survey import Found, Survey, survey
from pipeline.runs.rundir import RunDir

log = logging.getLogger(__name__)
SECTIONS = ["name", "task", "data", "model", "image", "sequence", "train", "predict"]
METRIC_NOTE = "the usual metric for this target; set the competition's own (its Evaluation page)"


def run(root: str | Path, name: str | None = None, out: str | Path | None = None, force: bool = False,
        weights_file: str | None = None, runs_dir: str = "runs") -> Path:
    from pipeline.stages import prepare

    s = survey(root)
    given = name is not None
    name = check_name(name or re.sub(r"[^A-Za-z0-9._-]", "-", Path(root).resolve().name), "--name")
    out = Path(out) if out else Path("configs") / f"{name}.yaml"
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it, or --out another file")
    found = {"name": Found(name, "--name" if given else "the folder's name"),
             "data.root": Found(str(root), "the folder given to init"), **s.found, **model_lines(s, weights_file)}
    cfg = with_values(Config(), {"runs_dir": runs_dir, **{k: f.value for k, f in found.items()}})
    prepare.run(cfg, force=force)  # every file checked; a refusal is its one line, and no config is written
    settled = json_of(RunDir(cfg.run_dir).folds_json)
    if "train.metric" not in found:
        found["train.metric"] = Found(settled["metric"], METRIC_NOTE)
    if settled["target_type"] != "auto":  # a task with target types (detection's boxes have none)
        found["data.target_type"] = Found(settled["target_type"], target_reason(cfg, s))
    write_text(out, render(found, s, root))
    log.info("%s -> %s (task %s, %s target, metric %s%s); prepare's folds are in %s. Next: pipeline train --config "
             "%s --fold 0", root, out, s.task, settled["target_type"], settled["metric"],
             f"; {len(s.doubts)} doubt(s) at the top of the file" if s.doubts else "", cfg.run_dir, out)
    return out


def model_lines(s: Survey, weights_file: str | None) -> dict[str, Found]:
    """Where the survey chose an image model: its ImageNet weights, from the hub or (offline) a local file."""
    if not s.images:
        return {}
    if weights_file:
        return {"model.weights_file": Found(weights_file, "--weights-file: ImageNet weights read offline")}
    return {"model.pretrained": Found(True, "timm downloads ImageNet weights (internet); offline: model.weights_file "
                                            "from `pipeline weights save`")}


def target_reason(cfg: Config, s: Survey) -> str:
    """Why prepare took this target type: the same inference, said in words."""
    if cfg.data.label_cols:
        return f"data.label_cols: {len(cfg.data.label_cols)} columns (0/1 labels are multilabel, values regression)"
    table = pd.read_csv(s.root / (cfg.data.labels_csv or cfg.data.train_csv))
    sample = pd.read_csv(cfg.data_path("sample_submission"))
    return infer_target_type(table[cfg.data.target_col], sample, cfg)[1] + " (prepare's inference)"


def render(found: dict[str, Found], s: Survey, root: str | Path) -> str:
    """The YAML, one key per line with its evidence, grouped by section; the doubts first."""
    lines = [f"# Written by `pipeline init {root}` on {time.strftime('%Y-%m-%d')}: each value says where it came "
             "from.", "# Check the metric against the competition's Evaluation page; edit anything, then train."]
    lines += [f"# DOUBT: {d}" for d in s.doubts]
    for section in SECTIONS:
        keys = [k for k in found if k.split(".")[0] == section]
        if section in ("name", "task"):
            lines += [line(k, found[k], "") for k in keys]
        elif keys:
            lines.append(f"{section}:")
            lines += [line(k.split(".", 1)[1], found[k], "  ") for k in keys]
    return "\n".join(lines) + "\n"


def line(key: str, found: Found, indent: str) -> str:
    value = yaml.safe_dump(found.value, default_flow_style=True, width=1000).strip()
    value = value.removesuffix("\n...").removesuffix("...").strip()
    return f"{indent}{key}: {value}  # {found.why}"


def json_of(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text())
