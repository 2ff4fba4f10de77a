"""`pipeline tune`: the search space (strings, mappings, gated choices, bad input), Optuna drawing from it, the
border warning, and real studies on the digits through the CLI: SQLite storage, pruning, resuming, refusing another
plan, a failing trial, a dead worker's trial."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.workflows import tune
from pipeline.workflows.tune import Param, default_space, parse_param, parse_space, warn_edges
from pipeline.workflows.tune.space import build_space
from pipeline.workflows.tune.study import build_storage, fail_dead_trials
from tests import wandb_records
from tests.conftest import assert_refused, cli, invoke


def draws(space: list[Param], n: int, seed: int = 0) -> list[dict]:
    """n trials of Optuna's random sampler over the space, as tune's objective draws them."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        values = {}
        for p in space:
            values |= p.suggest(trial)
        study.tell(trial, 0.0)
        out.append(values)
    return out


def test_log_ranges_give_every_decade_the_same_chance_and_ints_and_choices_their_values():
    lr = np.array([d["train.base_lr"] for d in draws([parse_param("train.base_lr=log:1e-5:1e-1")], 2000)])
    assert lr.min() >= 1e-5 and lr.max() <= 1e-1
    per_decade = np.histogram(np.log10(lr), bins=[-5, -4, -3, -2, -1])[0] / len(lr)
    assert np.allclose(per_decade, 0.25, atol=0.04), per_decade  # uniform drawing would put ~90% in the last decade
    space = [parse_param("model.name=choice:test_resnet|test_efficientnet"), parse_param("train.epochs=int:2:4")]
    drawn = draws(space, 60)
    assert {d["model.name"] for d in drawn} == {"test_resnet", "test_efficientnet"}
    assert {d["train.epochs"] for d in drawn} == {2, 3, 4} and all(type(d["train.epochs"]) is int for d in drawn)


def test_a_mapping_space_with_a_choice_that_gates_its_own_keys():
    space = parse_space({
        "train.base_lr": "log:1e-4:1e-2",
        "model.drop_rate": {"uniform": [0, 0.5]},
        "model.name": {"choice": {"resnet18": {"image.size": "int:96:160"},
                                  "efficientnet_lite0": {"image.size": {"choice": [128, 160]}},
                                  "convnext_nano": None}},
    })
    assert [str(p) for p in space][:2] == ["train.base_lr=log:0.0001:0.01", "model.drop_rate=uniform:0:0.5"]
    drawn = draws(space, 80)
    sizes = {}
    for d in drawn:
        sizes.setdefault(d["model.name"], set()).add(d.get("image.size"))
    assert sizes["convnext_nano"] == {None}  # gated keys are drawn only with their choice
    assert sizes["efficientnet_lite0"] == {128, 160}
    assert all(96 <= s <= 160 for s in sizes["resnet18"]) and len(sizes["resnet18"]) > 5
    assert all(0 <= d["model.drop_rate"] <= 0.5 for d in drawn)


@pytest.mark.parametrize(("space", "message"), [
    (["train.base_lr"], "expected KIND"), (["train.base_lr=log:1e-3"], "expected KIND"),
    (["train.base_lr=log:0:1"], "LOW > 0"), (["train.base_lr=normal:0:1"], "expected KIND"),
    (["train.base_lr=uniform:1:0"], "empty range"), (["train.base_lr=uniform:1:1"], "empty range"),
    (["=log:1:2"], "expected KIND"), (["train.epochs=int:1.5:3"], "whole numbers"),
    (["model.name=choice:"], "no values"), ({"model.name": {"choice": []}}, "no values"),
    ({"model.name": {"choice": ["a", "a"]}}, "twice"), ({"train.base_lr": {"log": [1e-3]}}, "expected KIND"),
    ({"train.base_lr": {"uniform": ["a", 1]}}, "numbers"), ("train.base_lr", "a list of key"),
])
def test_bad_spaces_are_refused_in_one_line(space, message):
    with pytest.raises(UserError, match=message) as refused:
        parse_space(space)
    assert "\n" not in str(refused.value)


def test_unknown_keys_and_wrong_types_are_refused_before_any_trial():
    cfg = load_config(None, [])
    with pytest.raises(UserError, match="did you mean train.base_lr"):
        build_space(cfg, ["train.base_rl=log:1e-4:1e-2"])
    with pytest.raises(UserError, match="image.sise"):
        build_space(load_config(None, ["tune.space={model.name: {choice: {resnet18: {image.sise: 'int:96:128'}}}}"]), [])
    with pytest.raises(UserError, match="model.pretrained"):
        build_space(cfg, ["model.pretrained=uniform:0:1"])


def test_default_space_follows_the_config():
    cfg = load_config(None, ["train.base_lr=1e-3", "train.weight_decay=0"])
    space = {p.key: p for p in default_space(cfg)}
    assert (space["train.base_lr"].low, space["train.base_lr"].high) == pytest.approx((1e-4, 1e-2))
    assert space["train.weight_decay"].low > 0  # a log range cannot start at zero decay
    assert "model.drop_rate" in space and "train.label_smoothing" in space
    assert {p.key for p in default_space(load_config(None, ["task=detection"]))} == {"train.base_lr",
                                                                                     "train.weight_decay"}


def test_border_warning_names_the_side_and_a_wider_range():
    space = [Param("train.base_lr", "log", 1e-4, 1e-2), Param("model.drop_rate", "uniform", 0.0, 0.5),
             Param("train.weight_decay", "log", 1e-3, 1e-1)]
    best = pd.Series({"train.base_lr": 9.5e-3, "model.drop_rate": 0.01, "train.weight_decay": 1e-2})
    (warning,) = warn_edges(best, space, edge=0.1)  # drop_rate at 0: zero is a floor, nothing beyond it
    assert "train.base_lr=0.0095 is at the high end" in warning and "train.base_lr=log:0.0001:0.1" in warning
    best["model.drop_rate"] = 0.49
    assert "model.drop_rate=uniform:0:0.75" in warn_edges(best, space, edge=0.1)[1]


class PruneTrialOne(optuna.pruners.BasePruner):
    """A real Optuna pruner with a known verdict: trial 1 is pruned at its first report."""

    def prune(self, study, trial) -> bool:
        return trial.number == 1


def test_a_study_in_sqlite_prunes_resumes_and_refuses_another_plan(competition, make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "build_pruner", lambda name, steps: PruneTrialOne())
    path, cfg = make_config(competition, name="tuned", cv={"folds": 2}, train={"epochs": 2}, data={"cache": True})
    args = ["tune", "--config", str(path), "--trials", "3", "--param", "train.base_lr=log:3e-2:3e-1",
            "--param", "model.drop_rate=uniform:0:0.3"]
    result = cli(*args)
    root = cfg.run_dir / "tune"
    trials = pd.read_csv(root / "trials.csv")
    assert list(trials["trial"]) == [0, 1, 2] and list(trials["state"]) == ["complete", "pruned", "complete"]
    assert list(trials["epochs"]) == [2, 1, 2]  # trial 1 stopped after its first epoch
    pruned = root / "t1" / "fold0"
    assert (pruned / "last.pt").is_file() and not (pruned / "oof.parquet").exists()  # its checkpoint kept, no OOF
    assert trials["train.base_lr"].between(3e-2, 3e-1).all() and trials["train.base_lr"].nunique() == 3
    study = optuna.load_study(study_name="tuned", storage=f"sqlite:///{root / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    best = yaml.safe_load((root / "best.yaml").read_text())
    done = trials[trials["state"] == "complete"]
    assert best["trial"] == done.loc[done["score"].idxmax(), "trial"]  # accuracy: higher is better
    trained = load_config(root / f"t{best['trial']}" / "config.yaml")
    assert trained.train.base_lr == best["set"]["train.base_lr"] and trained.train.epochs == 2
    # the score is the OOF score of fold 0 (rows its model never trained on), as `pipeline train` wrote it
    oof = pd.read_parquet(root / f"t{best['trial']}" / "fold0" / "oof.parquet")
    assert len(oof) == len(pd.read_csv(cfg.run_dir / "folds.csv").query("fold == 0"))
    assert "t0" in result.output and "accuracy" in result.output and "pruned" in result.output
    assert list((tmp_path / "runs/cache").glob("*.npy")) and not (root / "cache").exists()  # one decoded cache

    cli("report", "tuned", "--runs-dir", cfg.runs_dir)  # the experiment is a study: a tuning section
    page = (cfg.run_dir / "report.html").read_text()
    assert "<h2>Tuning</h2>" in page and "3 trials (2 complete, 1 pruned)" in page
    assert (cfg.run_dir / "report" / "tuning.png").is_file()

    stamp = (root / "t0" / "fold0" / "best.pt").stat().st_mtime_ns
    cli(*args[:3], "--trials", "4", *args[5:])  # one more trial: the study goes on, the first three stay
    again = pd.read_csv(root / "trials.csv")
    assert list(again["trial"]) == [0, 1, 2, 3] and again.iloc[:3]["train.base_lr"].equals(trials["train.base_lr"])
    assert (root / "t0" / "fold0" / "best.pt").stat().st_mtime_ns == stamp

    assert_refused(invoke(*args[:-4], "--param", "train.base_lr=log:1e-4:1e-3"), "another space", "--force")
    assert_refused(invoke(*args, "--storage", "postgresql://nobody@127.0.0.1:1/none"), "cannot be opened")
    cli(*args[:-4], "--param", "train.base_lr=log:1e-4:1e-3", "--trials", "1", "--force")
    assert list(pd.read_csv(root / "trials.csv")["trial"]) == [0] and not (root / "t2").exists()


def test_a_failing_trial_is_recorded_and_the_search_goes_on(competition, make_config, monkeypatch):
    """A trial whose loss goes NaN (loop.Diverged, a UserError) is a failed row with its reason; the others train
    on and the best is one that ran; a study where every trial failed is refused with the file to read."""
    from pipeline.engine import loop

    real_epoch = loop.train_epoch

    def diverging(task, state, loader, cfg, epoch, *args, **kwargs):
        if cfg.name == "t1" or Path(cfg.runs_dir).parent.name == "doomed":
            raise loop.Diverged(f"training loss is nan at epoch {epoch + 1} ({cfg.name})")
        return real_epoch(task, state, loader, cfg, epoch, *args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", diverging)
    path, cfg = make_config(competition, name="tuned", cv={"folds": 2}, train={"epochs": 1})
    result = cli("tune", "--config", path, "--trials", "3", "--pruner", "none", "--param", "model.drop_rate=uniform:0:0.3")
    trials = pd.read_csv(cfg.run_dir / "tune" / "trials.csv").set_index("trial")
    assert list(trials["state"]) == ["complete", "fail", "complete"]
    assert trials.loc[1, "error"] == "training loss is nan at epoch 1 (t1)" and math.isnan(trials.loc[1, "score"])
    assert yaml.safe_load((cfg.run_dir / "tune" / "best.yaml").read_text())["trial"] == \
        trials.loc[[0, 2], "score"].idxmax()
    assert "t1" in result.output and "fail" in result.output

    doomed, _ = make_config(competition, name="doomed", cv={"folds": 2}, train={"epochs": 1})
    assert_refused(invoke("tune", "--config", doomed, "--trials", "2", "--param", "model.drop_rate=uniform:0:0.3"),
                   "no trial", "completed", "trials.csv")


def test_a_dead_workers_trial_is_failed_and_queued_again_with_its_values(tmp_path):
    """A trial left running by a process that is gone (kill -9) is failed and retried with the same values."""
    storage = build_storage(f"sqlite:///{tmp_path / 'study.db'}", tmp_path, heartbeat=60)
    study = optuna.create_study(study_name="s", storage=storage)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = study.ask({"train.base_lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    trial.set_user_attr("worker", {"host": os.uname().nodename, "pid": int(gone.stdout)})
    live = study.ask({"train.base_lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    live.set_user_attr("worker", {"host": os.uname().nodename, "pid": os.getpid()})  # this process: alive
    assert fail_dead_trials(study) == [trial.number]
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states == {0: "FAIL", 1: "RUNNING", 2: "WAITING"}
    assert study.trials[2].params == trial.params and study.trials[2].system_attrs["failed_trial"] == trial.number


def test_two_workers_share_one_study_without_colliding(competition, make_config):
    """--workers 2: two Ray tasks (a Ray instance on this machine) draw from one SQLite study; every trial has its own
    folder, none is run twice, and the trials come from both workers."""
    path, cfg = make_config(competition, name="tuned", cv={"folds": 2}, train={"epochs": 1})
    cli("tune", "--config", path, "--trials", "4", "--workers", "2", "--pruner", "none",
        "--param", "model.drop_rate=uniform:0:0.3")
    root = cfg.run_dir / "tune"
    trials = pd.read_csv(root / "trials.csv")
    assert sorted(trials["trial"]) == [0, 1, 2, 3] and (trials["state"] == "complete").all()
    assert sorted(p.name for p in root.glob("t[0-9]*")) == ["t0", "t1", "t2", "t3"]
    study = optuna.load_study(study_name="tuned", storage=f"sqlite:///{root / 'study.db'}")
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2
    assert trials["model.drop_rate"].nunique() == 4  # two seeds: the workers do not draw the same values


def test_two_objectives_give_a_pareto_front_of_score_and_inference_time(competition, make_config):
    """--objective score,infer: each trial's OOF score and the seconds to predict 1,000 test rows with every fold;
    no trial on the front is beaten on both by another."""
    path, cfg = make_config(competition, name="tuned", cv={"folds": 2}, train={"epochs": 1},
                            predict={"weights": "avg"})  # a one-epoch trial has no epochs to average: timed on best
    cli("tune", "--config", path, "--trials", "3", "--objective", "score,infer",
        "--param", "model.name=choice:test_resnet|test_efficientnet")
    root = cfg.run_dir / "tune"
    trials = pd.read_csv(root / "trials.csv")
    assert (trials["state"] == "complete").all() and (trials["infer_s_per_1000"] > 0).all()
    assert (trials["epochs"] == 1).all()  # trained, though a two-objective trial reports nothing to prune on
    front = pd.read_csv(root / "pareto.csv")
    for _, row in front.iterrows():
        better = trials[(trials["score"] >= row["score"]) & (trials["infer_s_per_1000"] < row["infer_s_per_1000"])
                        & ((trials["score"] > row["score"]) | (trials["infer_s_per_1000"] < row["infer_s_per_1000"]))]
        assert better.empty, (row, better)
    assert_refused(invoke("tune", "--config", path, "--objective", "score,infer", "--sampler", "cmaes", "--force"),
                   "cmaes optimises one objective")
    assert_refused(invoke("tune", "--config", path, "--objective", "speed"), "--objective")


def test_each_trial_is_a_wandb_run_beside_its_folds_runs(competition, make_config, monkeypatch):
    """W&B offline: a pruned and a complete trial each leave their fold's training run and one run of their own (job
    type trial: its config and fate), in the trial's folder; the trial run's summary says which (read from the
    offline run file with tests/wandb_records.py)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(tune, "build_pruner", lambda name, steps: PruneTrialOne())
    path, cfg = make_config(competition, name="tuned", cv={"folds": 2}, train={"epochs": 2},
                            tracking={"wandb": "offline", "quiet": True})
    cli("tune", "--config", path, "--trials", "2", "--param", "model.drop_rate=uniform:0:0.3")
    trials = pd.read_csv(cfg.run_dir / "tune" / "trials.csv")
    assert list(trials["state"]) == ["complete", "pruned"]
    for number, state in ((0, "complete"), (1, "pruned")):
        runs = list((cfg.run_dir / "tune" / f"t{number}" / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 2, runs  # fold 0's, and the trial's
        summaries = [wandb_records.summary(r.parent) for r in runs]
        (trial,) = [s for s in summaries if "state" in s]
        assert trial["state"] == state and trial["pruned"] == (state == "pruned")
        row = trials[trials["trial"].astype(str).str.lstrip("t") == str(number)]
        assert trial["score"] == pytest.approx(float(row["score"].iloc[0]))


def test_a_killed_process_that_is_not_yet_reaped_is_not_alive():
    """kill -9 leaves a zombie until its parent waits for it, and signal 0 still reaches a zombie."""
    from pipeline.workflows.tune.study import alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert alive(child.pid)
    child.kill()  # dead, not reaped: a zombie (Popen reaps only in poll/wait)
    deadline = time.monotonic() + 30  # a loaded machine may take a moment to tear it down
    while alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child.pid) and Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    child.wait()
    assert not alive(child.pid)
