"""How far a loop over steps or batches is: tqdm's bar on a terminal, else a log line every
tracking.progress_seconds and every 10% of the loop, so a run written to a file (nohup, a scheduled notebook) says
where it stands between its epoch lines. The loops call update / set_postfix / close on whichever one is built.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

from pipeline.core import distributed
from pipeline.core.config import TrackingConfig

log = logging.getLogger(__name__)
TENTH = 0.1  # share of the loop after which a line is written, however short the interval


class NullProgress:
    """Shows nothing: tracking.quiet, tracking.progress_seconds=0 without a terminal, or a loop with no label."""

    def update(self, n: int = 1, samples: int = 0, loss: Callable[[], float] | None = None) -> None:
        """n more steps (or batches) done, over `samples` more samples; loss: a callable giving the running mean
        so far, called (a tensor read: a device sync) only when a line is written, so a step computes nothing."""

    def set_postfix(self, **values) -> None:
        """Values beside the terminal's bar (the log lines carry their own)."""

    def close(self) -> None:
        """The loop is over."""


class BarProgress(NullProgress):
    """tqdm's bar on the terminal, as it always was."""

    def __init__(self, total: int, desc: str, unit: str):
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, samples: int = 0, loss: Callable[[], float] | None = None) -> None:
        self.bar.update(n)

    def set_postfix(self, **values) -> None:
        self.bar.set_postfix(**values)

    def close(self) -> None:
        self.bar.close()


class LogProgress(NullProgress):
    """A log line every `every_seconds` and after each further tenth of the loop (when a tenth of the interval has
    passed since the last line):
    `epoch 1/3 step 120/840 (14%)  loss 2.3412  61.3 samples/s  ETA 3m12s`. None at the loop's end: the caller's
    own line (the epoch's, the fold's) says that."""

    def __init__(self, total: int, desc: str, unit: str = "step", every_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.every_seconds, self.clock = total, desc, unit, every_seconds, clock
        self.n = self.samples = self.n_shown = 0
        self.started = self.shown = clock()

    def update(self, n: int = 1, samples: int = 0, loss: Callable[[], float] | None = None) -> None:
        self.n += n
        self.samples += samples
        now = self.clock()
        # a tenth of the loop also makes a line, unless the last line is under a tenth of the interval old: a
        # 20-second validation pass should not write ten
        tenth = self.n - self.n_shown >= TENTH * self.total and now - self.shown >= TENTH * self.every_seconds
        if 0 < self.n < self.total and (now - self.shown >= self.every_seconds or tenth):
            self.show(now, loss)

    def show(self, now: float, loss: Callable[[], float] | None) -> None:
        seconds = max(now - self.started, 1e-9)
        rate = f"{self.samples / seconds:.1f} samples/s" if self.samples else f"{self.n / seconds:.2f} {self.unit}s/s"
        log.info("%s %s %d/%d (%d%%)%s  %s  ETA %s", self.desc, self.unit, self.n, self.total,
                 100 * self.n // self.total, "" if loss is None else f"  loss {float(loss()):.4f}", rate,
                 duration((self.total - self.n) * seconds / self.n))
        self.shown, self.n_shown = now, self.n


def duration(seconds: float) -> str:
    """45s, 3m12s, 2h05m."""
    s = round(seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def build_progress(total: int, desc: str | None, unit: str = "step", every_seconds: float = 30.0, quiet: bool = False,
                   clock: Callable[[], float] = time.monotonic) -> NullProgress:
    """The bar where stderr (tqdm's stream) is a terminal, else log lines (the main process's alone, every
    `every_seconds`, 0: none); nothing when quiet or without a label."""
    if desc is None or quiet:
        return NullProgress()
    if sys.stderr.isatty():
        return BarProgress(total, desc, unit)
    if every_seconds <= 0 or not distributed.world().main:
        return NullProgress()
    return LogProgress(total, desc, unit, every_seconds, clock)


@dataclass(frozen=True)
class ProgressSpec:
    """A loop's label and how its progress shows, for code that starts the loop without the config."""

    desc: str | None = None  # None: nothing shown
    every_seconds: float = 30.0  # tracking.progress_seconds
    quiet: bool = False  # tracking.quiet

    @classmethod
    def of(cls, desc: str | None, tracking: TrackingConfig) -> ProgressSpec:
        return cls(desc, tracking.progress_seconds, tracking.quiet)

    def start(self, total: int, unit: str = "step") -> NullProgress:
        return build_progress(total, self.desc, unit, self.every_seconds, self.quiet)


SILENT = ProgressSpec()
