import time

import pandas as pd

from pipeline import checkpoint, tracking
from pipeline.stages import prepare, train


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


def test_null_tracker_accepts_everything():
    t = tracking.NullTracker()
    t.log({"a": 1}, step=3)
    t.summary({"b": 2})
    t.finish()
    assert t.run_id is None


def test_offline_wandb_run_per_fold_resumes_its_id(competition, make_config, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _, cfg = make_config(competition, train={"epochs": 1}, tracking={"wandb": "offline", "quiet": True})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    runs = list((cfg.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    run_id = checkpoint.load(cfg.run_dir / "fold0/last.pt")["wandb_id"]
    assert runs[0].name.endswith(run_id)
    assert len(pd.read_csv(cfg.run_dir / "fold0/metrics.csv")) == 1


def test_auto_does_not_wait_for_a_name_lookup_that_hangs(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking.socket, "create_connection", lambda *a, **k: time.sleep(60))  # DNS that never answers
    started = time.perf_counter()
    assert tracking.resolve_mode("auto") == "offline"
    assert time.perf_counter() - started < tracking.PROBE_SECONDS + 1


def test_a_wandb_failure_mid_run_is_logged_and_tracking_stops(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from pipeline.config import Config

    cfg = Config(name="broken", runs_dir=str(tmp_path))
    cfg.tracking.wandb = "offline"
    tracker = tracking.build_tracker(cfg, "fold0", "train")
    assert isinstance(tracker, tracking.WandbTracker)
    tracker.run.finish()  # the run is gone: W&B raises on the next call
    tracker.log({"loss": 1.0}, step=1)
    tracker.summary({"score": 0.5})
    tracker.finish()
    assert "W&B call failed" in caplog.text and tracker.run is None
