"""`pipeline drift EXP`: adversarial validation of an experiment's competition files, at any time (prepare runs it
too): a train-vs-test classifier's AUC and the features that separate most (pipeline.data.drift).

    pipeline drift leaves-effnet-lite0   # -> runs/<exp>/adversarial.json, adversarial.csv
"""

from __future__ import annotations

from pipeline.core.errors import UserError
from pipeline.data.drift import Drift, check
from pipeline.data.folds import run_config
from pipeline.runs.rundir import resolve
from pipeline.tasks import TASKS


def run(ref: str, runs_dir: str = "runs") -> Drift | None:
    """`pipeline drift EXP`: adversarial validation of an experiment's competition files, at any time."""
    cfg = run_config(resolve(ref, runs_dir))
    task = TASKS[cfg.task]
    samples, _ = task.sample_table(cfg)
    result = check(cfg, task, samples, task.test_table(cfg))
    if result is None:
        raise UserError(f"{cfg.task} data has no adversarial-validation features, or the test set is empty")
    return result
