"""`pipeline report` and `pipeline runs` on a real tiny experiment; every command's --help has an example."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.stages import predict, prepare, submit, train


@pytest.fixture
def experiment(competition, make_config):
    """Two 2-fold, 1-epoch experiments, predicted and submitted, with a public LB for the first."""
    cfgs = []
    for name, model in (("small", "test_resnet"), ("other", "test_efficientnet")):
        _, cfg = make_config(competition, name=name, model={"name": model}, train={"epochs": 2}, cv={"folds": 2})
        prepare.run(cfg)
        train.run(cfg)
        predict.run(cfg)
        submit.run(cfg.name, runs_dir=cfg.runs_dir, message=f"{name} run")
        cfgs.append(cfg)
    submit.run("small", runs_dir=cfgs[0].runs_dir, lb=0.5)
    return cfgs


def test_report_page_and_runs_table(experiment):
    pytest.importorskip("pymupdf")
    cfg = experiment[0]
    result = CliRunner().invoke(app, ["report", "small", "--runs-dir", cfg.runs_dir, "--screenshot"])
    assert result.exit_code == 0, result.output
    page = (cfg.run_dir / "report.html").read_text()
    for title in ("Summary", "Learning curves", "Out-of-fold predictions", "Highest-loss OOF images", "CV vs public LB"):
        assert f"<h2>{title}</h2>" in page
    assert page.count("data:image/png;base64,") == 4 and "src='report/" not in page  # embedded, no loose links
    assert {p.name for p in (cfg.run_dir / "report").iterdir()} == {
        "learning_curves.png", "confusion.png", "highest_loss.png", "cv_vs_lb.png"}
    assert "digit_" in page and "small run" in page  # per-class table and the submissions log
    png = (cfg.run_dir / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 1000 and height > 2 * width  # the whole page, cropped to its content

    # The same two experiments through `pipeline runs` (one fixture: training them is the slow part).
    runner = CliRunner()
    result = runner.invoke(app, ["runs", "--runs-dir", cfg.runs_dir, "--submissions-dir", cfg.submissions_dir, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    scores = {name: json.loads((cfg.run_dir.parent / name / "scores.json").read_text())["cv"] for name in ("small", "other")}
    assert [r["exp"] for r in rows] == sorted(scores, key=lambda n: -scores[n])
    small = next(r for r in rows if r["exp"] == "small")
    assert small["model"] == "test_resnet" and small["size"] == 32 and small["folds"] == "2/2"
    assert small["public_lb"] == 0.5 and small["submission"].endswith("small.csv") and small["tta"] == "auto"
    assert small["cv"] == pytest.approx(scores["small"])
    text = runner.invoke(app, ["runs", "--runs-dir", cfg.runs_dir, "--submissions-dir", cfg.submissions_dir]).output
    header, first, second = text.splitlines()[:3]
    assert "cv ± std" in header and "public LB" in header and "0.5000" in (first + second)


def test_runs_on_an_empty_folder_says_what_to_do(tmp_path):
    result = CliRunner().invoke(app, ["runs", "--runs-dir", str(tmp_path / "none")])
    assert result.exit_code == 0 and "no experiments yet" in result.output


@pytest.mark.parametrize("command", sorted(c.name or c.callback.__name__ for c in app.registered_commands))
def test_every_command_help_has_an_example(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output
