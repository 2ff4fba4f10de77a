"""Data-parallel training through real torchrun (gloo, 2 CPU processes) and the per-fold lock."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.distributed import FoldLock, ShardSampler
from pipeline.core.errors import UserError
from pipeline.stages import prepare, train

# No randomness that depends on the process: no augmentation draws, no BatchNorm (its statistics would
# be per rank), no dropout. Then 2 ranks x batch 8 see the same global batches as 1 process x batch 16.
SAME_GLOBAL_BATCH = {
    "model": {"name": "test_convnext"},
    "augment": {"hflip": 0.0, "color_jitter": 0.0, "scale_min": 1.0},
    "train": {"epochs": 3, "ema": False, "keep_top": 0},
}


def test_two_processes_match_one_on_the_same_global_batch(competition, make_config, tmp_path):
    _, single = make_config(competition, name="single", **{**SAME_GLOBAL_BATCH, "train": {
        **SAME_GLOBAL_BATCH["train"], "batch_size": 16}})
    ddp_path, ddp = make_config(competition, name="ddp", **{**SAME_GLOBAL_BATCH, "train": {
        **SAME_GLOBAL_BATCH["train"], "batch_size": 8}})
    prepare.run(single)
    prepare.run(ddp)
    train.run(single, fold=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "pipeline", "train", "--config", str(ddp_path), "--fold", "0"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "effective batch 16" in result.stderr and result.stderr.count("fold 0 OOF accuracy") == 1  # rank 0 logs

    one = pd.read_csv(single.run_dir / "fold0/metrics.csv")
    two = pd.read_csv(ddp.run_dir / "fold0/metrics.csv")
    assert list(two["step"]) == list(one["step"])  # same optimizer steps per epoch
    assert two["lr"].to_numpy() == pytest.approx(one["lr"].to_numpy())
    assert two["train/loss"].to_numpy() == pytest.approx(one["train/loss"].to_numpy(), rel=1e-3)
    assert two["valid/loss"].to_numpy() == pytest.approx(one["valid/loss"].to_numpy(), rel=1e-3)
    assert two["valid/score"].to_numpy() == pytest.approx(one["valid/score"].to_numpy(), abs=0.02)
    oof_one, oof_two = (pd.read_parquet(c.run_dir / "fold0/oof.parquet") for c in (single, ddp))
    assert list(oof_two["id"]) == list(oof_one["id"])  # the ranks' shards gathered back in order
    assert not (ddp.run_dir / "fold0/train.lock").exists()


def test_shards_cover_the_rows_once_in_order():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sum(shards, []) == list(range(10)) and [len(s) for s in shards] == [4, 4, 2]
    assert [list(ShardSampler(2, r, 4)) for r in range(4)] == [[0], [1], [], []]


def test_a_held_fold_is_skipped_by_other_workers_and_a_dead_holders_lock_is_taken_over(competition, make_config):
    _, cfg = make_config(competition, train={"epochs": 1})
    prepare.run(cfg)
    fold0 = cfg.run_dir / "fold0"
    fold0.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (fold0 / "train.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid}))
        with pytest.raises(UserError, match="fold 0 is being trained by"):
            train.run(cfg, fold=0)
        train.run(cfg, fold="all")  # folds 1 and 2 are free
        assert not (fold0 / "oof.parquet").exists() and (cfg.run_dir / "fold2/oof.parquet").exists()
    finally:
        holder.kill()
        holder.wait()
    assert FoldLock(fold0 / "train.lock").acquire()  # its process is gone: the lock is stale


def _contend(path: str, barrier, results) -> None:
    """One worker's acquire, on storage slow enough (an NFS runs/) that both workers read the stale lock before
    either acts on it: the race made likely instead of rare."""
    read = Path.read_text

    def slow_read(self, *args, **kwargs):
        text = read(self, *args, **kwargs)
        time.sleep(0.05)
        return text

    Path.read_text = slow_read
    barrier.wait()
    results.put(FoldLock(Path(path)).acquire())
    barrier.wait()  # alive until both tried: a winner that exited would leave a dead holder's lock, rightly taken


def test_a_stale_lock_is_taken_over_by_exactly_one_of_two_contenders(tmp_path):
    """Two workers that both find a dead holder's lock race to take it over: one wins, the other sees a live
    holder; rounds of it, each started at one barrier. (Unlink-then-create let both win.)"""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "train.lock"
    for _ in range(20):
        path.write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout)}))
        barrier, results = context.Barrier(2), context.Queue()
        workers = [context.Process(target=_contend, args=(str(path), barrier, results)) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        won = sorted(results.get(timeout=5) for _ in workers)
        assert won == [False, True]
        assert json.loads(path.read_text())["pid"] in {w.pid for w in workers}
    assert not list(tmp_path.glob("train.lock.*"))  # no marker or temporary file left behind


def test_a_half_written_lock_is_respected_while_fresh_and_taken_once_stale(tmp_path):
    """A lock whose text does not parse is a worker writing it, or one that died mid-write: waited on, then taken
    over once it has not been touched for STALE seconds."""
    path = tmp_path / "train.lock"
    path.write_text('{"host": "x", "pi')
    assert not FoldLock(path).acquire()
    old = time.time() - FoldLock.STALE - 60
    os.utime(path, (old, old))
    lock = FoldLock(path)
    assert lock.acquire()
    lock.release()
    assert not path.exists()


@pytest.mark.slow  # two torchrun processes, ~30 s; DDP's numbers are checked in make test by the test above
def test_accumulation_micro_steps_do_not_all_reduce(competition, make_config):
    """train.accum_steps=2 under DDP: one gradient all-reduce per optimizer step (no_sync on the micro-steps), as
    many as accum_steps=1 makes for the same steps, not twice as many."""
    path, cfg = make_config(competition, **{**SAME_GLOBAL_BATCH, "train": {**SAME_GLOBAL_BATCH["train"],
                                                                           "batch_size": 4}})
    prepare.run(cfg)
    probe = os.path.join(os.path.dirname(__file__), "ddp_probe.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    counts = {}
    for accum in (1, 2):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 probe, str(path), str(accum), "3"], capture_output=True, text=True, env=env,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        counts[accum] = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts[1]["steps"] == counts[2]["steps"] == 3
    assert counts[2]["allreduces"] == counts[1]["allreduces"] > 0


@pytest.mark.slow  # two worker processes re-predicting every fold: ~1 min
def test_predict_on_two_workers_writes_what_one_process_writes(copy_run):
    """`pipeline predict --gpus 2` (make predict GPUS=2): each fold a Ray task, combined once at the end."""
    from pipeline.runs.rundir import RunDir
    from pipeline.stages import predict

    cfg = copy_run(predict={"tta": "hflip"})
    one = predict.run(cfg)
    run = RunDir(cfg.run_dir)
    test_one = pd.read_parquet(run.test)
    for f in run.fold_dirs():
        f.predict_json.unlink()
    two = predict.run(cfg, gpus=2)
    assert two["cv"] == one["cv"] and two["folds"] == one["folds"]
    pd.testing.assert_frame_equal(pd.read_parquet(run.test), test_one)
