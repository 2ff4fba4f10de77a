"""The Optuna study a search lives in: its storage (SQLite in the experiment by default, any SQLAlchemy URL, or a
journal file on a shared filesystem), sampler, pruner, the plan it stands for, and the trials of dead workers.

Optuna's docs advise a journal file rather than SQLite for many writers on a network filesystem; for a few workers on
one machine SQLite with a lock timeout holds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from pipeline.core.errors import UserError

log = logging.getLogger(__name__)
# TPE's `group`, the RDB heartbeat and its retry callback are "experimental" in Optuna's terms, and say so on every
# use; they have been there since Optuna 2.8-3.0. Said once here instead.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trials are logged by tune itself, once
SAMPLERS = ("tpe", "random", "cmaes", "gp")
PRUNERS = ("hyperband", "median", "none")
DONE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def default_storage(root: Path) -> str:
    return f"sqlite:///{(root / 'study.db').resolve()}"


def build_storage(spec: str, root: Path, heartbeat: int):
    """`journal:/path/study.log` -> a JournalStorage on that file; anything else is an SQLAlchemy URL. RDB storages
    keep a heartbeat: a trial whose worker stopped beating for 2 x `heartbeat` s is failed and retried once."""
    try:
        if spec.startswith("journal:"):
            path = Path(spec.removeprefix("journal:")).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if spec.startswith("sqlite:///"):
            Path(spec.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return RDBStorage(spec, engine_kwargs={"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else None,
                          heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as e:  # SQLAlchemy, the driver, the filesystem: each says it its own way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"tune storage {spec!r} cannot be opened ({type(e).__name__}: {first}); give an SQLAlchemy "
                        "URL (sqlite:///path/study.db, postgresql://user@host/db) or journal:/path/study.log") from None


def build_sampler(name: str, seed: int, startup: int, objectives: int) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, grouped for gated keys, `startup` random trials first, a constant liar so parallel
    workers do not all draw the same point), random, CMA-ES or a Gaussian process; seeded."""
    if name == "cmaes" and objectives > 1:
        raise UserError("--sampler cmaes optimises one objective; use tpe or gp with --objective score,infer")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup,
                                          constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    raise UserError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def build_pruner(name: str, steps: int) -> optuna.pruners.BasePruner:
    """Hyperband over `steps` validated epochs (the folds' epochs, end to end), the median rule, or none."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(steps, 1), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"--pruner {name!r}: choose one of {', '.join(PRUNERS)}")


def open_study(name: str, storage, directions: list[str], plan: dict, sampler, pruner) -> optuna.Study:
    """The study `name` in the storage, made if new. One made for another plan (base config, space, objectives,
    folds) would mix incomparable trials: refused (more trials, more workers are fine)."""
    plan = json.loads(json.dumps(plan, default=str))
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    directions=directions, load_if_exists=True)  # a worker beside us may win the race
    theirs = study.user_attrs.get("plan")
    if theirs is None:
        study.set_user_attr("plan", plan)
    elif theirs != plan:
        changed = sorted(k for k in set(plan) | set(theirs) if plan.get(k) != theirs.get(k))
        raise UserError(f"study {name!r} in this storage was made with another {', '.join(changed)}; rerun with "
                        f"--force to start it again, or --set name=<new name> to keep it")
    return study


def delete_study(name: str, storage, root: Path) -> None:
    """--force: the study and the trial folders go."""
    with contextlib.suppress(KeyError):  # no such study yet
        optuna.delete_study(study_name=name, storage=storage)
    for trial_dir in root.glob("t[0-9]*"):
        shutil.rmtree(trial_dir, ignore_errors=True)


def worker_tag() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Running trials whose worker was a process on this machine that is gone (killed, crashed): failed now and
    queued again with the same values (RetryHeartbeatStaleTrialCallback, as the heartbeat does for other machines)."""
    here, dead = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", {})
        if worker.get("host") != here or alive(worker.get("pid", -1)):
            continue
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study._storage.get_trial(trial._trial_id))
        log.warning("trial %d: its worker (pid %s) is gone; marked failed and queued again with the same values",
                    trial.number, worker.get("pid"))
        dead.append(trial.number)
    return dead


def alive(pid: int) -> bool:
    """Whether process pid runs: it exists and is not a zombie (a killed worker stays one until its parent reaps
    it, and signal 0 still reaches a zombie)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:  # Linux: the state letter follows the command name in parentheses
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): signal 0 is what there is
