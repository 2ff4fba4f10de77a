"""`pipeline export EXP`: the inference-only folder of an experiment or an ensemble, for a code competition.

    pipeline export demo-ensemble --out exports/demo-ensemble [--folds 0,1] [--dtype fp16]

Per fold only the weights `predict` used (best, EMA or averaged with BatchNorm re-estimated) as safetensors, the
fold's recipe, its preprocessing state and TTA views; per ensemble its members and fitted blend; the package as a
wheel and a Kaggle notebook. `pipeline infer` needs nothing else (pipeline.runs.exported has the layout).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from pipeline import __version__
from pipeline.core.config import Config, dump_yaml, load_run_config
from pipeline.core.errors import UserError
from pipeline.core.files import atomic_dir, copy_file, replace_folder, sha256_file, write_json, write_text
from pipeline.data.folds import run_config
from pipeline.engine.fold_model import FoldModel, from_run
from pipeline.engine.loop import pick_device
from pipeline.runs.exported import FORMAT, MANIFEST, PREDICT, PREPROCESS, RECIPE, WEIGHTS, file_hashes
from pipeline.runs.rundir import FULL, FULL_REFIT_NOTE, RunDir, resolve
from pipeline.runs.tracking import build_tracker
from pipeline.scoring.metrics import greater_is_better
from pipeline.tasks import TASKS

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TIMING_ROWS = 256  # test rows each fold x view is timed on at export (infer's --max-minutes estimate)


def run(ref: str, out: str | Path | None = None, folds: list[int] | None = None, dtype: str = "fp32",
        runs_dir: str = "runs", force: bool = False, notebook: bool = True) -> Path:
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: choose fp32 or fp16")
    top = resolve(ref, runs_dir)
    out = Path(out) if out else Path("exports") / top.name
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it, or --out another folder")
    if out.exists() and not is_export(out):
        raise UserError(f"{out} is not an export (no {MANIFEST}, or not an empty folder); --force replaces only an "
                        "earlier export: choose another --out")
    start = time.time()
    staging = out.with_name(f".{out.name}.export")
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's leftovers
    with atomic_dir(staging) as tmp:
        nodes: dict[str, dict] = {}
        export_node(top, tmp, runs_dir, folds, dtype, nodes)
        wheel = build_wheel(tmp)
        root = nodes[top.name]
        manifest = {"format": FORMAT, "package_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "root": top.name, "kind": root["kind"], "metric": root["metric"], "cv": root["cv"],
                    "cv_reproduced": all(n["all_folds"] for n in nodes.values()),  # a subset of folds predicts otherwise
                    "dtype": dtype, "wheel": wheel, "nodes": nodes, "test_columns": test_columns(top, runs_dir),
                    "throughput_device": pick_device().type, "competition": competition(top, runs_dir)}
        if wheel:  # the notebook carries it in its own code: a wheel swapped together with the manifest is caught
            manifest["wheel_sha256"] = sha256_file(tmp / wheel)
        if notebook:
            from pipeline.runs.notebook import write_notebook

            write_notebook(tmp / "inference.ipynb", manifest, dataset=out.name)
        manifest["files"] = file_hashes(tmp)
        write_json(tmp / MANIFEST, manifest)
    replace_folder(staging, out)
    tracker = build_tracker(load_run_config(top.path), "export", "export")
    tracker.artifact(f"{top.name}-export", "export", [out], uses=[f"{n}-predictions" for n in nodes],
                     metadata={"cv": root["cv"], "metric": root["metric"], "dtype": dtype})
    tracker.finish()
    size, source = folder_size(out), sum(folder_size(Path(n["source"])) for n in nodes.values())
    log.info("exported %s (%s, CV %s %.4f) -> %s: %s, against %s of run directories (%.0f s)", top.name, root["kind"],
             root["metric"], root["cv"], out, human(size), human(source), time.time() - start)
    return out


def is_export(folder: Path) -> bool:
    """An earlier export (its manifest says so) or an empty folder: what --force may replace."""
    if folder.is_dir() and not any(folder.iterdir()):
        return True
    try:
        return "format" in json.loads((folder / MANIFEST).read_text()) and folder.is_dir()
    except (OSError, ValueError, TypeError):
        return False


def export_node(run: RunDir, dest: Path, runs_dir: str, folds: list[int] | None, dtype: str, nodes: dict) -> None:
    """An experiment's folds, or an ensemble and (recursively) its members, into dest/<name>/; nodes gets a line
    per exported run directory."""
    if run.name in nodes:
        if Path(nodes[run.name]["source"]).resolve() != run.path.resolve():
            raise UserError(f"two members are named {run.name} ({nodes[run.name]['source']}, {run.path}); an export "
                            "keeps members by name: rename one run directory")
        return
    if not run.scores.is_file():
        raise UserError(f"{run.scores} missing; run `pipeline predict` (or `pipeline ensemble`) for {run.name} first")
    scores = run.read_scores("test")
    node_dir = dest / run.name
    node_dir.mkdir(parents=True)
    for path in (run.config, run.folds_json, run.scores):
        copy_file(path, node_dir / path.name)
    if run.members.is_file():
        node = export_ensemble(run, node_dir, runs_dir, folds, dtype, nodes)
    else:
        node = export_experiment(run, node_dir, folds, dtype, "full_refit" in scores)
    nodes[run.name] = {**node, "source": str(run.path), "metric": scores["metric"], "cv": scores["cv"]}


def export_ensemble(run: RunDir, node_dir: Path, runs_dir: str, folds, dtype: str, nodes: dict) -> dict:
    fitted = json.loads(run.weights.read_text())
    if fitted["method"] == "stack" and fitted.get("weights_from") != "uniform" and not fitted.get("stacker"):
        raise UserError(f"{run.weights} holds no stacker coefficients (made by an older version); rerun "
                        f"`pipeline ensemble ... --method stack --name {run.name}`, then export")
    members = run.member_runs(runs_dir)
    for member in members:
        export_node(member, node_dir.parent, runs_dir, folds, dtype, nodes)
    names = [m.name for m in members]
    recorded = json.loads(run.members.read_text())
    write_json(node_dir / run.members.name, [{"name": n, "cv": m["cv"]} for n, m in zip(names, recorded, strict=True)])
    copy_file(run.weights, node_dir / run.weights.name)
    return {"kind": "ensemble", "members": names, "method": fitted["method"], "all_folds": True}


def parse_fold_list(text: str) -> list[int | str]:
    """--folds "0,1,full" -> [0, 1, "full"]."""
    out = []
    for part in (p for p in text.replace(" ", "").split(",") if p):
        if part != FULL and not part.isdigit():
            raise UserError(f"--folds {text!r}: expected comma-separated fold numbers and 'full', e.g. 0,1,2,full")
        out.append(part if part == FULL else int(part))
    return out


def export_experiment(run: RunDir, node_dir: Path, folds: list[int | str] | None, dtype: str,
                      with_refit: bool) -> dict:
    """The experiment's folds (and, with_refit, the full-data refit its test.parquet holds) into node_dir."""
    cfg = run_config(run)
    predicted = run.folds_with(PREDICT, cfg.cv.folds)
    if not predicted:
        raise UserError(f"{run.name} has no predicted fold; run `pipeline predict --config {run.config}` first")
    if with_refit:
        predicted.append(FULL)
    chosen = predicted if folds is None else folds
    if missing := [k for k in chosen if k not in predicted]:
        raise UserError(f"{run.name}: fold(s) {missing} not predicted (predicted: {predicted}); --folds picks among "
                        "the folds `pipeline predict` ran (full: the full-data refit, where predict joined it)")
    encoder = run.path / "encoder"
    if encoder.is_dir():  # text encoders: config and tokenizer files, rebuilt around the fold weights
        shutil.copytree(encoder, node_dir / "encoder")
    test = timing_rows(cfg)
    entries = []
    for k in chosen:
        fold, out = run.fold(k), RunDir(node_dir).fold(k).path
        out.mkdir()
        fm = from_run(cfg, k)
        save_weights(fm.model.state_dict(), out / WEIGHTS, dtype)
        write_text(out / RECIPE, dump_yaml(fm.cfg))
        copy_file(fold.predict_json, out / PREDICT)
        if fold.preprocess.is_file():
            copy_file(fold.preprocess, out / PREPROCESS)
        names = [v.name for v in fm.views]
        entry = {"k": k, "views": names, "score": fm.record["score"], "weights": fm.record["weights_used"]}
        if k == FULL:
            entry["note"] = FULL_REFIT_NOTE
        if test is not None:
            entry["seconds_per_row"] = view_seconds(fm, test)
        entries.append(entry)
        log.info("%s fold %s: %s weights, %s TTA (%s), %s%s", run.name, k, entry["weights"], fm.cfg.predict.tta,
                 ", ".join(names), dtype, "" if test is None else ", " + ", ".join(
                     f"{v} {1 / s:.0f} rows/s" for v, s in entry["seconds_per_row"].items()))
    every = chosen == predicted and len([k for k in predicted if k != FULL]) == cfg.cv.folds
    node = {"kind": "experiment", "folds": entries, "all_folds": every, "task": cfg.task, "model": cfg.model.name,
            "greater_is_better": greater_is_better(cfg.train.metric)}
    return {**node, "full_refit": FULL_REFIT_NOTE} if FULL in chosen else node


def timing_rows(cfg: Config):
    """Up to TIMING_ROWS test rows to measure inference speed on, or None where the test files are not here."""
    try:
        test = TASKS[cfg.task].test_table(cfg).rename(columns={cfg.data.id_col: "id"})[["id"]]
    except UserError as e:
        log.warning("no inference throughput in the export (infer cannot plan --max-minutes): %s", e)
        return None
    return test.head(TIMING_ROWS)


def view_seconds(fm: FoldModel, rows) -> dict[str, float]:
    """Seconds per test row of each TTA view on this machine's device (the manifest says which): one warm-up
    pass, then each view alone over the same rows."""
    device = pick_device()
    fm.predict(rows, device, fm.views[:1])  # warm-up: allocator, kernels, page cache
    out = {}
    for view in fm.views:
        start = time.perf_counter()
        fm.predict(rows, device, [view])
        out[view.name] = (time.perf_counter() - start) / len(rows)
    fm.model.cpu()
    return out


def save_weights(state: dict, path: Path, dtype: str) -> None:
    """A state_dict as safetensors: float tensors in dtype, integer buffers (BN counters) as they are; every tensor
    its own copy (safetensors refuses shared storage, and a tied weight is then simply loaded twice)."""
    from safetensors.torch import save_file

    cast = DTYPES[dtype]
    tensors = {k: (v.to(cast) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
               for k, v in state.items()}
    save_file(tensors, str(path), metadata={"dtype": dtype})


def build_wheel(dest: Path) -> str | None:
    """The installed package as a wheel in dest (pip wheel of its source tree, offline); None, with a warning,
    when the package is not installed from a source tree."""
    import pipeline

    source = Path(pipeline.__file__).resolve().parents[1]
    if not (source / "pyproject.toml").is_file():
        log.warning("no source tree beside %s: the export holds no wheel; install the package where you infer",
                    Path(pipeline.__file__).parent)
        return None
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "--no-index", "-w", str(dest), str(source)], capture_output=True, text=True)
    wheels = sorted(dest.glob("pipeline-*.whl"))
    if result.returncode or not wheels:
        raise UserError(f"building the package wheel failed (pip wheel {source}): "
                        f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}; is setuptools installed?")
    return wheels[-1].name


def first_experiment(run: RunDir, runs_dir: str) -> Config:
    """The config of an experiment, or of an ensemble's first member (recursively): its competition's files."""
    while run.members.is_file():
        run = run.member_runs(runs_dir)[0]
    return load_run_config(run.path)


def competition(run: RunDir, runs_dir: str) -> str:
    """The competition folder's name (data.root's last part): the notebook's default /kaggle/input/<name>."""
    return Path(first_experiment(run, runs_dir).data.root).resolve().name


def test_columns(run: RunDir, runs_dir: str) -> list[str] | None:
    """The header of the test CSV the experiment predicted (infer refuses a test CSV with other columns)."""
    path = first_experiment(run, runs_dir).data_path("test_csv")
    if not path.is_file():
        return None
    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
