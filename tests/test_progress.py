"""Progress without a terminal: log lines at an interval and every 10% of a loop (pipeline.engine.progress), and
a real training run that writes them between its epoch lines."""

import io
import logging
import re
import sys

import torch

from pipeline.engine.progress import BarProgress, LogProgress, NullProgress, build_progress, duration
from pipeline.stages import prepare, train


class Clock:
    """time.monotonic that moves only when told."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pipeline.engine.progress"]


def test_a_line_every_tenth_of_the_loop_with_step_rate_loss_and_eta(caplog):
    clock = Clock()
    bar = LogProgress(100, "epoch 1/3", "step", every_seconds=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline.engine.progress"):
        for _ in range(100):
            clock.now += 1.0  # 1 s a step of 16 samples: never 30 s between lines, a tenth every 10 steps
            bar.update(1, 16, loss=lambda: torch.tensor(2.5))
        bar.close()
    shown = lines(caplog)
    assert [int(re.search(r"step (\d+)/100", s)[1]) for s in shown] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert shown[0] == "epoch 1/3 step 10/100 (10%)  loss 2.5000  16.0 samples/s  ETA 1m30s"  # 90 steps at 1 s
    assert shown[-1].endswith("ETA 10s")  # none at the end: the epoch's own line says it


def test_a_line_every_interval_between_the_tenths(caplog):
    clock = Clock()
    bar = LogProgress(1000, "fold 0 test x 2 views", "batch", every_seconds=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline.engine.progress"):
        for step in range(1, 150):
            clock.now += 10.0 if step in (3, 6, 9) else 0.05  # 30 s pass by batch 9, a tenth only at batch 100
            bar.update(1, 8)
    shown = lines(caplog)
    assert [int(re.search(r"batch (\d+)/1000", s)[1]) for s in shown] == [9, 109]  # then a tenth after the line
    assert "loss" not in shown[0] and "samples/s" in shown[0] and "ETA" in shown[0]


def test_a_short_loop_writes_no_line_per_tenth(caplog):
    """Tenths closer together than a tenth of the interval (a 2-second validation pass) write nothing."""
    clock = Clock()
    bar = LogProgress(100, "epoch 1/2 valid model", "batch", every_seconds=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline.engine.progress"):
        for _ in range(99):
            clock.now += 0.02
            bar.update(1, 8)
    assert lines(caplog) == []


def test_quiet_no_label_or_no_interval_show_nothing_and_a_terminal_gets_the_bar(monkeypatch):
    tty = io.StringIO()
    tty.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a file: log lines
    assert type(build_progress(10, "epoch 1/2", every_seconds=30)) is LogProgress
    assert type(build_progress(10, "epoch 1/2", every_seconds=0)) is NullProgress
    assert type(build_progress(10, "epoch 1/2", quiet=True)) is NullProgress
    assert type(build_progress(10, None)) is NullProgress
    monkeypatch.setattr(sys, "stderr", tty)  # the terminal: the bar, as before
    bar = build_progress(10, "epoch 1/2", every_seconds=0)
    assert type(bar) is BarProgress
    bar.update(3, 48)
    bar.close()
    assert "epoch 1/2:" in tty.getvalue() and "/10 [" in tty.getvalue()  # tqdm's own drawing
    assert type(build_progress(10, "epoch 1/2", quiet=True)) is NullProgress


def test_durations():
    assert [duration(s) for s in (0.4, 45, 192, 7500)] == ["0s", "45s", "3m12s", "2h05m"]


def test_training_without_a_terminal_logs_progress_between_epoch_lines(competition, make_config, caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # output to a file, as under nohup
    _, cfg = make_config(competition, train={"epochs": 2, "batch_size": 8},  # 100 training rows: 12 steps an epoch
                         predict={"batch_size": 8}, tracking={"quiet": False, "progress_seconds": 0.01})
    prepare.run(cfg)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        train.run(cfg, fold=0)
    messages = [r.getMessage() for r in caplog.records]
    ends = [i for i, m in enumerate(messages) if re.match(r"epoch \d/2  train loss", m)]
    assert len(ends) == 2
    for epoch, (start, end) in enumerate(zip([0, ends[0]], ends, strict=True), 1):
        steps = [m for m in messages[start:end] if re.match(rf"epoch {epoch}/2 step \d+/12 ", m)]
        assert len(steps) >= 2, messages[start:end]  # at least every tenth of the 12 steps, less the last
        assert all(re.search(r"\(\d+%\)  loss \d+\.\d{4}  \d+\.\d samples/s  ETA \d+", m) for m in steps), steps
        assert any(m.startswith(f"epoch {epoch}/2 valid model batch ") for m in messages[start:end])
