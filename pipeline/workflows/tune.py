"""Random hyper-parameter search, coarse to fine: every trial trains a short run on one fold, the best share of
them goes on to the next, longer stage. Each trial is an ordinary experiment under runs/<exp>/tune/.

    pipeline tune --config configs/leaves.yaml --trials 16
    pipeline tune --config configs/leaves.yaml --trials 24 --param train.base_lr=log:1e-4:3e-3 --stages 1x1,fullx1,fullxall

Random search rather than a grid: with the same budget it tries a new value of every parameter in every trial,
which is what matters when only one or two of them count (Bergstra & Bengio, 2012). Rerunning the same command
resumes: the draws come from the seed, and finished folds are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.core.config import Config, load_config, parse_value, to_dict, with_values
from pipeline.core.errors import UserError
from pipeline.core.files import copy_file, write_csv, write_json, write_text
from pipeline.data.folds import load_folds
from pipeline.engine.scores import score_frame
from pipeline.runs.rundir import RunDir
from pipeline.runs.tracking import build_tracker
from pipeline.scoring.metrics import ranker
from pipeline.tasks import TASKS, build_task

log = logging.getLogger(__name__)
KINDS = ("log", "uniform", "int", "choice")


@dataclass(frozen=True)
class Param:
    """One searched config key: `key=log:LOW:HIGH`, `uniform:LOW:HIGH`, `int:LOW:HIGH` or `choice:A|B|C`."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def sample(self, rng: np.random.Generator):
        if self.kind == "choice":
            return self.choices[rng.integers(len(self.choices))]
        if self.kind == "int":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        if self.kind == "log":  # equal chances for every decade: 1e-4..1e-3 as often as 1e-3..1e-2
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return float(f"{value:.3g}")  # 3 significant digits: readable --set values, no false precision

    def position(self, value) -> float | None:
        """Where value sits in the range: 0 at the low end, 1 at the high end (log scale for log); None for choices."""
        if self.kind == "choice" or self.high == self.low:
            return None
        if self.kind == "log":
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def __str__(self) -> str:
        body = "|".join(map(str, self.choices)) if self.kind == "choice" else f"{self.low:g}:{self.high:g}"
        return f"{self.key}={self.kind}:{body}"


@dataclass(frozen=True)
class Stage:
    epochs: int
    folds: int

    def __str__(self) -> str:
        return f"{self.epochs}x{self.folds}"


def parse_param(text: str) -> Param:
    usage = (f"--param {text!r}: expected key=KIND:LOW:HIGH with KIND log, uniform or int, or key=choice:A|B|C, "
             "e.g. train.base_lr=log:1e-4:1e-2")
    key, _, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    if not key.strip() or kind not in KINDS or not rest:
        raise UserError(usage)
    if kind == "choice":
        return Param(key.strip(), kind, choices=tuple(parse_value(key.strip(), v) for v in rest.split("|")))
    try:
        low, high = (float(v) for v in rest.split(":"))
    except ValueError:
        raise UserError(usage) from None
    if not low < high or (kind == "log" and low <= 0):
        raise UserError(f"--param {text!r}: needs LOW < HIGH{' and LOW > 0 for log' if kind == 'log' else ''}")
    return Param(key.strip(), kind, low, high)


def default_space(cfg: Config) -> list[Param]:
    """The values that matter most on a new competition, centred on the config's own: LR and weight decay a
    decade either way (log-uniform), and for classifiers dropout and label smoothing (uniform)."""
    t = cfg.train
    space = [Param("train.base_lr", "log", t.base_lr / 10, t.base_lr * 10),
             Param("train.weight_decay", "log", *((t.weight_decay / 10, t.weight_decay * 10) if t.weight_decay > 0
                                                  else (1e-4, 1e-1)))]
    if TASKS[cfg.task].tunes_head:  # not detection: torchvision detectors take neither
        space += [Param("model.drop_rate", "uniform", 0.0, 0.5), Param("train.label_smoothing", "uniform", 0.0, 0.2)]
    return space


def parse_stages(items: list[str], cfg: Config) -> list[Stage]:
    """"1x1" -> 1 epoch on 1 fold; "full" is train.epochs and "all" is cv.folds."""
    stages = []
    for item in items:
        epochs, _, folds = item.lower().partition("x")
        try:
            stage = Stage(cfg.train.epochs if epochs == "full" else int(epochs), cfg.cv.folds if folds == "all" else int(folds))
        except ValueError:
            raise UserError(f"tune stage {item!r}: expected EPOCHSxFOLDS, e.g. 1x1, fullx1 or fullxall") from None
        if not (stage.epochs >= 1 and 1 <= stage.folds <= cfg.cv.folds):
            raise UserError(f"tune stage {item!r}: needs at least 1 epoch and 1..{cfg.cv.folds} folds (cv.folds)")
        stages.append(stage)
    if not stages:
        raise UserError("tune.stages is empty; e.g. --stages 1x1,fullx1")
    return stages


def run(config: str | Path | None, overrides: list[str], force: bool = False) -> pd.DataFrame:
    """Draw tune.trials settings, train them stage by stage, keep the best share each time -> tune/trials.csv."""
    from pipeline.stages import prepare

    cfg = load_config(config, overrides)
    space = [parse_param(p) for p in cfg.tune.space] or default_space(cfg)
    stages = parse_stages(cfg.tune.stages, cfg)
    if cfg.tune.trials < 1 or not 0 < cfg.tune.promote <= 1:
        raise UserError("tune.trials must be >= 1 and tune.promote in (0, 1]")
    for param in space:  # a typo in a key or a value of the wrong type fails now, not after an hour of trials
        with_values(cfg, {param.key: param.sample(np.random.default_rng(0))})
    RunDir(cfg.run_dir).claim("experiment", "tune searches around an experiment's config; give it another name "
                              "(--set name=...)")
    prepare.run(cfg)  # the experiment's folds, shared by every trial; skipped when up to date
    load_folds(cfg)  # settles data.target_type and an auto train.metric, as every trial will
    root = cfg.run_dir / "tune"
    start_plan(root, cfg, space, stages, force)
    draws = [{p.key: p.sample(rng) for p in space} for rng in (np.random.default_rng([cfg.seed, i])
                                                               for i in range(cfg.tune.trials))]
    metric = ranker(cfg.train.metric)
    log.info("tune %s: %d trials over %s; stages %s (epochs x folds)", cfg.name, len(draws),
             ", ".join(map(str, space)), ", ".join(map(str, stages)))
    rows, alive = [], list(range(len(draws)))
    for s, stage in enumerate(stages, 1):
        for i in alive:
            rows.append(run_trial(config, overrides, cfg, s, stage, i, draws[i]))
            write_csv(root / "trials.csv", pd.DataFrame(rows))
        ranked = sorted(alive, key=lambda i: rank_key(rows, s, i, metric))
        alive = ranked[:max(1, round(cfg.tune.promote * len(ranked)))]
        log.info("stage %d (%s) done; best trials %s", s, stage, ", ".join(f"t{i:02d}" for i in alive))
    table = pd.DataFrame(rows)
    best = table[(table["stage"] == len(stages)) & (table["trial"] == alive[0])].iloc[0]
    if not math.isfinite(best["score"]):
        raise UserError(f"every trial of the last stage failed; see {root / 'trials.csv'} (status column)")
    warn_edges(best, space, cfg.tune.edge)
    write_best(root, config, overrides, best, space, cfg)
    track(cfg, table, best, space)
    table.attrs["metric"] = cfg.train.metric  # as the folds settled it (auto: the target type's default)
    return table


def start_plan(root: Path, cfg: Config, space: list[Param], stages: list[Stage], force: bool) -> None:
    """tune/plan.json: the base config, space and stages this search stands for. A rerun with other ones would
    mix incomparable trials, so it is refused (more trials are fine: the first draws stay the same)."""
    plan = {"config": {k: v for k, v in to_dict(cfg).items() if k not in ("tune", "tracking")},
            "space": [str(p) for p in space], "stages": [str(s) for s in stages], "seed": cfg.seed}
    path = root / "plan.json"
    if force:
        shutil.rmtree(root, ignore_errors=True)
    elif path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(plan, default=str)):
        raise UserError(f"{root} holds a search with another config, space or stages; rerun with --force to start "
                        f"again, or --set name=<new name> to keep it")
    write_json(path, plan)


def run_trial(config, overrides: list[str], cfg: Config, s: int, stage: Stage, i: int, draw: dict) -> dict:
    """Train one trial's stage as `pipeline train` would, with the drawn values set; its CV on the folds trained."""
    from pipeline.stages import train

    shorter = stage.epochs / cfg.train.epochs  # the whole schedule, compressed: warmup shrinks with it
    trial = with_values(load_config(config, overrides), {
        "name": f"{cfg.name}-s{s}-t{i:02d}", "runs_dir": str(cfg.run_dir / "tune"),
        "tracking.group": tune_group(cfg), "train.epochs": stage.epochs,
        "train.warmup_epochs": float(f"{cfg.train.warmup_epochs * shorter:.4g}"), "train.keep_top": 0,
        "data.cache_dir": str(cfg.cache_dir),  # decoded once for every trial
        **draw})
    ours, theirs = RunDir(cfg.run_dir), RunDir(trial.run_dir)
    for source, target in ((ours.folds_json, theirs.folds_json), (ours.folds_csv, theirs.folds_csv)):
        if not target.is_file():  # the experiment's folds, folds.csv last as prepare writes them
            copy_file(source, target)
    row = {"trial": i, "stage": s, "epochs": stage.epochs, "folds": stage.folds, **draw}
    log.info("trial t%02d stage %d: %s", i, s, " ".join(f"{k}={v}" for k, v in draw.items()))
    began = time.perf_counter()
    try:
        for k in range(stage.folds):
            train.run(trial, fold=k)
        folds = load_folds(trial)
        oof = pd.concat([pd.read_parquet(RunDir(trial.run_dir).fold(k).oof) for k in range(stage.folds)])
        score, status = score_frame(build_task(trial, folds.classes), oof)[0], "ok"
        log.info("trial t%02d stage %d: %s %.4f", i, s, cfg.train.metric, score)
    except UserError as e:  # e.g. a NaN loss at a high LR: that trial is out, the search goes on
        score, status = math.nan, str(e)
        log.warning("trial t%02d stage %d failed: %s", i, s, e)
    return {**row, "score": score, "minutes": round((time.perf_counter() - began) / 60, 2), "status": status}


def rank_key(rows: list[dict], s: int, i: int, metric) -> tuple:
    """Sort key, best first: failed (NaN) trials last, ties by trial number."""
    score = next(r["score"] for r in rows if r["stage"] == s and r["trial"] == i)
    return (*metric.rank(score), i)


def tune_group(cfg: Config) -> str:
    """The W&B group of a search's trials and its result run."""
    return f"{cfg.tracking.group or cfg.name}-tune"


def warn_edges(best: pd.Series, space: list[Param], edge: float) -> list[str]:
    """A best value near the end of its range says the optimum may lie outside it: widen the range that way.
    Zero is taken as a hard floor for ranges that start there (dropout, smoothing, decay cannot go below it)."""
    warnings = []
    for p in space:
        where = p.position(best[p.key])
        if where is None or edge <= where <= 1 - edge or (where < edge and p.kind != "log" and p.low == 0):
            continue
        side = "low" if where < edge else "high"
        if p.kind == "log":  # a decade further
            low, high = (p.low / 10, p.high) if side == "low" else (p.low, p.high * 10)
        else:  # half the span further, not below zero for a range that starts at or above it
            half = (p.high - p.low) / 2
            low, high = (max(p.low - half, 0 if p.low >= 0 else -math.inf), p.high) if side == "low" \
                else (p.low, p.high + half)
            low, high = (int(low), int(high + 0.5)) if p.kind == "int" else (low, high)
        warnings.append(f"best {p.key}={best[p.key]:g} is at the {side} end of its range [{p.low:g}, {p.high:g}]; "
                        f"the optimum may lie beyond it: search again with --param {p.key}={p.kind}:{low:g}:{high:g}")
        log.warning(warnings[-1])
    return warnings


def write_best(root: Path, config, overrides: list[str], best: pd.Series, space: list[Param], cfg: Config) -> None:
    """tune/best.yaml (the drawn values) and the command that trains every fold with them."""
    sets = {p.key: best[p.key].item() if hasattr(best[p.key], "item") else best[p.key] for p in space}
    write_text(root / "best.yaml", yaml.safe_dump({"trial": int(best["trial"]), "score": float(best["score"]),
                                                   "metric": cfg.train.metric, "set": sets}, sort_keys=False))
    kept = [o for o in overrides if not o.startswith("tune.")]  # the search's own settings mean nothing to train
    command = " ".join(["pipeline train", f"--config {config}" if config else "", *(f"--set {shlex.quote(o)}" for o in kept),
                        *(f"--set {shlex.quote(f'{k}={v}')}" for k, v in sets.items()), "--fold all"])
    log.info("best: trial t%02d, %s %.4f -> %s\n  %s", int(best["trial"]), cfg.train.metric, best["score"],
             root / "best.yaml", " ".join(command.split()))


def track(cfg: Config, table: pd.DataFrame, best: pd.Series, space: list[Param]) -> None:
    """One W&B run `<exp>/tune` (job type tune) in the trials' group: the trials table and the best values."""
    tracker = build_tracker(dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, group=tune_group(cfg))),
                            "tune", "tune")
    tracker.media({}, {"trials": table})
    tracker.summary({"best/score": float(best["score"]), "best/trial": int(best["trial"]),
                     **{f"best/{p.key}": best[p.key] for p in space}})
    tracker.finish()


def render(table: pd.DataFrame, metric: str) -> str:
    """The trials as aligned text, stage by stage, best first within a stage."""
    rank = ranker(metric).rank
    order = sorted(range(len(table)), key=lambda r: (table["stage"].iloc[r], *rank(table["score"].iloc[r])))
    shown = table.iloc[order].copy()
    shown["trial"] = [f"t{i:02d}" for i in shown["trial"]]
    shown["score"] = [f"{v:.4f}" if math.isfinite(v) else "failed" for v in shown["score"]]
    shown["status"] = [s if len(s) <= 40 else s[:39] + "…" for s in shown["status"]]
    return shown.rename(columns={"score": metric}).to_string(index=False)
