"""pipeline export / infer: a trained ensemble carried to a competition folder that has only the test files, and
predicted there without train.csv, runs/ or the network, as `pipeline submit` would have submitted it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.stages import ensemble, predict
from tests.conftest import assert_refused, cli, invoke


def only_test_files(competition: Path, dest: Path) -> Path:
    """The competition as a code competition's notebook sees it: test.csv, sample_submission.csv and the test
    images; no train.csv, no training images."""
    dest.mkdir()
    test = pd.read_csv(competition / "test.csv")
    for name in ("test.csv", "sample_submission.csv"):
        shutil.copy(competition / name, dest / name)
    for image in test["image"]:
        (dest / image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(competition / image, dest / image)
    return dest


@pytest.fixture
def blend(copy_run, tmp_path):
    """A weighted ensemble of the session's run and a copy predicted with flips TTA (so the members differ)."""
    copy_run("a")
    b = copy_run("b")
    predict.run(b, tta="flips")
    ensemble.run(["a", "b"], method="weighted", name="blend", runs_dir=str(tmp_path / "runs"))
    return tmp_path / "runs"


def export(runs: Path, out: Path, *args: str) -> dict:
    cli("export", "blend", "--runs-dir", runs, "--out", out, *args)
    return json.loads((out / "manifest.json").read_text())


def test_an_export_predicts_the_submission_submit_writes_without_train_data(blend, tmp_path, digits_root):
    subs = tmp_path / "subs"
    cli("submit", "blend", "--runs-dir", blend, "--out", subs / "submit.csv")
    out = tmp_path / "export"
    manifest = export(blend, out)
    assert manifest["kind"] == "ensemble" and set(manifest["nodes"]) == {"blend", "a", "b"}
    assert manifest["wheel"].endswith(".whl") and (out / manifest["wheel"]).is_file()
    assert (out / "inference.ipynb").is_file() and manifest["cv_reproduced"]
    for k in (0, 1):  # only inference files per fold: no optimizer state, no OOF, no top-epoch copies
        assert sorted(p.name for p in (out / "a" / f"fold{k}").iterdir()) == \
            ["model.safetensors", "predict.json", "recipe.yaml"]
    assert set(manifest["files"]) >= {"a/fold0/model.safetensors", "blend/weights.json", manifest["wheel"]}

    data = only_test_files(digits_root, tmp_path / "kaggle-input")
    shutil.rmtree(blend)  # no runs/ either
    cli("infer", out, "--data", data, "--out", subs / "infer.csv")
    assert (subs / "infer.csv").read_bytes() == (subs / "submit.csv").read_bytes()


def test_an_fp16_export_is_half_the_size_and_agrees_within_fp16_rounding(blend, tmp_path, digits_root):
    from pipeline.stages.infer import predict_export

    fp32, fp16 = export(blend, tmp_path / "fp32"), export(blend, tmp_path / "fp16", "--dtype", "fp16")
    assert (fp32["dtype"], fp16["dtype"]) == ("fp32", "fp16")
    w32 = (tmp_path / "fp32/a/fold0/model.safetensors").stat().st_size
    w16 = (tmp_path / "fp16/a/fold0/model.safetensors").stat().st_size
    assert w16 < 0.6 * w32
    data = only_test_files(digits_root, tmp_path / "input")
    p32, p16 = (predict_export(tmp_path / d, data)[0] for d in ("fp32", "fp16"))
    classes = [c for c in p32.columns if c != "id"]
    assert p32["id"].equals(p16["id"])
    assert np.abs(p32[classes].to_numpy() - p16[classes].to_numpy()).max() < 5e-3


def test_a_changed_file_a_newer_export_and_other_test_columns_are_refused(blend, tmp_path, digits_root):
    out = tmp_path / "export"
    export(blend, out)
    data = only_test_files(digits_root, tmp_path / "input")
    sub = tmp_path / "sub.csv"

    weights = out / "b/fold1/model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-10])  # a half-finished upload
    assert_refused(invoke("infer", out, "--data", data, "--out", sub), "does not match the manifest", file=str(weights))
    weights.write_bytes(original)

    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "package_version": "99.0.0"}))
    assert_refused(invoke("infer", out, "--data", data, "--out", sub), "99.0.0", "newer than this one")
    (out / "manifest.json").write_text(json.dumps(manifest))

    test = pd.read_csv(data / "test.csv")
    test.rename(columns={"image": "file"}).to_csv(data / "test.csv", index=False)
    assert_refused(invoke("infer", out, "--data", data, "--out", sub), "missing ['image']", "extra ['file']")
    test.to_csv(data / "test.csv", index=False)
    assert not sub.exists()  # nothing written by a refused run

    cli("infer", out, "--data", data, "--out", sub)  # all repaired: it runs
    assert sub.is_file()


def test_max_minutes_drops_views_then_folds_and_refuses_what_cannot_fit(blend, tmp_path, digits_root, caplog):
    out = tmp_path / "export"
    manifest = export(blend, out)
    rows = len(pd.read_csv(digits_root / "test.csv"))
    nodes = manifest["nodes"]
    assert all(set(f["seconds_per_row"]) == set(f["views"]) for n in ("a", "b") for f in nodes[n]["folds"])
    # a known cost: every fold x view one minute for these rows
    for name in ("a", "b"):
        for f in nodes[name]["folds"]:
            f["seconds_per_row"] = {v: 60 / rows for v in f["views"]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    full = sum(len(f["views"]) for n in ("a", "b") for f in nodes[n]["folds"])  # minutes
    assert full > 4  # both members have TTA views to drop
    data = only_test_files(digits_root, tmp_path / "input")

    def infer(name: str, minutes: float) -> str:
        caplog.clear()
        caplog.set_level(logging.INFO, logger="pipeline")
        cli("infer", out, "--data", data, "--out", tmp_path / name, "--max-minutes", minutes)
        return caplog.text

    log = infer("fits.csv", full)
    assert f"estimate: {full:.1f} min" in log and "dropped" not in log
    log = infer("views.csv", 4)
    assert "view hflip" in log and "estimate now 4.0 min" in log and "dropped a fold" not in log  # 2 x 2 folds
    log = infer("folds.csv", 2)
    assert "dropped" in log and "estimate now 2.0 min" in log  # identity views, then a fold of each member
    assert pd.read_csv(tmp_path / "folds.csv").shape == pd.read_csv(digits_root / "sample_submission.csv").shape

    assert_refused(invoke("infer", out, "--data", data, "--out", tmp_path / "no.csv", "--max-minutes", 1),
                   "--max-minutes 1", "one fold per experiment without TTA")
    assert not (tmp_path / "no.csv").exists()


def test_an_experiment_exports_and_infers_on_its_own(copy_run, tmp_path, digits_root):
    cfg = copy_run("solo")
    cli("submit", "solo", "--runs-dir", cfg.runs_dir, "--out", tmp_path / "submit.csv")
    cli("export", "solo", "--runs-dir", cfg.runs_dir, "--out", tmp_path / "solo", "--folds", "1")
    manifest = json.loads((tmp_path / "solo/manifest.json").read_text())
    assert [f["k"] for f in manifest["nodes"]["solo"]["folds"]] == [1] and not manifest["cv_reproduced"]
    cli("infer", tmp_path / "solo", "--data", only_test_files(digits_root, tmp_path / "in"), "--out", tmp_path / "one.csv")
    assert len(pd.read_csv(tmp_path / "one.csv")) == len(pd.read_csv(tmp_path / "submit.csv"))
    assert_refused(invoke("export", "solo", "--runs-dir", cfg.runs_dir, "--out", tmp_path / "solo"), "exists", "--force")
    assert_refused(invoke("export", "solo", "--runs-dir", cfg.runs_dir, "--out", tmp_path / "x", "--folds", "5"),
                   "fold(s) [5] not predicted")
    assert not (tmp_path / "x").exists()
    load_config(cfg.run_dir / "config.yaml")  # the run directory is untouched
