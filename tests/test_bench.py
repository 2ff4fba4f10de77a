"""The benchmark's parts do real work on the digits competition and turn it into the rates they report: timed
against a fake clock, the rates are exact; real rates are reported, never asserted."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipeline.stages import prepare
from pipeline.workflows import bench


@pytest.fixture
def bench_cfg(competition, make_config):
    _, cfg = make_config(competition, data={"root": str(competition), "cache": True},
                         train={"batch_size": 8}, predict={"batch_size": 8})
    prepare.run(cfg)
    return cfg


class FakeClock:
    """bench's `time`: perf_counter() moves on by `tick` seconds at every reading, and by advance(s) in between."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_each_part_turns_its_work_into_rates_and_peak_memory(bench_cfg, monkeypatch):
    clock = FakeClock(tick=0.0)
    monkeypatch.setattr(bench, "time", clock)
    # (a) and (b) do their real steps; the clock says what each call took: warm-up, chunk 1, chunk 2.
    took = {"bare": [5.0, 1.0, 2.0], "pipeline": [5.0, 2.0, 2.0]}
    samples = {"bare": [], "pipeline": []}

    def timed(name, make):
        def runner(*args):
            run = make(*args)

            def step(n):
                samples[name].append(run(n))
                clock.advance(took[name][len(samples[name]) - 1])
                return samples[name][-1]
            step.close = getattr(run, "close", None)  # (b) ends its epoch's thread
            return step
        return runner

    monkeypatch.setattr(bench, "bare_runner", timed("bare", bench.bare_runner))
    monkeypatch.setattr(bench, "pipeline_runner", timed("pipeline", bench.pipeline_runner))
    training = bench.training(bench_cfg, 2, 1, chunk=1)
    assert samples == {"bare": [8, 8, 8], "pipeline": [8, 8, 8]}  # one batch of 8 per call (a chunk of one step)
    # rates 8/1, 8/2 (bare) and 8/2, 8/2 (pipeline): medians 6 and 4; the ratio is the median of the chunk
    # pairs' ratios (0.5, 1), not the ratio of the medians (0.67)
    assert {k: training[k] for k in ("bare", "pipeline", "ratio")} == {"bare": 6.0, "pipeline": 4.0, "ratio": 0.75}
    assert training["peak MB"] > 0

    clock.tick = 1.0  # each timed part below reads the clock twice: one second
    loader = bench.loader_only(bench_cfg, 3, 1)
    assert loader["samples/s"] == 3 * 8 and loader["peak MB"] > 0  # three timed batches of 8 (after the warm-up)
    d4 = bench.predict_views(bench_cfg, 2, "d4")
    assert (d4["samples/s"], d4["views"], d4["view images/s"]) == (2 * 8, 8, 2 * 8 * 8)  # two batches of 8, 8 views


def test_the_pipeline_runner_steps_one_epoch_on_through_the_gate_and_raises_its_errors(bench_cfg, monkeypatch):
    """(b) is one train_epoch in a thread: each call trains exactly its steps, on past the epoch's end, and an error
    in the loop (here a NaN loss) is raised in the caller, not lost in the thread."""
    from pipeline.engine.loop import Diverged
    from pipeline.tasks.classification.task import ClassificationTask

    task, model, device, dtype, train_rows, _ = bench._setup(bench_cfg)
    steps_per_epoch = len(train_rows) // 8
    run = bench.pipeline_runner(bench_cfg, task, model, device, dtype, train_rows)
    assert [run(1), run(3), run(steps_per_epoch)] == [8, 3 * 8, steps_per_epoch * 8]
    monkeypatch.setattr(ClassificationTask, "loss", lambda self, model, batch, mix=True: model(batch[0]).sum() * float("nan"))
    with pytest.raises(Diverged, match="NaN|nan"):
        for _ in range(20):  # the loss is checked at the log points
            run(5)


def test_ensembling_part_runs_the_stage_on_float16_members(bench_cfg, tmp_path):
    cfg = dataclasses.replace(bench_cfg, predict=dataclasses.replace(bench_cfg.predict, dtype="float16"))
    names = bench.write_members(cfg, tmp_path / "members", 3, 2000, 10)  # the members ensembling writes (seeded)
    oofs = [pd.read_parquet(tmp_path / "members" / n / "oof.parquet") for n in names]
    classes = [c for c in oofs[0].columns if c.startswith("class_")]
    assert len(classes) == 10 and all((oof[classes].dtypes == np.float16).all() for oof in oofs)
    truth = oofs[0]["target"].to_numpy()

    def accuracy(probs):
        return float((np.array(classes)[probs.argmax(axis=1)] == truth).mean())

    members = [accuracy(oof[classes].to_numpy(np.float64)) for oof in oofs]
    mean = accuracy(sum(oof[classes].to_numpy(np.float64) for oof in oofs))
    assert 0.2 < members[0] < members[-1]  # members lean toward the truth, the last one most

    weighted = bench.ensembling(cfg, 3, 2000, 10, "weighted")
    assert weighted["seconds"] > 0 and weighted["peak MB"] > 0
    assert 0.5 < weighted["cv"] <= 1.0 and weighted["cv"] >= max(members) - 1e-9  # the climb starts from the best
    assert bench.ensembling(cfg, 3, 2000, 10, "mean")["cv"] == pytest.approx(mean, abs=1 / 2000)  # one row at most


@pytest.mark.slow
def test_bench_command_prints_the_table(bench_cfg, capsys):
    rows = bench.run(bench_cfg, [8, 16], steps=3, warmup=1, ensemble=(3, 2000, 10))
    out = capsys.readouterr().out
    assert "(a) bare loop" in out and "(b) pipeline train loop" in out and len(rows) == 2 * 2 + 2 + 3 + 2
    assert all(np.isfinite(float(r[2].split()[0].replace(",", ""))) for r in rows)
