"""Crashes and repeats: a fold killed with SIGKILL resumes to exactly the weights of an uninterrupted run,
and the same seed gives the same folds, OOF predictions and submission."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from pipeline.core.seeding import SeededSampler
from pipeline.runs import checkpoint
from pipeline.stages import predict, prepare, submit, train
from tests.conftest import cli

AUGMENTED = {"hflip": 0.5, "vflip": 0.5, "rotate90": 0.5, "color_jitter": 0.3, "scale_min": 0.5}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_same_fold(run_a, run_b, k: int = 0) -> None:
    a, b = checkpoint.load(run_a / f"fold{k}/last.pt"), checkpoint.load(run_b / f"fold{k}/last.pt")
    assert same_tensors(a["model"], b["model"]) and same_tensors(a["ema"], b["ema"])
    assert same_tensors(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert a["progress"] == b["progress"]
    pd.testing.assert_frame_equal(pd.read_parquet(run_a / f"fold{k}/oof.parquet"),
                                  pd.read_parquet(run_b / f"fold{k}/oof.parquet"))


# 2: persistent loader processes, seeded the same after a resume (slow: their start-up doubles the test)
@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_fold_killed_mid_training_resumes_to_the_uninterrupted_weights(competition, make_config, workers):
    sections = {"train": {"epochs": 3, "patience": 0, "num_workers": workers}, "augment": AUGMENTED}
    _, whole = make_config(competition, name="whole", **sections)
    prepare.run(whole)
    train.run(whole, fold=0)

    path, cfg = make_config(competition, name="killed", **sections)
    prepare.run(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same kernels as this process
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--config", str(path), "--fold", "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = cfg.run_dir / "fold0/metrics.csv"
    deadline = time.monotonic() + 180
    while not metrics.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # somewhere in epoch 2 (or while writing its files): no cleanup runs
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    interrupted = checkpoint.load(cfg.run_dir / "fold0/last.pt")["progress"]
    assert not interrupted["done"] and not (cfg.run_dir / "fold0/oof.parquet").exists()

    train.run(cfg, fold=0)  # the same command again finishes the fold
    assert_same_fold(whole.run_dir, cfg.run_dir)
    assert not list(cfg.run_dir.glob("**/.*.tmp"))  # the killed writer's temporary files are gone


def test_same_seed_gives_the_same_folds_oof_and_submission(competition, make_config):
    runs = []
    for name in ("first", "second"):
        _, cfg = make_config(competition, name=name, train={"epochs": 1, "patience": 0}, augment=AUGMENTED,
                             predict={"tta": "flips"})
        prepare.run(cfg)
        train.run(cfg, fold="all")
        predict.run(cfg)
        runs.append((cfg, submit.run(cfg.name, runs_dir=cfg.runs_dir, message="determinism")))
    (a, sub_a), (b, sub_b) = runs
    assert (a.run_dir / "folds.csv").read_bytes() == (b.run_dir / "folds.csv").read_bytes()
    for k in range(a.cv.folds):
        assert_same_fold(a.run_dir, b.run_dir, k)
    for name in ("oof.parquet", "test.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(a.run_dir / name), pd.read_parquet(b.run_dir / name))
    assert sub_a.read_bytes() == sub_b.read_bytes()


def test_augmentation_draws_depend_on_the_sample_not_the_process(competition, make_config):
    """The same (seed, epoch, index) gives the same augmented image in a fresh dataset, in any order."""
    from pipeline.data.folds import load_folds
    from pipeline.tasks import build_task

    _, cfg = make_config(competition, augment=AUGMENTED)
    prepare.run(cfg)
    folds = load_folds(cfg)
    task = build_task(cfg, folds.classes)
    task.build_model()
    rows = folds.table.head(8)
    sampler = SeededSampler(range(8), seed=7)
    sampler.set_epoch(3)
    keys = list(sampler)
    first = [task.build_dataset(rows, train=True)[key][0] for key in keys]
    again = task.build_dataset(rows, train=True)
    assert all(torch.equal(again[key][0], x) for key, x in reversed(list(zip(keys, first, strict=True))))
    sampler.set_epoch(4)
    assert not all(torch.equal(again[key][0], x) for key, x in zip(sampler, first, strict=True))


def nan_after(monkeypatch, calls: int, times: int = 10**9) -> None:
    """Make the training loss NaN from the `calls`-th training batch on, for `times` batches."""
    from pipeline.tasks.classification import ClassificationTask

    real, seen = ClassificationTask.loss, {"n": 0, "nan": 0}

    def loss(self, model, batch):
        out = real(self, model, batch)
        if model.training:
            seen["n"] += 1
            if seen["n"] > calls and seen["nan"] < times:
                seen["nan"] += 1
                return out * float("nan")
        return out

    monkeypatch.setattr(ClassificationTask, "loss", loss)


def test_nan_loss_stops_the_fold_naming_epoch_and_step_and_keeps_the_good_checkpoints(competition, make_config, monkeypatch):
    path, cfg = make_config(competition, train={"epochs": 3, "ema": False})
    prepare.run(cfg)
    nan_after(monkeypatch, calls=8)  # 6 batches per epoch: the NaN comes in epoch 2, step 9
    result = cli("train", "--config", path, "--fold", "0", exit_code=2)  # the exit code of errors the user can fix
    assert "training loss is nan at epoch 2, step 9" in result.output and "Traceback" not in result.output
    best, last = checkpoint.load(cfg.run_dir / "fold0/best.pt"), checkpoint.load(cfg.run_dir / "fold0/last.pt")
    assert best["progress"]["epoch"] == last["progress"]["epoch"] == 0  # nothing from the broken epoch
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert sorted(p.name for p in (cfg.run_dir / "fold0/top").iterdir()) == ["epoch000.pt"]


def test_nan_rollback_reloads_the_last_good_epoch_with_a_lower_lr(competition, make_config, monkeypatch, caplog):
    _, cfg = make_config(competition, train={"epochs": 3, "on_nan": "rollback", "max_rollbacks": 2,
                                             "warmup_epochs": 0, "min_lr_ratio": 1.0})  # constant LR: easy to read
    prepare.run(cfg)
    nan_after(monkeypatch, calls=8, times=1)  # one bad batch in epoch 2
    train.run(cfg, fold=0)
    state = checkpoint.load(cfg.run_dir / "fold0/last.pt")
    assert state["progress"]["done"] and state["progress"]["rollbacks"] == 1
    metrics = pd.read_csv(cfg.run_dir / "fold0/metrics.csv")
    assert list(metrics["epoch"]) == [0, 1, 2]  # epoch 2 was trained again, once, and recorded once
    assert metrics["lr"].iloc[1] == pytest.approx(metrics["lr"].iloc[0] * 0.5)
    assert "rolling back to epoch 1 with the LR x0.5 (rollback 1 of 2" in caplog.text


def test_nan_rollback_gives_up_after_max_rollbacks(competition, make_config, monkeypatch):
    from pipeline.engine.loop import Diverged

    _, cfg = make_config(competition, train={"epochs": 2, "on_nan": "rollback", "max_rollbacks": 2})
    prepare.run(cfg)
    nan_after(monkeypatch, calls=2)  # every batch from the third on: the first epoch itself never finishes
    with pytest.raises(Diverged, match="epoch 1, step 1;.* Gave up after 2 rollbacks"):  # step 3, then 1 and 1
        train.run(cfg, fold=0)
    assert not (cfg.run_dir / "fold0/last.pt").exists() and not (cfg.run_dir / "fold0/best.pt").exists()


def test_a_prediction_file_from_an_interrupted_run_is_refused_not_submitted(copy_run):
    """Each file is replaced atomically; a kill between test.parquet and scores.json pairs files of two runs."""
    from pipeline.core.errors import UserError
    from pipeline.core.files import new_stamp, write_parquet

    cfg = copy_run()  # trained and predicted
    submit.run(cfg.name, runs_dir=cfg.runs_dir)  # a consistent run submits
    test = cfg.run_dir / "test.parquet"
    write_parquet(test, pd.read_parquet(test), new_stamp())  # a later predict, killed before its scores.json
    with pytest.raises(UserError, match="test.parquet is not the file .*scores.json describes.*rerun it"):
        submit.run(cfg.name, runs_dir=cfg.runs_dir)
    predict.run(cfg)  # rerunning the command heals it
    submit.run(cfg.name, runs_dir=cfg.runs_dir)


@pytest.mark.slow
def test_predict_and_ensemble_killed_at_any_moment_finish_on_rerun(copy_run):
    """SIGKILL `pipeline predict` and `pipeline ensemble` at spread-out moments; whatever is on disk stays
    readable, submit never takes a mismatched pair, and rerunning gives the uninterrupted outputs."""
    from pipeline.core.errors import UserError
    from pipeline.stages import ensemble

    a, b = copy_run("a"), copy_run("b", predict={"tta": "none"})  # two trained runs; b's predictions differ
    path_a = a.run_dir / "config.yaml"
    predict.run(b)
    predict.run(a)
    reference = {n: pd.read_parquet(a.run_dir / n) for n in ("oof.parquet", "test.parquet")}
    ensemble.run([a.name, b.name], method="weighted", name="blend", runs_dir=a.runs_dir)
    blended = pd.read_parquet(a.runs_dir + "/blend/test.parquet")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    commands = {
        "predict": ["predict", "--config", str(path_a)],
        "ensemble": ["ensemble", a.name, b.name, "--method", "weighted", "--name", "blend", "--runs-dir", a.runs_dir],
    }
    for stage, args in commands.items():
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, check=True, capture_output=True)
        whole = time.monotonic() - started
        for share in (0.5, 0.7, 0.85, 0.95):
            proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(whole * share)
            proc.kill()
            proc.wait()
            run = a.run_dir if stage == "predict" else a.runs_dir + "/blend"
            for p in pd.io.common.Path(run).rglob("*.parquet"):
                pd.read_parquet(p)  # every file on disk is whole
            try:
                submit.run(str(run), runs_dir=a.runs_dir, out=str(a.run_dir.parent / f"{stage}-{share}.csv"))
            except UserError as e:  # a detected mismatch is fine; a wrong submission is not
                assert "is not the file" in str(e)
    predict.run(a)
    for n, frame in reference.items():
        pd.testing.assert_frame_equal(pd.read_parquet(a.run_dir / n), frame)
    ensemble.run([a.name, b.name], method="weighted", name="blend", runs_dir=a.runs_dir)
    pd.testing.assert_frame_equal(pd.read_parquet(a.runs_dir + "/blend/test.parquet"), blended)


def test_deterministic_flag_turns_on_deterministic_kernels(competition, make_config):
    path, cfg = make_config(competition, train={"epochs": 1})
    prepare.run(cfg)
    try:
        cli("train", "--config", path, "--fold", "0", "--deterministic")
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert "deterministic: true" in (cfg.run_dir / "config.yaml").read_text()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
