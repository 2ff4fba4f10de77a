"""pipeline export / infer: a trained ensemble carried to a competition folder that has only the test files, and
predicted there without train.csv, runs/ or the network, as `pipeline submit` would have submitted it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import load_config
from pipeline.stages import ensemble, predict
from tests.conftest import assert_refused, cli, copy_run_to, invoke


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


@pytest.fixture(scope="module")
def blend(trained_run, tmp_path_factory):
    """runs/ holding a weighted ensemble `blend` of the session's run and a copy predicted with flips TTA (so the
    members differ), and its fp32 export: made once, read by every test (a test that damages it copies it)."""
    folder = tmp_path_factory.mktemp("blend")
    copy_run_to(trained_run, folder, "a")
    predict.run(copy_run_to(trained_run, folder, "b"), tta="flips")
    ensemble.run(["a", "b"], method="weighted", name="blend", runs_dir=str(folder / "runs"))
    export(folder / "runs", folder / "export")
    return folder / "runs"


def private_export(blend: Path, tmp_path: Path) -> Path:
    """A copy of the module's export that a test may damage."""
    return Path(shutil.copytree(blend.parent / "export", tmp_path / "export"))


def export(runs: Path, out: Path, *args: str) -> dict:
    cli("export", "blend", "--runs-dir", runs, "--out", out, *args)
    return json.loads((out / "manifest.json").read_text())


def test_an_export_predicts_the_submission_submit_writes_without_train_data(blend, tmp_path, digits_root):
    subs = tmp_path / "subs"
    cli("submit", "blend", "--runs-dir", blend, "--out", subs / "submit.csv")
    out = blend.parent / "export"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "ensemble" and set(manifest["nodes"]) == {"blend", "a", "b"}
    assert manifest["wheel"].endswith(".whl") and (out / manifest["wheel"]).is_file()
    assert manifest["cv_reproduced"]
    notebook = (out / "inference.ipynb").read_text()
    assert '/kaggle/input/export' in notebook and f'/kaggle/input/{digits_root.name}' in notebook  # the defaults
    for k in (0, 1):  # only inference files per fold: no optimizer state, no OOF, no top-epoch copies
        assert sorted(p.name for p in (out / "a" / f"fold{k}").iterdir()) == \
            ["model.safetensors", "predict.json", "recipe.yaml"]
    assert set(manifest["files"]) >= {"a/fold0/model.safetensors", "blend/weights.json", manifest["wheel"]}

    data = only_test_files(digits_root, tmp_path / "kaggle-input")
    away = blend.rename(blend.with_name("runs-away"))  # no runs/ either
    try:
        cli("infer", out, "--data", data, "--out", subs / "infer.csv")
    finally:
        away.rename(blend)
    assert (subs / "infer.csv").read_bytes() == (subs / "submit.csv").read_bytes()


def test_an_fp16_export_is_half_the_size_and_agrees_within_fp16_rounding(blend, tmp_path, digits_root):
    from pipeline.stages.infer import predict_export

    assert export(blend, tmp_path / "fp16", "--dtype", "fp16")["dtype"] == "fp16"
    w32 = (blend.parent / "export/a/fold0/model.safetensors").stat().st_size
    w16 = (tmp_path / "fp16/a/fold0/model.safetensors").stat().st_size
    assert w16 < 0.6 * w32
    data = only_test_files(digits_root, tmp_path / "input")
    p32, p16 = (predict_export(d, data)[0] for d in (blend.parent / "export", tmp_path / "fp16"))
    classes = [c for c in p32.columns if c != "id"]
    assert p32["id"].equals(p16["id"])
    assert np.abs(p32[classes].to_numpy() - p16[classes].to_numpy()).max() < 5e-3


def test_a_changed_file_a_newer_export_and_other_test_columns_are_refused(blend, tmp_path, digits_root):
    out = private_export(blend, tmp_path)
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


def reseal(out: Path, manifest: dict | None = None) -> dict:
    """The manifest rewritten with every file's current hash: an export edited by someone who also edits its
    manifest, so only the checks beyond the hashes stand between the edit and infer."""
    from pipeline.runs.exported import file_hashes

    manifest = manifest or json.loads((out / "manifest.json").read_text())
    manifest["files"] = file_hashes(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_a_tampered_export_is_refused_before_anything_in_it_is_read(blend, tmp_path, digits_root):
    """An export is someone else's folder: each probe an attacker or an unlucky copy makes is one line, exit 2,
    and no submission."""
    import yaml

    out = private_export(blend, tmp_path)
    data = only_test_files(digits_root, tmp_path / "input")
    for name in ("test.csv", "sample_submission.csv"):  # 16 test rows: the runs that pass stay quick
        pd.read_csv(data / name).head(16).to_csv(data / name, index=False)
    sub = tmp_path / "sub.csv"
    manifest = json.loads((out / "manifest.json").read_text())

    def refused(*fragments: str, file: str | None = None) -> str:
        line = assert_refused(invoke("infer", out, "--data", data, "--out", sub), *fragments, file=file)
        (out / "manifest.json").write_text(json.dumps(manifest))  # restored for the next probe
        return line

    (out / "a" / "extra.py").write_text("print('hello')")  # a file nobody listed
    refused("not in the export's manifest", file="a/extra.py")
    (out / "a" / "extra.py").unlink()

    (out / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "files"}))
    refused('"files" must map every file')
    (out / "manifest.json").write_text(json.dumps({**manifest, "files": {}}))  # checks nothing: refused too
    refused('"files" must map every file')
    (out / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "nodes"}))
    refused('"nodes" must describe')
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.yaml").write_text("secret: do-not-print\n")
    (out / "manifest.json").write_text(json.dumps({**manifest, "root": "../victim",
                                                   "nodes": {**manifest["nodes"], "../victim": manifest["nodes"]["a"]}}))
    line = refused("not a plain folder name")
    assert "do-not-print" not in line
    (out / "manifest.json").write_text(json.dumps({**manifest, "files": {**manifest["files"], "../victim/x": "0" * 64}}))
    refused('"files" must map every file of the export (plain relative paths)')
    cyclic = json.loads(json.dumps(manifest))
    cyclic["nodes"]["a"] = {"kind": "ensemble", "members": ["blend"]}
    (out / "manifest.json").write_text(json.dumps(cyclic))
    refused("its own member")
    for edit, message in [
        (lambda m: m["nodes"]["blend"].update(members=[["a"]]), "distinct members that are nodes"),
        (lambda m: m["nodes"]["a"]["folds"][0].update(k=True), "must list its folds"),
        (lambda m: m["nodes"]["a"]["folds"][0].update(seconds_per_row={"identity": "x"}), "seconds per view"),
        (lambda m: m.update(test_columns=5), '"test_columns" must be a list'),
    ]:
        edited = json.loads(json.dumps(manifest))
        edit(edited)
        (out / "manifest.json").write_text(json.dumps(edited))
        refused(message)
    (out / "manifest.json").write_text('{"cv": ' + "9" * 5000 + "}")  # past Python's digit limit
    refused("is not a readable manifest")
    lattice = json.loads(json.dumps(manifest))  # ensembles e_i and f_i, each of e_(i-1) and f_(i-1): 2^40 paths
    lattice["nodes"].update({f"{x}{i}": {"kind": "ensemble", "members": [f"e{i - 1}", f"f{i - 1}"] if i else ["a", "b"]}
                             for i in range(40) for x in "ef"})
    (out / "manifest.json").write_text(json.dumps({**lattice, "root": "e39"}))
    refused("lacks ['config.yaml'")  # at once: each node is walked once, not once per path

    # edits with the manifest resealed: the hashes agree, the structure is what refuses
    recipe = out / "a" / "fold0" / "recipe.yaml"
    original = recipe.read_text()
    tree = yaml.safe_load(original)
    tree["model"].update(pretrained=True, weights_file=str(tmp_path / "elsewhere" / "weights.pth"))
    recipe.write_text(yaml.safe_dump(tree))
    reseal(out)
    cli("infer", out, "--data", data, "--out", sub)  # the export's weights only: nothing else is reached for
    sub.unlink()
    recipe.write_text(f"extends: {victim / 'config.yaml'}\n" + original)
    reseal(out)
    refused("extends another file", file="recipe.yaml")
    recipe.write_text(original)
    config = out / "a" / "config.yaml"
    original = config.read_text()
    tree = yaml.safe_load(original)
    tree["data"]["test_csv"] = "../victim/config.yaml"
    config.write_text(yaml.safe_dump(tree))
    reseal(out)
    refused("data.test_csv '../victim/config.yaml'", "points outside --data")
    config.write_text(original)
    reseal(out)

    from tests.test_untrusted import write_png_bomb

    image = data / pd.read_csv(data / "test.csv").loc[0, "image"]
    original = image.read_bytes()
    write_png_bomb(image)  # the test files are someone else's too: infer checks sizes as prepare does
    refused("20000x10000 pixels, over image.max_pixels", file=image.name)
    for path in out.rglob("*.yaml"):  # the export cannot lift the limit: it is this machine's (infer --max-pixels)
        path.write_text(path.read_text().replace("max_pixels: 89478485", "max_pixels: 0"))
    reseal(out)
    refused("20000x10000 pixels, over image.max_pixels", file=image.name)
    image.write_bytes(original)

    config = out / "a" / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("train_csv: train.csv", "train_csv: ../victim/config.yaml"))
    reseal(out)
    refused("data.train_csv '../victim/config.yaml'", "points outside --data")
    config.write_text(original)
    weights = out / "a" / "fold0" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(b"not safetensors at all")
    reseal(out)
    refused("does not hold weights that fit its recipe's model", file="model.safetensors")
    weights.write_bytes(original)
    folds = out / "a" / "folds.json"
    original = folds.read_text()
    folds.write_text("[]")
    reseal(out)
    refused("a file of the export does not read as `pipeline export` wrote it")
    folds.write_text(original)
    reseal(out)

    assert not sub.exists()
    (out / ".ipynb_checkpoints").mkdir()  # what opening the notebook in Jupyter adds: never read, not refused
    (out / ".ipynb_checkpoints" / "inference-checkpoint.ipynb").write_text("{}")
    cli("infer", out, "--data", data, "--out", sub)  # repaired: it runs
    assert sub.is_file()


def test_the_notebook_checks_the_wheel_before_installing_it_and_takes_names_as_data(blend, tmp_path):
    """The install cell, as the notebook runs it: a wheel whose hash differs from the one export wrote into the
    notebook stops it before pip, even with the manifest resealed around the swapped wheel; a folder name with
    quotes and backslashes stays a string."""
    import nbformat

    from pipeline.runs.notebook import write_notebook

    out = private_export(blend, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["wheel_sha256"] == manifest["files"][manifest["wheel"]]
    name = 'ex"port\\\'); import os; os.system("boom") #'
    write_notebook(tmp_path / "nb.ipynb", manifest, dataset=name)
    cells = [c.source for c in nbformat.read(tmp_path / "nb.ipynb", as_version=4).cells if c.cell_type == "code"]
    scope: dict = {}
    exec(cells[0], scope)  # the parameters cell
    assert scope["EXPORT"] == f"/kaggle/input/{name}" and "os" not in scope
    assert scope["WHEEL_SHA256"] == manifest["wheel_sha256"]

    packages = tmp_path / "packages"
    here = {**scope, "EXPORT": str(out), "PACKAGES": str(packages)}
    wheel = out / manifest["wheel"]
    wheel.write_bytes(wheel.read_bytes() + b"\0")  # a swapped wheel
    with pytest.raises(SystemExit, match="does not match the manifest's sha256"):
        exec(cells[1], dict(here))
    reseal(out)  # and the manifest made to agree with it: the notebook's own copy of the hash still refuses
    with pytest.raises(SystemExit, match="does not match the manifest's sha256"):
        exec(cells[1], dict(here))
    assert not packages.exists()  # pip never ran
    manifest["wheel"] = "../../elsewhere.whl"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="not a wheel file of the export"):
        exec(cells[1], dict(here))
    assert not packages.exists()


def test_max_minutes_drops_views_then_folds_and_refuses_what_cannot_fit(blend, tmp_path, digits_root, caplog,
                                                                       monkeypatch):
    from pipeline.stages import infer as infer_stage
    from pipeline.stages.infer import predict_export

    out = private_export(blend, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    rows = len(pd.read_csv(digits_root / "test.csv"))
    nodes = manifest["nodes"]
    assert all(set(f["seconds_per_row"]) == set(f["views"]) for n in ("a", "b") for f in nodes[n]["folds"])
    # a known cost: every fold x view one minute for these rows; and known OOF scores, so the folds dropped first
    # are both members' fold 1 (the lowest scores), one fold per member always kept. a and b are one model
    # predicted with other views: kept fold 0 of each, their blend is fold 0's, which 4 folds would not be
    fold_scores = {("a", 0): 0.9, ("a", 1): 0.5, ("b", 0): 0.8, ("b", 1): 0.4}
    for name in ("a", "b"):
        for f in nodes[name]["folds"]:
            f["seconds_per_row"] = {v: 60 / rows for v in f["views"]}
            f["score"] = fold_scores[name, f["k"]]
    (out / "manifest.json").write_text(json.dumps(manifest))
    full = sum(len(f["views"]) for n in ("a", "b") for f in nodes[n]["folds"])  # minutes
    assert full > 4  # both members have TTA views to drop
    data = only_test_files(digits_root, tmp_path / "input")
    exported = {(n, f"fold{f['k']}"): f["views"] for n in ("a", "b") for f in nodes[n]["folds"]}

    predicted = {}  # (member, fold folder) -> the views that fold predicted, as infer ran it
    real_from_export = infer_stage.from_export

    def spy(fold_dir, recipe, classes):
        fm = real_from_export(fold_dir, recipe, classes)
        real_predict = fm.predict

        def predict(rows, device=None, views=None, progress=None):
            predicted[fold_dir.parent.name, fold_dir.name] = [v.name for v in views]
            return real_predict(rows, device, views, progress)

        fm.predict = predict
        return fm

    monkeypatch.setattr(infer_stage, "from_export", spy)

    def infer(name: str, minutes: float) -> str:
        caplog.clear()
        predicted.clear()
        caplog.set_level(logging.INFO, logger="pipeline")
        cli("infer", out, "--data", data, "--out", tmp_path / name, "--max-minutes", minutes)
        return caplog.text

    log = infer("fits.csv", full)
    assert f"estimate: {full:.1f} min" in log and "dropped" not in log
    assert predicted == exported  # every fold, every view
    log = infer("views.csv", 4)
    assert "view hflip" in log and "estimate now 4.0 min" in log and "dropped a fold" not in log  # 2 x 2 folds
    assert set(predicted) == set(exported) and sum(map(len, predicted.values())) == 4  # views went, no fold did
    assert all(v == exported[k][:len(v)] and v[0] == "identity" for k, v in predicted.items())  # the last ones went
    log = infer("folds.csv", 2)
    assert "dropped" in log and "estimate now 2.0 min" in log  # identity views, then a fold of each member
    assert pd.read_csv(tmp_path / "folds.csv").shape == pd.read_csv(digits_root / "sample_submission.csv").shape
    kept = {("a", "fold0"): ["identity"], ("b", "fold0"): ["identity"]}
    assert predicted == kept  # the least valuable fold of each member was skipped, and only it

    # the file is the prediction of the kept folds alone: an export that holds only those, predicted in full
    budgeted = predict_export(out, data, max_minutes=2)[0]
    priced = json.dumps(manifest)  # every fold, at the known costs
    for name in ("a", "b"):
        nodes[name]["folds"] = [{**f, "views": ["identity"]} for f in nodes[name]["folds"]
                                if (name, f"fold{f['k']}") in kept]
    (out / "manifest.json").write_text(json.dumps(manifest))
    infer("kept.csv", 2)
    assert predicted == kept and (tmp_path / "kept.csv").read_bytes() == (tmp_path / "folds.csv").read_bytes()
    pd.testing.assert_frame_equal(predict_export(out, data)[0], budgeted)
    (out / "manifest.json").write_text(priced)
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
    data = tmp_path / "in"  # --force replaces an export, never a folder that is something else
    assert_refused(invoke("export", "solo", "--runs-dir", cfg.runs_dir, "--out", data, "--force"), "is not an export")
    assert (data / "test.csv").is_file()
    assert_refused(invoke("export", "solo", "--runs-dir", cfg.runs_dir, "--out", tmp_path / "x", "--folds", "5"),
                   "fold(s) [5] not predicted")
    assert not (tmp_path / "x").exists()
    load_config(cfg.run_dir / "config.yaml")  # the run directory is untouched


RUN_NOTEBOOK = '''
import json, sys
import nbclient, nbformat
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

path, kernels, parameters = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
nb = nbformat.read(path, as_version=4)
at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\\n".join(f"{k} = {v!r}" for k, v in parameters.items())))
km = KernelManager(kernel_name="pipeline-tests", kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]))
nbclient.NotebookClient(nb, km=km, timeout=600).execute()
nbformat.write(nb, path.replace(".ipynb", ".done.ipynb"))
'''

# Any connection off this machine fails, in every process that imports site (the kernel, pip, pipeline infer);
# loopback stays open for the kernel's own sockets. Under `unshare -n` there is no other network anyway.
NO_NETWORK = '''
import ipaddress, socket

_connect = socket.socket.connect

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not ipaddress.ip_address(address[0]).is_loopback:
        raise OSError(f"network disabled for this test: connect to {address[0]}")
    return _connect(self, address)

socket.socket.connect = connect
'''


def test_the_exports_notebook_runs_headless_with_the_network_off(blend, tmp_path, digits_root):
    """inference.ipynb as Kaggle runs it: wheel installed offline into a folder of its own, `pipeline infer` from that
    copy of the package, submission.csv written; no network (a network namespace of its own where unshare works)."""
    out = private_export(blend, tmp_path)
    data = only_test_files(digits_root, tmp_path / "competition")
    kernels = tmp_path / "kernels" / "pipeline-tests"
    kernels.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "tests", "language": "python"}))
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    (tmp_path / "run_notebook.py").write_text(RUN_NOTEBOOK)
    parameters = {"EXPORT": str(out), "COMPETITION": str(data), "OUT": str(tmp_path / "submission.csv"),
                  "PACKAGES": str(tmp_path / "packages")}
    command = [sys.executable, str(tmp_path / "run_notebook.py"), str(out / "inference.ipynb"), str(kernels.parent),
               json.dumps(parameters)]
    isolated = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0
    if isolated:  # a network namespace with loopback only
        command = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    env = {**os.environ, "PYTHONPATH": str(guard)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    sub = pd.read_csv(tmp_path / "submission.csv")
    assert sub.shape == pd.read_csv(data / "sample_submission.csv").shape
    assert list((tmp_path / "packages").glob("pipeline/stages/infer.py"))  # infer ran from the installed wheel
    shown = json.loads((out / "inference.done.ipynb").read_text())["cells"][-1]["outputs"]
    assert "image" in json.dumps(shown)  # the last cell shows the submission's head


def test_runs_moved_elsewhere_ensemble_and_export_where_they_are(trained_run, tmp_path):
    """A runs/ folder copied to another machine or path keeps config.yaml files naming the old runs_dir: the ensemble
    is written beside its members where they are now, and exports from there."""
    copy_run_to(trained_run, tmp_path, "a")
    copy_run_to(trained_run, tmp_path, "b")
    moved = (tmp_path / "runs").rename(tmp_path / "moved")
    ensemble.run(["a", "b"], method="mean", name="blend", runs_dir=str(moved))
    assert (moved / "blend" / "scores.json").is_file() and not (tmp_path / "runs").exists()
    cli("export", "blend", "--runs-dir", moved, "--out", tmp_path / "export")
    assert json.loads((tmp_path / "export/manifest.json").read_text())["nodes"]["a"]["source"] == str(moved / "a")
