"""`pipeline tune`: an Optuna study over config keys. TPE by default, Hyperband pruning on each validated epoch,
the study in storage (runs/<exp>/tune/study.db), so that workers (--workers N: Ray tasks, on this machine or a cluster with --on ray) and processes on
others (the same --storage) share one search. Every trial is an ordinary experiment in runs/<exp>/tune/t<number>/.

    pipeline tune --config configs/leaves.yaml --trials 24
    pipeline tune --config configs/leaves.yaml --trials 24 --param train.base_lr=log:1e-4:3e-3 --workers 2
    pipeline tune --config configs/leaves.yaml --storage journal:/nfs/leaves.log      (on a second machine)
    pipeline tune --config configs/leaves.yaml --objective score,infer               (code competitions)

A trial's value is the OOF score over the folds it trains (--folds 0 by default; all for the final comparison):
rows none of its models trained on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from pipeline.core.config import Config, load_config, to_dict
from pipeline.core.errors import UserError
from pipeline.core.files import write_csv, write_json, write_text
from pipeline.data.folds import load_folds
from pipeline.runs.executor import NO_EVENTS, Events, Job, build_executor, shared_paths
from pipeline.runs.rundir import RunDir, parse_folds
from pipeline.runs.tracking import build_tracker
from pipeline.scoring.metrics import greater_is_better, ranker
from pipeline.workflows.tune.space import Param, build_space, default_space, parse_param, parse_space
from pipeline.workflows.tune.study import (
    DONE,
    build_pruner,
    build_sampler,
    build_storage,
    default_storage,
    delete_study,
    fail_dead_trials,
    open_study,
)
from pipeline.workflows.tune.trial import Objective

__all__ = ["Param", "default_space", "parse_param", "parse_space", "run", "warn_edges", "render"]
log = logging.getLogger(__name__)
OBJECTIVES = ("score", "infer")


@dataclass(frozen=True)
class Search:
    """What one `pipeline tune` command asks for, as the CLI parsed it."""

    config: str | None
    overrides: list[str]
    params: list[str] = dataclasses.field(default_factory=list)
    force: bool = False
    worker: int | None = None  # set in the Ray tasks --workers starts; None: the command a person ran


def run(search: Search) -> pd.DataFrame:
    """Run the study to tune.trials finished trials (this process, or --workers Ray tasks), then write what it
    learned -> tune/trials.csv, best.yaml, importances.json."""
    from pipeline.stages import prepare

    cfg = load_config(search.config, search.overrides)
    t = cfg.tune
    space = build_space(cfg, search.params)
    objectives = parse_objectives(t.objective)
    if t.trials < 1 or t.workers < 1:
        raise UserError("tune.trials and tune.workers must be >= 1")
    root = cfg.run_dir / "tune"
    if search.worker is None:
        RunDir(cfg.run_dir).claim("experiment", "tune searches around an experiment's config; give it another name "
                                  "(--set name=...)")
        prepare.run(cfg)  # the experiment's folds, shared by every trial; skipped when up to date
    folds = load_folds(cfg)  # settles data.target_type and an auto train.metric, as every trial will
    fold_ids = [int(k) for k in parse_folds(t.folds, folds.table["fold"].nunique())]
    storage_spec = t.storage or default_storage(root)
    storage = build_storage(storage_spec, root, t.heartbeat)
    if search.force and search.worker is None:
        delete_study(cfg.name, storage, root)
    plan = {"config": plan_config(cfg), "space": [str(p) for p in space], "objectives": objectives, "folds": fold_ids}
    metric_up = greater_is_better(cfg.train.metric)
    directions = ["maximize" if metric_up else "minimize"] + ["minimize"] * (len(objectives) - 1)
    build_sampler(t.sampler, cfg.seed, t.startup, len(objectives))  # a bad name or combination fails before the study
    pruner = build_pruner(t.pruner if len(objectives) == 1 else "none", cfg.train.epochs * len(fold_ids))
    study = open_study(cfg.name, storage, directions, plan, None, pruner)
    # seeded per process and per start: a resumed search or a second process must not replay the first draws
    study.sampler = build_sampler(t.sampler, cfg.seed + 7919 * (search.worker or 0) + len(study.trials), t.startup,
                                  len(objectives))
    log.info("tune %s: %d trials of %s over %s; %s sampler, %s pruner, folds %s; study in %s", cfg.name, t.trials,
             ", ".join(objectives), ", ".join(map(str, space)), t.sampler, t.pruner if len(objectives) == 1 else "no",
             ",".join(map(str, fold_ids)), storage_spec)
    objective = Objective(search.config, search.overrides, cfg, space, fold_ids, objectives, tune_group(cfg))
    if search.worker is None and (t.workers > 1 or cfg.cluster.executor == "ray"):
        run_workers(search, cfg, root)
    else:
        optimize(study, objective, t.trials)
    if search.worker is not None:
        return pd.DataFrame()
    return summarize(study, cfg, search, space, objectives, root)


def plan_config(cfg: Config) -> dict:
    """The config a study stands for: not how it is searched or logged, nor where this machine keeps its files (a
    second machine joining the study mounts them elsewhere)."""
    tree = {k: v for k, v in to_dict(cfg).items() if k not in ("tune", "tracking", "runs_dir", "submissions_dir")}
    tree["data"] = {k: v for k, v in tree["data"].items() if k not in ("root", "cache_dir")}
    return tree


def parse_objectives(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or names[0] != "score" or len(names) > 2 or any(n not in OBJECTIVES for n in names):
        raise UserError(f"--objective {text!r}: choose score, or score,infer (the OOF score and inference seconds "
                        "per 1,000 test rows)")
    return names


def optimize(study: optuna.Study, objective: Objective, trials: int) -> None:
    """Trials one at a time until the study holds `trials` finished or running ones (other workers' too); dead
    local workers' trials are failed and queued again first."""
    while True:
        fail_dead_trials(study)
        started = study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING))
        if len(started) >= trials and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        study.optimize(objective, n_trials=1, catch=(UserError,), gc_after_trial=True)


def run_workers(search: Search, cfg: Config, root: Path) -> None:
    """tune.workers workers, each a Ray task (one GPU each where the cluster has GPUs, else cluster.cpus CPUs) on
    this machine or a cluster (--on ray). They meet in the study's storage; a worker that dies is run again by Ray,
    and its running trial is failed and queued again with the same values."""
    shared = shared_paths(cfg)
    where = [*search.overrides, f"runs_dir={shared.runs_dir}", f"data.root={shared.data.root}",
             *([f"data.cache_dir={shared.data.cache_dir}"] if shared.data.cache_dir else [])]
    executor = build_executor(cfg.cluster, cfg.tune.workers)
    if executor.name == "ray":
        executor.check_shared(Path(shared.runs_dir) / cfg.name, [shared.data.root])
        if not cfg.tune.storage and len(executor.ray.nodes()) > 1:
            log.warning("tune: the study is in SQLite on the shared folder (%s); across machines a journal file "
                        "(--storage journal:%s) or a database server is safer", default_storage(root),
                        root / "study.log")
    config = str(Path(search.config).resolve()) if search.config else None
    executor.run([Job(f"tune worker {k}", tune_worker,
                      (dataclasses.replace(search, config=config, overrides=where, worker=k),))
                  for k in range(cfg.tune.workers)])


def tune_worker(search: Search, events: Events = NO_EVENTS) -> dict:
    """One worker of a study: trials until the study has tune.trials of them."""
    run(search)
    return {"state": "finished", "line": f"worker {search.worker} done"}


def tune_group(cfg: Config) -> str:
    """The W&B group of a search's trials and its result run."""
    return f"{cfg.tracking.group or cfg.name}-tune"


def trials_table(study: optuna.Study, objectives: list[str], space: list[Param]) -> pd.DataFrame:
    """One row per trial: number, state, values, the drawn config values, epochs trained, minutes, folder."""
    keys = list(dict.fromkeys(p.key for top in space for p in top.every_key()))
    rows = []
    for trial in study.get_trials(deepcopy=False):
        values = trial.values or [math.nan] * len(objectives)
        drawn = trial.user_attrs.get("values", {})
        rows.append({"trial": trial.number, "state": trial.state.name.lower(),
                     **{("score" if o == "score" else "infer_s_per_1000"): v for o, v in zip(objectives, values,
                                                                                            strict=True)},
                     **{k: drawn.get(k) for k in keys}, "epochs": trial.user_attrs.get("epochs", 0),
                     "minutes": trial.user_attrs.get("minutes", math.nan), "folder": f"t{trial.number}",
                     "worker": "{host}:{pid}".format(**trial.user_attrs.get("worker", {"host": "-", "pid": "-"})),
                     "error": trial.user_attrs.get("error", "")})
    return pd.DataFrame(rows)


def summarize(study: optuna.Study, cfg: Config, search: Search, space: list[Param], objectives: list[str],
              root: Path) -> pd.DataFrame:
    """trials.csv, the best trial (or the Pareto front), importances, edge warnings, best.yaml, the W&B run."""
    table = trials_table(study, objectives, space)
    write_csv(root / "trials.csv", table)
    complete = table[table["state"] == "complete"]
    if complete.empty:
        raise UserError(f"no trial of study {cfg.name!r} completed; see {root / 'trials.csv'} (state, error)")
    importances = param_importances(study, cfg.seed)
    write_json(root / "importances.json", importances)
    if importances:
        log.info("importances: %s", ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    best = pick_best(study, table, objectives, root)
    warn_edges(best, space, cfg.tune.edge)
    write_best(root, search, best, space, cfg)
    track(cfg, table, best, space)
    table.attrs["metric"] = cfg.train.metric
    table.attrs["objectives"] = objectives
    return table


def pick_best(study: optuna.Study, table: pd.DataFrame, objectives: list[str], root: Path) -> pd.Series:
    """The best trial; with two objectives the Pareto front (tune/pareto.csv, fastest first) is logged and its
    best-scoring trial picked: a code competition's user reads the front for the best model within the budget."""
    if len(objectives) == 1:
        return table[table["trial"] == study.best_trial.number].iloc[0]
    front = table[table["trial"].isin([t.number for t in study.best_trials])].sort_values("infer_s_per_1000")
    write_csv(root / "pareto.csv", front)
    log.info("Pareto front (score vs inference seconds per 1,000 test rows) -> %s\n%s", root / "pareto.csv",
             front[["trial", "score", "infer_s_per_1000"]].to_string(index=False))
    up = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return front.loc[front["score"].idxmax() if up else front["score"].idxmin()]


def param_importances(study: optuna.Study, seed: int) -> dict[str, float]:
    """Optuna's fANOVA evaluator (a random forest's variance decomposition, blind to the direction) over the
    completed trials' score; {} while there are too few."""
    try:
        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), target=lambda t: t.values[0]).items()}
    except (ValueError, RuntimeError) as e:  # fewer than two completed trials, or a constant objective
        log.info("parameter importances: not yet (%s)", str(e).splitlines()[0])
        return {}


def warn_edges(best: pd.Series, space: list[Param], edge: float) -> list[str]:
    """A best value near the end of its range says the optimum may lie outside it: widen the range that way.
    Zero is taken as a hard floor for ranges that start there (dropout, smoothing, decay cannot go below it)."""
    warnings = []
    for p in (q for top in space for q in top.every_key()):
        value = best.get(p.key)
        where = None if value is None or pd.isna(value) else p.position(value)
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
        warnings.append(f"best {p.key}={value:g} is at the {side} end of its range [{p.low:g}, {p.high:g}]; "
                        f"the optimum may lie beyond it: search again with --param {p.key}={p.kind}:{low:g}:{high:g}")
        log.warning(warnings[-1])
    return warnings


def write_best(root: Path, search: Search, best: pd.Series, space: list[Param], cfg: Config) -> None:
    """tune/best.yaml (the drawn values) and the command that trains every fold with them."""
    keys = [p.key for top in space for p in top.every_key()]
    sets = {k: plain(best[k]) for k in dict.fromkeys(keys) if best.get(k) is not None and not pd.isna(best[k])}
    write_text(root / "best.yaml", yaml.safe_dump({"trial": int(best["trial"]), "score": float(best["score"]),
                                                   "metric": cfg.train.metric, "set": sets}, sort_keys=False))
    kept = [o for o in search.overrides if not o.startswith("tune.")]  # the search's own settings mean nothing to train
    command = " ".join(["pipeline train", f"--config {search.config}" if search.config else "",
                        *(f"--set {shlex.quote(o)}" for o in kept),
                        *(f"--set {shlex.quote(f'{k}={v}')}" for k, v in sets.items()), "--fold all"])
    log.info("best: trial %d, %s %.4f -> %s\n  %s", int(best["trial"]), cfg.train.metric, best["score"],
             root / "best.yaml", " ".join(command.split()))


def plain(value):
    return value.item() if hasattr(value, "item") else value


def track(cfg: Config, table: pd.DataFrame, best: pd.Series, space: list[Param]) -> None:
    """One W&B run `<exp>/tune` (job type tune) in the trials' group: the trials table and the best values."""
    tracker = build_tracker(dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, group=tune_group(cfg))),
                            "tune", "tune")
    tracker.media({}, {"trials": table})
    tracker.summary({"best/score": float(best["score"]), "best/trial": int(best["trial"]),
                     **{f"best/{p.key}": plain(best[p.key]) for top in space for p in top.every_key()
                        if best.get(p.key) is not None}})
    tracker.finish()


def render(table: pd.DataFrame, metric: str) -> str:
    """The trials as aligned text, best first; pruned and failed after the completed ones."""
    rank = ranker(metric).rank
    order = {"complete": 0, "pruned": 1, "fail": 2, "running": 3, "waiting": 4}
    rows = sorted(range(len(table)), key=lambda r: (order.get(table["state"].iloc[r], 5), *rank(table["score"].iloc[r])))
    shown = table.iloc[rows].drop(columns=["folder", "worker"]).copy()
    shown["trial"] = [f"t{i}" for i in shown["trial"]]
    shown["score"] = [f"{v:.4f}" if math.isfinite(v) else "-" for v in shown["score"]]
    shown["error"] = [s if len(s) <= 40 else s[:39] + "…" for s in shown["error"]]
    return shown.rename(columns={"score": metric}).to_string(index=False)
