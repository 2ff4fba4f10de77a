"""Folds and predictions as Ray tasks, on real Ray: the instance `--on ray` starts on this machine, and a cluster of
two nodes on this machine (ray.cluster_utils.Cluster) the CLI joins with --ray-address. The drivers are real
`python -m pipeline` processes, so a worker can be killed under them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.stages import prepare, train
from pipeline.tasks.classification.demo_data import write_digits_competition

ray = pytest.importorskip("ray")


def driver(*args, wait: bool = True, timeout: float = 300):
    """`python -m pipeline <args>` in a process of its own (no RAY_ADDRESS from the caller's shell)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "pipeline", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and a second node on this machine, one CPU each: two folds at once means one on each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def started_on(stderr: str) -> dict[int, list[str]]:
    """fold -> the node ids (8 characters) each of its attempts started on, from the driver's event lines."""
    nodes: dict[int, list[str]] = {}
    for k, node in re.findall(r"fold (\d+): started on node \S+ \((\w+)\)", stderr):
        nodes.setdefault(int(k), []).append(node)
    return nodes


def test_ray_writes_what_the_local_executor_writes(competition, make_config):
    """`--on ray` on a Ray instance it starts here (this machine's CPUs): the same seeded folds give the same OOF
    predictions and scores as training them one after another in this process."""
    _, local = make_config(competition, name="local", cv={"folds": 3})
    path, on_ray = make_config(competition, name="onray", cv={"folds": 3})
    prepare.run(local)
    prepare.run(on_ray)
    train.run(local)
    result = driver("train", "--config", path, "--on", "ray")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "started a Ray instance on this machine" in result.stderr
    assert sorted(started_on(result.stderr)) == [0, 1, 2]
    assert re.search(r"fold 2 +\S+ \(\w+\) +- +1 +2 ", result.stderr), result.stderr  # the summary table: 1 attempt, 2 epochs
    for k in range(3):
        a, b = (pd.read_parquet(c.run_dir / f"fold{k}/oof.parquet") for c in (local, on_ray))
        assert list(a["id"]) == list(b["id"])
        numbers = a.select_dtypes("number").columns
        # one torch thread per Ray task, two here: float sums in another order, nothing more
        np.testing.assert_allclose(b[numbers].to_numpy(), a[numbers].to_numpy(), atol=1e-4)
        ma, mb = (pd.read_csv(c.run_dir / f"fold{k}/metrics.csv") for c in (local, on_ray))
        assert list(mb["valid/score"]) == list(ma["valid/score"])
        assert not (on_ray.run_dir / f"fold{k}/train.lock").exists()
    assert not (on_ray.run_dir / ".nodes").exists()  # the probe files are gone
    # predict on Ray: tests/test_distributed.py (predict --gpus 2, each fold a Ray task on this machine)


def test_two_nodes_each_train_folds(two_nodes, competition, make_config):
    path, cfg = make_config(competition, name="spread", cv={"folds": 2}, train={"epochs": 1})
    prepare.run(cfg)
    result = driver("train", "--config", path, "--on", "ray", "--ray-address", two_nodes.address)
    assert result.returncode == 0, result.stderr[-3000:]
    nodes = started_on(result.stderr)
    assert sorted(nodes) == [0, 1] and len({n for tries in nodes.values() for n in tries}) == 2, result.stderr
    assert all((cfg.run_dir / f"fold{k}/oof.parquet").is_file() for k in (0, 1))
    assert "1 node(s)" not in result.stderr and "2 node(s)" in result.stderr  # both probed


def test_a_worker_killed_mid_epoch_is_retried_and_its_fold_resumes(two_nodes, tmp_path, make_config):
    """kill -9 of the process training fold 0, after its first epoch: Ray runs the task again, the fold takes its
    own lock back and resumes from last.pt; metrics.csv has each epoch once and the first epoch was not redone."""
    root = write_digits_competition(tmp_path / "bigger", size=48, n_train=480)
    path, cfg = make_config(root, name="killed", cv={"folds": 2}, train={"epochs": 4, "patience": 0})
    prepare.run(cfg)
    fold = cfg.run_dir / "fold0"
    proc = driver("train", "--config", path, "--fold", "0", "--on", "ray", "--ray-address", two_nodes.address,
                  wait=False)
    deadline = time.time() + 600  # a loaded machine starts Ray's workers slowly
    while not ((fold / "metrics.csv").is_file() and len(pd.read_csv(fold / "metrics.csv")) >= 1):
        assert time.time() < deadline and proc.poll() is None, "fold 0 never finished an epoch"
        time.sleep(0.05)
    before = pd.read_csv(fold / "metrics.csv")
    holder = json.loads((fold / "train.lock").read_text())
    os.kill(holder["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    print(err)  # the driver's lines: shown with -s, and in the closing note
    assert proc.returncode == 0, err[-3000:]
    assert "fold 0: retried (attempt 2)" in err
    resumed = int(re.search(r"fold 0: resumes at epoch (\d)/4", err).group(1))
    assert len(before) + 1 <= resumed <= 4
    after = pd.read_csv(fold / "metrics.csv")
    print(after[["epoch", "step", "train/loss", "valid/score", "seconds"]].to_string(index=False))
    assert list(after["epoch"]) == [0, 1, 2, 3]  # each epoch once
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)  # the epochs before the kill, untouched
    assert f"resuming after epoch {resumed - 1}" in (fold / "train.log").read_text()
    assert len(set(started_on(err)[0])) >= 1 and len(started_on(err)[0]) == 2
    assert not (fold / "train.lock").exists() and (fold / "oof.parquet").is_file()


def can_unshare_mounts() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_unshare_mounts(), reason="needs `unshare -m` (a mount namespace) to give a node a folder "
                    "of its own")
def test_a_node_that_does_not_share_the_run_directory_is_refused(two_nodes, competition, make_config):
    """A third node whose runs/ is a folder of its own (a tmpfs mounted over it in its own mount namespace, as a
    machine without the NFS mount would have): the driver refuses before any work, naming the node and the path."""
    path, cfg = make_config(competition, name="unshared")
    prepare.run(cfg)
    runs = cfg.run_dir.parent
    ray_bin = Path(sys.executable).parent / "ray"
    node = subprocess.Popen(["unshare", "-m", "sh", "-c", f"mount -t tmpfs none {runs} && exec {ray_bin} start "
                             f"--address={two_nodes.address} --num-cpus=1 --block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ray.init(address=two_nodes.address, log_to_driver=False)
        deadline = time.time() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 3:
            assert time.time() < deadline and node.poll() is None, "the third node did not join"
            time.sleep(0.5)
        ray.shutdown()
        result = driver("train", "--config", path, "--on", "ray", "--ray-address", two_nodes.address)
        assert result.returncode == 2, result.stderr[-3000:]
        error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert "does not share the run directory" in error[0] and str(cfg.run_dir) in error[0]
        assert re.search(r"node \d+\.\d+\.\d+\.\d+ \(", error[0])
        assert not (cfg.run_dir / "fold0").exists()  # refused before any work
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
