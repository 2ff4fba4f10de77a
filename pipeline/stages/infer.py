"""`pipeline infer EXPORT --data DIR`: a competition's submission from an export alone (pipeline export).

    pipeline infer exports/demo-ensemble --data /kaggle/input/classify-leaves --out submission.csv

No train.csv, no runs/, no W&B, no network: each fold is rebuilt from its recipe and safetensors, predicts the test
rows with the TTA views `predict` chose, folds and members are combined as predict and ensemble combined them,
and the file is decoded and validated exactly as `pipeline submit` does it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from pipeline.core.config import Config, load_config
from pipeline.core.errors import UserError
from pipeline.core.files import write_csv
from pipeline.data.folds import resolve_target
from pipeline.data.images import MAX_PIXELS
from pipeline.data.submission import check_rows, read_sample
from pipeline.engine.fold_model import from_export
from pipeline.engine.loop import pick_device
from pipeline.runs.exported import RECIPE, read_manifest
from pipeline.runs.rundir import FULL, RunDir
from pipeline.tasks import TASKS, build_task

log = logging.getLogger(__name__)


@dataclass
class Place:
    """Where the test files are now, and how to run: what infer changes in every exported config."""

    export: Path
    data: Path
    test_csv: str | None = None  # relative to data (or absolute); None: the name training used
    sample_submission: str | None = None
    batch_size: int | None = None
    device: torch.device | None = None
    max_pixels: int = MAX_PIXELS  # the test images' size limit is this machine's, not the export's to lift

    def apply(self, cfg: Config, node: str) -> Config:
        d = cfg.data
        d.root = str(self.data)
        for key in ("train_csv", "test_csv", "sample_submission", "image_dir", "test_image_dir", "labels_csv"):
            setattr(d, key, _within(self.data, _inside(getattr(d, key)), f"data.{key}"))  # the exported names
        cfg.segment.side_csv = _within(self.data, _inside(cfg.segment.side_csv), "segment.side_csv")
        d.test_csv = self.test_csv or d.test_csv  # the user's own, anywhere
        d.sample_submission = self.sample_submission or d.sample_submission
        d.cache, d.check_images = False, False  # nothing is written beside the export or the read-only input
        d.allow_outside_root = False  # test ids name files inside --data, whatever the exported config allowed
        # the weights are the export's: no hub download, no file from the training machine's disk
        cfg.model.pretrained, cfg.model.weights_file = False, None
        cfg.image.max_pixels = self.max_pixels
        cfg.runs_dir, cfg.name = str(self.export), node  # a text encoder's files: <export>/<node>/encoder
        cfg.tracking.wandb = "disabled"
        if self.batch_size:
            cfg.predict.batch_size = self.batch_size
        return cfg


def _inside(name: str | None) -> str | None:
    """A data file's name inside the competition folder: an absolute path from the training machine keeps its name."""
    return Path(name).name if name and Path(name).is_absolute() else name


def _within(data: Path, name: str | None, key: str) -> str | None:
    """name, where it stays inside the competition folder; an exported config comes from elsewhere, and `../x` or
    an absolute path would read any file."""
    if not name:
        return name
    if Path(name).is_absolute() or os.path.normpath(name).split(os.sep)[0] == "..":  # by its text: --data's own links
        # (a test folder on another disk) stay the user's business
        raise UserError(f"{key} {name!r} in the exported config points outside --data {data}; the config was edited: "
                        "export the experiment again")
    return name


def run(export: str | Path, data: str | Path, out: str | Path = "submission.csv", **options) -> Path:
    """options: predict_export's (test_csv, sample_submission, batch_size, device, max_minutes, max_pixels)."""
    start = time.time()
    frame, cfg, manifest = predict_export(export, data, **options)
    root, top = Path(export), manifest["root"]
    with as_exported(root):
        scores = json.loads((root / top / "scores.json").read_text())
        sample = read_sample(cfg)
        task = build_task(cfg, classes(root, top))
        sub = task.submission(frame, sample, scores.get("decisions"))  # as `pipeline submit` decodes and checks it
    check_rows(sub, sample, cfg)
    task.check_submission(sub, sample)
    write_csv(out, sub)
    seconds = time.time() - start
    log.info("submission %s (%d rows; the export's CV %s %.4f) validated against %s in %.0f s (%.1f rows/s)", out,
             len(sub), manifest["metric"], manifest["cv"], cfg.data_path("sample_submission"), seconds,
             len(frame) / max(seconds, 1e-9))
    return Path(out)


def predict_export(export: str | Path, data: str | Path, test_csv: str | None = None,
                   sample_submission: str | None = None, batch_size: int | None = None, device: str | None = None,
                   max_minutes: float | None = None, max_pixels: int = MAX_PIXELS) -> tuple[pd.DataFrame, Config, dict]:
    """The export's test prediction frame (what its run directory's test.parquet would hold for these test
    files), the top node's config pointed at them, and the manifest."""
    root = Path(export)
    manifest = read_manifest(root)  # every file's sha256 first: nothing is read from a damaged copy
    if not Path(data).is_dir():
        raise UserError(f"--data {data}: no such folder; point it at the competition folder (test.csv, "
                        "sample_submission.csv and the test files, laid out as in training)")
    place = Place(root, Path(data), test_csv, sample_submission, batch_size, _device(device), max_pixels)
    top = manifest["root"]
    with as_exported(root):
        cfg = node_config(root, top, place)
        check_test_columns(node_config(root, first_experiment(manifest, top), place), manifest)
        test = TASKS[cfg.task].test_table(cfg).rename(columns={cfg.data.id_col: "id"})[["id"]]
        plan = budget_plan(manifest, len(test), max_minutes, place.device)
        return node_test(root, top, manifest, place, test, plan), cfg, manifest


@contextlib.contextmanager
def as_exported(root: Path):
    """An export whose hashes agree can still hold files edited together with its manifest: what does not read
    as `pipeline export` wrote it (a key missing, a list for a table, a number past Python's limits) is one line
    naming the export, not a traceback (the traceback is logged at debug level)."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, RecursionError) as e:
        log.debug("reading the export %s", root, exc_info=True)
        raise UserError(f"{root}: a file of the export does not read as `pipeline export` wrote it "
                        f"({type(e).__name__}: {str(e)[:200]}); export the experiment again") from None


def _device(name: str | None) -> torch.device:
    if name is None:
        return pick_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: use cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def node_config(root: Path, node: str, place: Place) -> Config:
    cfg = place.apply(load_config(root / node / "config.yaml", sealed=True), node)
    folds = json.loads((root / node / "folds.json").read_text())
    resolve_target(cfg, folds.get("target_type"), folds.get("metric"))
    return cfg


def classes(root: Path, node: str) -> list:
    return json.loads((root / node / "folds.json").read_text())["classes"]


def first_experiment(manifest: dict, node: str) -> str:
    while manifest["nodes"][node]["kind"] == "ensemble":
        node = manifest["nodes"][node]["members"][0]
    return node


def check_test_columns(cfg: Config, manifest: dict) -> None:
    """The test CSV has the columns the experiment's test CSV had: a renamed or missing column is named here, not
    found as a KeyError (or wrong features) deep in a fold."""
    expected = manifest.get("test_columns")
    path = cfg.data_path("test_csv")
    if expected is None or not path.is_file():
        return  # read_test names a missing file
    found = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    if found != expected:
        missing, extra = [c for c in expected if c not in found], [c for c in found if c not in expected]
        what = "; ".join([*([f"missing {missing}"] if missing else []), *([f"extra {extra}"] if extra else [])])
        raise UserError(f"{path} has columns {found}, the exported experiment's test CSV had {expected} "
                        f"({what or 'another order'}); pass the competition's own test file (--test-csv)")


# -- prediction, node by node ---------------------------------------------------------------------------------
def node_test(root: Path, node: str, manifest: dict, place: Place, test: pd.DataFrame, plan: dict,
              done: dict | None = None) -> pd.DataFrame:
    """A node's test prediction frame, as its run directory's test.parquet holds it; each node predicted once
    (`done`), however many ensembles share it."""
    done = {} if done is None else done
    if node not in done:
        done[node] = ensemble_test(root, node, manifest, place, test, plan, done) \
            if manifest["nodes"][node]["kind"] == "ensemble" else experiment_test(root, node, place, test, plan[node])
    return done[node]


def experiment_test(root: Path, node: str, place: Place, test: pd.DataFrame, folds: dict[int, list[str]]) -> pd.DataFrame:
    """Each fold's views merged (predict's fold test.parquet), then the folds merged (predict's combine_folds)."""
    names = classes(root, node)
    frames = []
    for k, view_names in folds.items():
        fold_dir = RunDir(root / node).fold(k).path  # fold<k>/, or full/ for a full-data refit
        fm = from_export(fold_dir, place.apply(load_config(fold_dir / RECIPE, sealed=True), node), names)
        views = [v for v in fm.views if v.name in view_names]  # --max-minutes may have dropped some
        started = time.time()
        outputs = fm.predict(test, place.device, views, progress=f"{node} fold {k}")
        seconds = time.time() - started
        log.info("%s fold %s: %d rows x %d views (%s) in %.1f s, %.1f rows/s", node, k, len(test), len(views),
                 ", ".join(v.name for v in views), seconds, len(test) / max(seconds, 1e-9))
        frames.append(fm.task.prediction_frame(test, outputs))
    cfg = node_config(root, node, place)
    task = build_task(cfg, names)
    return task.prediction_frame(frames[0][["id"]], task.merge([task.read_outputs(f) for f in frames]))


def ensemble_test(root: Path, node: str, manifest: dict, place: Place, test: pd.DataFrame, plan: dict,
                  done: dict) -> pd.DataFrame:
    """The members' test frames (by id, as the ensemble stage reads them) blended as the ensemble fitted."""
    members = manifest["nodes"][node]["members"]
    frames = [node_test(root, m, manifest, place, test, plan, done).sort_values("id", ignore_index=True)
              for m in members]
    fitted = json.loads((root / node / "weights.json").read_text())
    if fitted.get("weights") is not None:
        fitted = {**fitted, "weights": [fitted["weights"][m] for m in members]}
    task = build_task(node_config(root, node, place), classes(root, node))
    blended = task.blend_test(fitted, [task.read_outputs(f) for f in frames])
    return task.prediction_frame(frames[0][["id"]], blended)


# -- time budget ----------------------------------------------------------------------------------------------
def budget_plan(manifest: dict, rows: int, max_minutes: float | None, device: torch.device) -> dict:
    """Per experiment node, fold -> the views to run: all of them, or (--max-minutes) fewer views, then fewer
    folds, until the estimate from export's throughput fits. Says what it estimates and what it dropped."""
    plan = {name: {f["k"]: list(f["views"]) for f in node["folds"]}
            for name, node in manifest["nodes"].items() if node["kind"] == "experiment"}
    cost = _cost_model(manifest, rows)
    estimate = _minutes(plan, cost)
    measured = manifest.get("throughput_device")
    if estimate is None:
        if max_minutes:
            raise UserError("--max-minutes needs the export's throughput figures, and this export has none (its test "
                            "files were not there at export); export it again where the test files are")
        return plan
    where = f"measured on {measured} at export" + ("" if measured == device.type else f"; this run uses {device}")
    log.info("estimate: %.1f min for %d test rows (%s)", estimate, rows, where)
    if not max_minutes or estimate <= max_minutes:
        return plan
    dropped = []
    for name, k in _views_to_drop(plan):  # the last TTA view of the fold with the most, one at a time
        dropped.append(f"{name} fold {k} view {plan[name][k].pop()}")
        if _minutes(plan, cost) <= max_minutes:
            break
    for name, k in _folds_to_drop(plan, manifest) if _minutes(plan, cost) > max_minutes else []:
        plan[name].pop(k)
        dropped.append(f"{name} fold {k}")
        if _minutes(plan, cost) <= max_minutes:
            break
    final = _minutes(plan, cost)
    if final > max_minutes:
        raise UserError(f"--max-minutes {max_minutes:g}: even one fold per experiment without TTA needs an "
                        f"estimated {final:.1f} min for {rows} rows ({where}); allow more time or export fewer members")
    log.warning("--max-minutes %g: dropped %s; estimate now %.1f min (from %.1f); the submission is no longer the "
                "exported CV's", max_minutes, ", ".join(dropped), final, estimate)
    return plan


def _cost_model(manifest: dict, rows: int) -> dict | None:
    """(node, fold, view) -> estimated seconds for `rows` test rows, from export's seconds per row; None: unmeasured."""
    cost = {}
    for name, node in manifest["nodes"].items():
        for f in node.get("folds", []):
            per_row = f.get("seconds_per_row")
            if not per_row:
                return None
            for view in f["views"]:
                cost[name, f["k"], view] = per_row[view] * rows
    return cost


def _minutes(plan: dict, cost: dict | None) -> float | None:
    if cost is None:
        return None
    return sum(cost[name, k, v] for name, folds in plan.items() for k, views in folds.items() for v in views) / 60


def _views_to_drop(plan: dict):
    """(node, fold) whose last view goes next, until every fold predicts its identity view only."""
    while True:
        name, k = max(((n, k) for n, folds in plan.items() for k in folds), key=lambda nk: len(plan[nk[0]][nk[1]]))
        if len(plan[name][k]) <= 1:
            return
        yield name, k


def _folds_to_drop(plan: dict, manifest: dict):
    """Folds, least valuable first (the lowest OOF score on its own rows; a full-data refit last), keeping one
    fold per experiment."""
    def value(name: str, f: dict) -> float:
        if f["k"] == FULL:  # no OOF score; trained on every row, it goes last
            return float("inf")
        score = f.get("score") or 0.0
        return score if manifest["nodes"][name].get("greater_is_better", True) else -score
    folds = sorted(((value(n, f), n, f["k"]) for n, node in manifest["nodes"].items() if node["kind"] == "experiment"
                    for f in node["folds"]), key=lambda t: t[0])
    for _, name, k in folds:
        if k in plan[name] and len(plan[name]) > 1:
            yield name, k
