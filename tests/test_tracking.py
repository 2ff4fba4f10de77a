import inspect
import re
import threading
import time

import pandas as pd
import pytest

from pipeline.engine import loop
from pipeline.runs import checkpoint, tracking
from pipeline.stages import prepare, train
from tests.conftest import interrupt_at_epoch


def test_auto_is_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert tracking.resolve_mode("auto") == "offline"


def test_auto_with_a_key_but_no_server_goes_offline_quickly(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "https://127.0.0.1:9")  # nothing listens on the discard port
    started = time.perf_counter()
    assert tracking.resolve_mode("auto") == "offline"
    assert time.perf_counter() - started < tracking.PROBE_SECONDS + 1


def test_the_probe_asks_the_server_this_wandb_uses(monkeypatch):
    """wandb moved its default server from api.wandb.ai: the probe follows the installed wandb (or the user's
    WANDB_BASE_URL), not a host written down here."""
    from urllib.parse import urlparse

    from wandb.sdk.lib.urls import DEFAULT_BASE_URL

    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert tracking.server_host() == urlparse(DEFAULT_BASE_URL).hostname
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org:8443")
    assert tracking.server_host() == "wandb.example.org"


def public_methods(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(f) for name, f in vars(cls).items() if callable(f) and not name.startswith("_")}


def test_null_tracker_stands_in_for_wandb_everywhere():
    """Every call the pipeline makes on a W&B tracker works on the null tracker too: same methods, same signatures."""
    null, wandb = public_methods(tracking.NullTracker), public_methods(tracking.WandbTracker)
    assert set(wandb) == {"log", "summary", "media", "artifact", "finish"}  # the scan found them
    assert null == wandb
    assert tracking.NullTracker().run_id is None  # a fold trained without W&B stores no run id to resume


def test_disabled_tracking_is_the_null_tracker_and_leaves_no_trace(tmp_path):
    """tracking.wandb=disabled: no W&B run is started, and the calls a fold, predict and tune make write nothing."""
    import wandb

    from pipeline.core.config import Config

    cfg = Config(name="quiet", runs_dir=str(tmp_path))
    cfg.tracking.wandb = "disabled"
    tracker = tracking.build_tracker(cfg, "fold0", "train")
    assert type(tracker) is tracking.NullTracker and tracker.run_id is None
    tracker.summary({"lr": 1e-3})
    tracker.log({"train/loss": 0.5}, step=3)
    tracker.media({"curves": tmp_path / "curves.png"}, {"trials": pd.DataFrame({"score": [0.5]})})
    tracker.finish()
    assert list(tmp_path.iterdir()) == [] and wandb.run is None  # no runs/quiet/wandb, no live run


def offline_run_id(folder) -> str:
    """The run id in an offline run folder's name: offline-run-<date>_<time>-<id>, then -1, -2... when W&B
    started another folder of that id in the same second."""
    match = re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", folder.name)
    assert match, folder.name
    return match.group(1)


def test_offline_wandb_run_of_an_interrupted_fold_is_resumed(competition, make_config, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _, cfg = make_config(competition, train={"epochs": 2}, tracking={"wandb": "offline", "quiet": True})
    prepare.run(cfg)
    real_epoch = interrupt_at_epoch(monkeypatch, 1)  # die at the start of the second epoch
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, fold=0)
    first = list((cfg.run_dir / "wandb").glob("offline-run-*"))
    state = checkpoint.load(cfg.run_dir / "fold0/last.pt")
    run_id = state["wandb_id"]
    assert len(first) == 1 and list(first[0].glob("*.wandb")) and offline_run_id(first[0]) == run_id
    assert not state["progress"]["done"] and len(pd.read_csv(cfg.run_dir / "fold0/metrics.csv")) == 1

    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    train.run(cfg, fold=0)  # the same command again: the fold and its W&B run continue
    state = checkpoint.load(cfg.run_dir / "fold0/last.pt")
    assert state["progress"]["done"] and state["wandb_id"] == run_id
    runs = list((cfg.run_dir / "wandb").glob("offline-run-*"))
    (second,) = set(runs) - set(first)  # W&B records the resumed part of an offline run in a folder of its own
    assert offline_run_id(second) == run_id and list(second.glob("*.wandb"))  # under the same run id
    assert len(pd.read_csv(cfg.run_dir / "fold0/metrics.csv")) == 2


def test_auto_does_not_wait_for_a_name_lookup_that_hangs(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    answered = threading.Event()

    def hanging_lookup(*args, **kwargs):  # DNS that does not answer until the test is over, then fails
        answered.wait(60)
        raise OSError("name lookup timed out")

    monkeypatch.setattr(tracking.socket, "create_connection", hanging_lookup)
    before = set(threading.enumerate())
    started = time.perf_counter()
    try:
        assert tracking.resolve_mode("auto") == "offline"
        assert time.perf_counter() - started < tracking.PROBE_SECONDS + 1
    finally:
        answered.set()
        for probe in set(threading.enumerate()) - before:  # the abandoned probe ends quietly, not in a later test
            probe.join(5)
            assert not probe.is_alive()


def test_a_wandb_failure_mid_run_is_logged_and_tracking_stops(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from pipeline.core.config import Config

    cfg = Config(name="broken", runs_dir=str(tmp_path))
    cfg.tracking.wandb = "offline"
    tracker = tracking.build_tracker(cfg, "fold0", "train")
    assert isinstance(tracker, tracking.WandbTracker)
    tracker.run.finish()  # the run is gone: W&B raises on the next call
    tracker.log({"loss": 1.0}, step=1)
    tracker.summary({"score": 0.5})
    tracker.finish()
    assert "W&B call failed" in caplog.text and tracker.run is None
