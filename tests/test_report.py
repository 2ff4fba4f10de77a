"""`pipeline report` and `pipeline runs` on a real tiny experiment; every command's --help has an example."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import app
from pipeline.stages import predict, submit
from tests.conftest import cli, copy_run_to


@pytest.fixture(scope="module")
def experiment(trained_run, tmp_path_factory):
    """Two copies of the session's trained run (2 folds x 2 epochs), `small` as predicted there (tta auto) and
    `other` predicted again without TTA, both submitted, with a public LB for the first."""
    folder = tmp_path_factory.mktemp("report")
    cfgs = [copy_run_to(trained_run, folder, "small"), copy_run_to(trained_run, folder, "other")]
    predict.run(cfgs[1], tta="none")
    for cfg in cfgs:
        submit.run(cfg.name, runs_dir=cfg.runs_dir, message=f"{cfg.name} run")
    submit.run("small", runs_dir=cfgs[0].runs_dir, lb=0.5)
    return cfgs


def test_report_page_and_runs_table(experiment):
    """The page and `pipeline runs`: nothing here needs PyMuPDF (only --screenshot does, below)."""
    cfg = experiment[0]
    cli("report", "small", "--runs-dir", cfg.runs_dir)
    page = (cfg.run_dir / "report.html").read_text()
    for title in ("Summary", "Learning curves", "Out-of-fold predictions", "Highest-loss OOF images", "CV vs public LB"):
        assert f"<h2>{title}</h2>" in page
    assert page.count("data:image/png;base64,") == 4 and "src='report/" not in page  # embedded, no loose links
    assert {p.name for p in (cfg.run_dir / "report").iterdir()} == {
        "learning_curves.png", "confusion.png", "highest_loss.png", "cv_vs_lb.png"}
    assert "digit_" in page and "small run" in page  # per-class table and the submissions log

    # The same two experiments through `pipeline runs`.
    rows = json.loads(cli("runs", "--runs-dir", cfg.runs_dir, "--submissions-dir", cfg.submissions_dir, "--json").output)
    scores = {name: json.loads((cfg.run_dir.parent / name / "scores.json").read_text())["cv"] for name in ("small", "other")}
    assert [r["exp"] for r in rows] == sorted(scores, key=lambda n: (-scores[n], n))  # best CV first, ties by name
    small, other = (next(r for r in rows if r["exp"] == name) for name in ("small", "other"))
    assert small["model"] == "test_resnet" and small["size"] == 32 and small["folds"] == "2/2"
    assert small["public_lb"] == 0.5 and small["submission"].endswith("small.csv") and small["tta"] == "auto"
    assert small["cv"] == pytest.approx(scores["small"])
    assert other["tta"] == "none" and other["cv"] == pytest.approx(scores["other"]) and other["public_lb"] is None
    text = cli("runs", "--runs-dir", cfg.runs_dir, "--submissions-dir", cfg.submissions_dir).output
    header, first, second = text.splitlines()[:3]
    assert "cv ± std" in header and "public LB" in header and "0.5000" in (first + second)


def test_report_screenshot_is_the_whole_page(experiment):
    pytest.importorskip("pymupdf")
    cfg = experiment[0]
    cli("report", "small", "--runs-dir", cfg.runs_dir, "--screenshot")
    assert "<h2>CV vs public LB</h2>" in (cfg.run_dir / "report.html").read_text()
    png = (cfg.run_dir / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 1000 and height > 2 * width  # the whole page, cropped to its content


def test_runs_on_an_empty_folder_says_what_to_do(tmp_path):
    assert "no experiments yet" in cli("runs", "--runs-dir", tmp_path / "none").output


@pytest.mark.parametrize("command", sorted(c.name or c.callback.__name__ for c in app.registered_commands))
def test_every_command_help_has_an_example(command):
    assert "Example:" in cli(command, "--help").output
