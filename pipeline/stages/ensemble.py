"""Stage 4: combine experiments' OOF and test predictions into a new run directory.

    pipeline ensemble leaves-effnet leaves-convnext --method weighted --name blend1

Members must share one folds file; weights and meta-models are fitted on OOF rows only, and their CV
is reported fitted-on-other-folds, so a blend cannot flatter itself.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import ensemble
from pipeline.config import Config, dump_yaml, load_config
from pipeline.errors import UserError
from pipeline.files import write_json, write_parquet, write_text
from pipeline.metrics import METRICS
from pipeline.provenance import collect_meta

log = logging.getLogger(__name__)
METHODS = ("mean", "weighted", "rank", "geometric", "stack")


@dataclass
class Member:
    name: str
    run: Path
    cfg: Config
    oof: pd.DataFrame  # id, target, fold, classes...; sorted by id
    test: pd.DataFrame  # id, classes...; sorted by id
    cv: float


def load_member(ref: str, runs_dir: str) -> Member:
    """A member by experiment name (runs/<name>) or by run-directory path."""
    run = Path(ref) if Path(ref).is_dir() and (Path(ref) / "config.yaml").is_file() else Path(runs_dir) / ref
    for name in ("config.yaml", "folds.csv", "oof.parquet", "test.parquet", "scores.json"):
        if not (run / name).is_file():
            raise UserError(f"ensemble member {ref}: {run / name} missing; run `pipeline predict` for it first")
    cfg = load_config(run / "config.yaml")
    scores = json.loads((run / "scores.json").read_text())
    oof = pd.read_parquet(run / "oof.parquet").sort_values("id", ignore_index=True)
    test = pd.read_parquet(run / "test.parquet").sort_values("id", ignore_index=True)
    return Member(ref, run, cfg, oof, test, scores["cv"])


def check_compatible(members: list[Member]) -> list[str]:
    """Same folds, same OOF and test ids, same classes; returns the class columns."""
    first = members[0]
    folds = pd.read_csv(first.run / "folds.csv", dtype={"id": str})[["id", "fold"]]
    classes = [c for c in first.test.columns if c != "id"]
    for m in members[1:]:
        other = pd.read_csv(m.run / "folds.csv", dtype={"id": str})[["id", "fold"]]
        if not folds.equals(other):
            raise UserError(f"{m.name} was trained on different folds than {first.name} ({m.run / 'folds.csv'}); "
                            "an ensemble needs one folds file (same data, cv.folds and seed)")
        if [c for c in m.test.columns if c != "id"] != classes:
            raise UserError(f"{m.name} predicts other classes than {first.name}")
        for part in ("oof", "test"):
            if not getattr(m, part)["id"].equals(getattr(first, part)["id"]):
                raise UserError(f"{m.name} and {first.name} have different {part} ids; predict all folds of both")
    return classes


def run(refs: list[str], method: str = "weighted", name: str | None = None, runs_dir: str = "runs") -> dict:
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if len(refs) < 2:
        raise UserError("an ensemble needs at least two experiments")
    members = [load_member(r, runs_dir) for r in refs]
    classes = check_compatible(members)
    base = members[0]
    metric = METRICS[base.cfg.train.metric]
    index = {str(c): i for i, c in enumerate(classes)}
    target = base.oof["target"].astype(str).map(index).to_numpy()
    folds = base.oof["fold"].to_numpy()
    oofs = [m.oof[classes].to_numpy(dtype=np.float32) for m in members]
    tests = [m.test[classes].to_numpy(dtype=np.float32) for m in members]

    if method == "stack":
        weights = None
        oof, test = ensemble.stack(oofs, target, folds, tests, len(classes))
        honest = metric(target, oof)
    else:
        n = len(members)
        weights = (ensemble.hill_climb(method, oofs, target, metric) if method == "weighted" else np.full(n, 1 / n))
        oof, test = ensemble.combine(method, oofs, weights), ensemble.combine(method, tests, weights)
        honest = ensemble.held_out_weights_score(method, oofs, target, folds, metric)[0] if method == "weighted" else None
    cv = metric(target, oof)
    name = name or f"ens-{method}-" + "-".join(m.cfg.name for m in members)
    scores = write_ensemble(base, members, name, method, classes, oof, test, weights, metric, target, cv, honest)
    log.info("members: %s", ", ".join(f"{m.name} {metric.name} {m.cv:.4f}" for m in members))
    log.info("%s ensemble %s: CV %.4f%s -> %s", method, name, cv,
             f" (weights fitted on other folds: {honest:.4f})" if honest is not None else "", base.cfg.runs_dir + "/" + name)
    return scores


def write_ensemble(base: Member, members, name, method, classes, oof, test, weights, metric, target, cv, honest) -> dict:
    cfg = load_config(base.run / "config.yaml", [f"name={name}"])
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    for f in ("folds.csv", "folds.json"):
        shutil.copyfile(base.run / f, run / f)
    keys = base.oof[["id", "target", "fold"]]
    write_parquet(run / "oof.parquet", pd.concat([keys, pd.DataFrame(oof, columns=classes)], axis=1))
    write_parquet(run / "test.parquet", pd.concat([base.test[["id"]], pd.DataFrame(test, columns=classes)], axis=1))
    folds = base.oof["fold"].to_numpy()
    per_fold = {int(k): metric(target[folds == k], oof[folds == k]) for k in np.unique(folds)}
    scores = {"metric": metric.name, "cv": cv, "cv_std": float(np.std(list(per_fold.values()))), "folds": per_fold,
              "cv_held_out": honest, "method": method, "members": {m.name: m.cv for m in members}, "rows": len(oof)}
    write_json(run / "members.json", [{"name": m.name, "run": str(m.run), "cv": m.cv} for m in members])
    write_json(run / "weights.json", {"method": method, "weights": None if weights is None else
                                      {m.name: float(w) for m, w in zip(members, weights, strict=True)}})
    write_json(run / "scores.json", scores)
    write_text(run / "config.yaml", dump_yaml(cfg))
    write_json(run / "meta.json", {**collect_meta(cfg, "ensemble"), "members": [m.name for m in members]})
    return scores
