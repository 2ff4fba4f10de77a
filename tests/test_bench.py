"""The benchmark's parts measure real work on the digits competition (rates are reported, never asserted)."""

import numpy as np
import pytest

from pipeline import bench
from pipeline.stages import prepare


@pytest.fixture
def bench_cfg(competition, make_config):
    _, cfg = make_config(competition, data={"root": str(competition), "cache": True},
                         train={"batch_size": 8}, predict={"batch_size": 8})
    prepare.run(cfg)
    return cfg


def test_each_part_reports_a_rate_and_peak_memory(bench_cfg):
    training = bench.training(bench_cfg, 2, 1, chunks=2)
    assert training["bare"] > 0 and training["pipeline"] > 0 and training["ratio"] > 0 and training["peak MB"] > 0
    loader = bench.loader_only(bench_cfg, 3, 1)
    assert loader["samples/s"] > 0 and loader["peak MB"] > 0
    d4 = bench.predict_views(bench_cfg, 2, "d4")
    assert d4["views"] == 8 and d4["view images/s"] == pytest.approx(8 * d4["samples/s"])


def test_ensembling_part_runs_the_stage_on_float16_members(bench_cfg):
    result = bench.ensembling(bench_cfg, 3, 2000, 10, "weighted")
    assert result["seconds"] > 0 and 0.5 < result["cv"] <= 1.0  # members lean toward the truth


@pytest.mark.slow
def test_bench_command_prints_the_table(bench_cfg, capsys):
    rows = bench.run(bench_cfg, [8, 16], steps=3, warmup=1, ensemble=(3, 2000, 10))
    out = capsys.readouterr().out
    assert "(a) bare loop" in out and "(b) pipeline train loop" in out and len(rows) == 2 * 2 + 2 + 3 + 2
    assert all(np.isfinite(float(r[2].split()[0].replace(",", ""))) for r in rows)
