"""Training through the stage functions on the digits competition: files, resume, no retraining."""

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import load_config
from pipeline.engine import loop
from pipeline.engine.state import Progress
from pipeline.runs import checkpoint
from pipeline.stages import prepare, train
from tests.conftest import interrupt_at_epoch


def fold_files(cfg, k=0):
    return sorted(p.name for p in (cfg.run_dir / f"fold{k}").iterdir())


def test_train_one_fold_writes_the_run_directory(competition, make_config):
    _, cfg = make_config(competition)
    prepare.run(cfg)
    train.run(cfg, fold=0)
    run = cfg.run_dir
    assert {"config.yaml", "meta.json", "folds.csv", "folds.json", "fold0"} <= {p.name for p in run.iterdir()}
    assert fold_files(cfg) == ["best.pt", "last.pt", "metrics.csv", "oof.parquet", "top", "train.log"]
    assert sorted(p.name for p in (run / "fold0/top").iterdir()) == ["epoch000.pt", "epoch001.pt"]  # keep_top=3
    assert "fold 0 OOF accuracy" in (run / "fold0/train.log").read_text()
    metrics = pd.read_csv(run / "fold0/metrics.csv")
    assert list(metrics["epoch"]) == [0, 1]
    assert {"train/loss", "valid/loss", "valid/score", "valid_ema/score", "lr", "samples/s", "seconds"} <= set(metrics.columns)
    oof = pd.read_parquet(run / "fold0/oof.parquet")
    folds = pd.read_csv(run / "folds.csv")
    assert sorted(oof["id"]) == sorted(folds.loc[folds["fold"] == 0, "id"])
    probs = oof[[f"digit_{d}" for d in range(10)]].to_numpy()
    assert probs.shape[1] == 10 and probs.sum(axis=1) == pytest.approx(1.0, abs=1e-4)
    state = checkpoint.load(run / "fold0/last.pt")
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "progress", "wandb_id", "rng"} <= set(state)
    assert state["progress"]["done"] and state["progress"]["epoch"] == 1


def test_interrupted_fold_resumes_from_last_and_finished_fold_is_not_retrained(competition, make_config, monkeypatch):
    _, cfg = make_config(competition, train={"epochs": 3})
    prepare.run(cfg)
    real_epoch = interrupt_at_epoch(monkeypatch, 1)  # die at the start of the second epoch
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, fold=0)
    first = pd.read_csv(cfg.run_dir / "fold0/metrics.csv")
    assert list(first["epoch"]) == [0] and "oof.parquet" not in fold_files(cfg)
    assert checkpoint.load(cfg.run_dir / "fold0/last.pt")["progress"]["epoch"] == 0

    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    started = []
    monkeypatch.setattr(loop, "train_epoch", lambda *a, **k: started.append(a[4]) or real_epoch(*a, **k))
    train.run(cfg, fold=0)
    assert started == [1, 2]  # continued after epoch 0, did not start over
    metrics = pd.read_csv(cfg.run_dir / "fold0/metrics.csv")
    assert list(metrics["epoch"]) == [0, 1, 2]
    assert metrics.iloc[0].equals(first.iloc[0])  # the first epoch's record survived the crash
    assert "oof.parquet" in fold_files(cfg)

    last = cfg.run_dir / "fold0/last.pt"
    stamp = last.stat().st_mtime_ns
    started.clear()
    train.run(cfg, fold=0)
    assert started == [] and last.stat().st_mtime_ns == stamp  # finished: nothing retrained or rewritten
    train.run(cfg, fold=0, force=True)
    assert started == [0, 1, 2]


def test_best_checkpoint_tracks_the_best_epoch(competition, make_config):
    _, cfg = make_config(competition, train={"epochs": 3, "ema": False})
    prepare.run(cfg)
    train.run(cfg, fold=1)
    metrics = pd.read_csv(cfg.run_dir / "fold1/metrics.csv")
    best = checkpoint.load(cfg.run_dir / "fold1/best.pt")["progress"]
    assert best["best_epoch"] == int(metrics["valid/score"].idxmax())
    assert best["best_score"] == pytest.approx(metrics["valid/score"].max())


def test_accumulation_steps_the_optimizer_once_per_group(competition, make_config):
    _, cfg = make_config(competition, train={"epochs": 1, "accum_steps": 2, "batch_size": 10})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    state = checkpoint.load(cfg.run_dir / "fold0/last.pt")
    batches = 100 // 10  # 150 rows, 3 folds: 100 training rows
    assert state["progress"]["step"] == batches // 2
    assert state["scheduler"]["last_epoch"] == batches // 2


def test_cpu_defaults_to_fp32():
    assert loop.resolve_precision("auto", torch.device("cpu")) == torch.float32
    assert loop.resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16


def test_mixup_cutmix_and_fp32_without_channels_last_train(competition, make_config, monkeypatch):
    from pipeline.tasks.classification.task import ClassificationTask

    mixed = []  # per training batch: (its images changed by the mixing, the targets the loss got)
    real_mix = ClassificationTask.mix

    def spy(self, x, y, mixup):
        before = x.clone()  # timm mixes in place
        x, y = real_mix(self, x, y, mixup)
        mixed.append((not torch.equal(x, before), y.detach().clone()))
        return x, y

    monkeypatch.setattr(ClassificationTask, "mix", spy)
    _, cfg = make_config(competition, train={"epochs": 1, "channels_last": False},
                         augment={"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "vflip": 0.5, "rotate90": 0.5})
    prepare.run(cfg)
    train.run(cfg, fold=2)
    metrics = pd.read_csv(cfg.run_dir / "fold2/metrics.csv")
    assert list(metrics["epoch"]) == [0] and metrics["train/loss"].notna().all()
    assert (cfg.run_dir / "fold2/oof.parquet").is_file()
    assert len(mixed) == 100 // 16 and all(changed for changed, _ in mixed)  # every batch (mix_prob 1), train only
    targets = torch.cat([y for _, y in mixed])
    assert targets.shape == (96, 10) and torch.allclose(targets.sum(1), torch.ones(96))
    smooth = 0.1 / 10  # label smoothing's share of every class
    assert (targets.topk(2, dim=1).values[:, 1] > smooth + 0.05).float().mean() > 0.5  # two digits in most targets


def mixing_task(**augment):
    """A 10-class image task with only the given batch mixing, no label smoothing (targets read as shares)."""
    from pipeline.tasks.classification.task import ClassificationTask

    sets = [f"augment.{k}={v}" for k, v in augment.items()]
    return ClassificationTask(load_config(None, ["train.label_smoothing=0", *sets]), [str(d) for d in range(10)])


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixup_blends_whole_images_and_cutmix_pastes_a_box_each_as_its_targets_say(kind):
    """Sample i is mixed with sample B-1-i; its target keeps share lam of its own class. Mixup: every pixel is
    lam x its own + (1 - lam) x the partner's. Cutmix: a box of the partner's pixels covering 1 - lam of the image."""
    np.random.seed(0)  # timm draws lam and the box from numpy's global RNG
    task = mixing_task(**{f"{kind}_alpha": 0.4 if kind == "mixup" else 1.0})
    x = torch.rand(8, 3, 16, 16)
    before, y = x.clone(), torch.arange(8)  # pairs (0, 7), (1, 6) ...: two different classes each
    out, soft = task.mix(x, y, task.mixup)
    lam = float(soft[0, 0])
    assert 0 < lam < 1 and torch.allclose(soft[torch.arange(8), y], torch.full((8,), lam))
    assert torch.allclose(soft[torch.arange(8), y.flip(0)], torch.full((8,), 1 - lam))
    partner = before.flip(0)
    if kind == "mixup":
        torch.testing.assert_close(out, lam * before + (1 - lam) * partner, atol=1e-6, rtol=0)
    else:
        pasted = (out == partner) & (out != before)
        assert torch.all((out == before) | (out == partner))  # nothing blended, only pasted
        assert pasted.float().mean().item() == pytest.approx(1 - lam, abs=0.01)
        rows, cols = pasted[0, 0].any(1).nonzero(), pasted[0, 0].any(0).nonzero()  # one box: its bounding box is full
        assert pasted[0, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_resume_warns_when_the_config_changed(competition, make_config, monkeypatch, caplog):
    _, cfg = make_config(competition, train={"epochs": 2})
    prepare.run(cfg)
    real_epoch = interrupt_at_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, fold=0)
    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    cfg.train.base_lr = 1e-2
    train.run(cfg, fold=0)
    assert "resuming with train.base_lr=0.01 (was 0.004" in caplog.text


def test_progress_picks_the_better_weights_and_stops_after_patience():
    from pipeline.scoring.metrics import CLASS_METRICS as METRICS

    p = Progress()
    acc, loss = METRICS["accuracy"], METRICS["logloss"]
    assert p.record(0, {"model": {"score": 0.5}, "ema": {"score": 0.6}}, acc, epochs=10, patience=2) == (True, False)
    assert (p.best_source, p.best_score) == ("ema", 0.6)
    assert p.record(1, {"model": {"score": 0.55}}, acc, 10, 2) == (False, False)
    assert p.record(2, {"model": {"score": 0.6}}, acc, 10, 2) == (False, True)  # a tie is not an improvement
    assert p.done and p.best_epoch == 0
    q = Progress()
    q.record(0, {"model": {"score": 0.9}, "ema": {"score": 0.7}}, loss, epochs=1, patience=0)
    assert (q.best_source, q.done) == ("ema", True)  # lower log-loss is better


def test_top_epochs_keeps_only_the_best_n(tmp_path):
    import timm

    from pipeline.engine.averaging import TopEpochs

    model = timm.create_model("test_resnet", num_classes=3)
    top = TopEpochs(tmp_path, n=2, greater_is_better=True)
    for epoch, score in enumerate([0.5, 0.7, 0.6, 0.4, 0.9]):
        top.offer(epoch, score, model, None)
    assert [(s, p.name) for s, p in top.kept()] == [(0.9, "epoch004.pt"), (0.7, "epoch001.pt")]


@pytest.mark.slow
def test_compiled_training_writes_plain_checkpoints(competition, make_config):
    _, cfg = make_config(competition, train={"epochs": 1, "compile": True})
    prepare.run(cfg)
    train.run(cfg, fold=0)
    state = checkpoint.load(cfg.run_dir / "fold0/best.pt")
    assert not any(k.startswith("_orig_mod") for k in state["model"])  # loadable without torch.compile


def test_auto_batch_size_falls_back_to_the_default_on_cpu(competition, make_config, caplog):
    _, cfg = make_config(competition, train={"epochs": 1, "batch_size": "auto"}, augment={"mixup_alpha": 0.2})
    prepare.run(cfg)
    with caplog.at_level("INFO", logger="pipeline"):
        train.run(cfg, fold=0)
    assert checkpoint.load(cfg.run_dir / "fold0/best.pt")["config"]["train"]["batch_size"] == 32
    assert "train.batch_size=auto: no GPU memory to measure on cpu; batch size 32" in caplog.text
    assert "effective batch 32" in caplog.text
