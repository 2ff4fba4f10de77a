"""The run directory's layout, in one place: the files through which the stages talk (../shared/DESIGN.md).

    runs/<exp>/  config.yaml meta.json folds.csv folds.json duplicates.csv oof.parquet test.parquet scores.json
                 adversarial.json adversarial.csv (prepare's adversarial validation, pipeline.data.drift)
                 pseudo.json (pipeline pseudo: the source, thresholds and rows kept per fold)
                 (ensembles: members.json weights.json)  report.html report/
                 (hf: text encoders: encoder/, the model's config.json and tokenizer files, no weights)
      fold<k>/   last.pt best.pt avg.pt top/epoch<e>.pt metrics.csv train.log train.lock preprocess.json
                 oof.parquet oof_no_tta.parquet test.parquet predict.json (pipeline pseudo: pseudo.parquet)
      full/      a fold folder for the full-data refit (`train --fold full`): every row, no OOF, no CV of its own

Any stage may run on another machine later, as long as it sees the same folder; this module is that contract.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import yaml

from pipeline.core.config import Config, load_run_config
from pipeline.core.errors import UserError
from pipeline.core.files import check_stamps, new_stamp, write_json, write_parquet

FULL = "full"  # `--fold full`: the model refit on every row
FULL_REFIT_NOTE = "full-data refit (no CV of its own: the CV is the folds' OOF score)"
KINDS = {"ensemble": "an ensemble", "pseudo": "a pseudo-labelled experiment (pipeline pseudo)",
         "student": "a distilled student (pipeline distill)", "experiment": "an experiment",
         "other": "a folder that is not a run directory"}  # RunDir.kind()


class FoldDir:
    """runs/<exp>/fold<k>/: one fold's checkpoints, metrics and predictions."""

    # what `pipeline train --force` deletes (with top/) before retraining the fold
    FILES = ("last.pt", "best.pt", "avg.pt", "metrics.csv", "oof.parquet", "oof_no_tta.parquet", "test.parquet",
             "predict.json", "train.log", "preprocess.json")

    def __init__(self, path: Path, k: int | str):
        self.path, self.k = path, k
        self.last, self.best, self.avg = path / "last.pt", path / "best.pt", path / "avg.pt"
        self.top = path / "top"  # the best epochs' weights, kept for averaging (train.keep_top)
        self.metrics, self.log, self.lock = path / "metrics.csv", path / "train.log", path / "train.lock"
        self.preprocess = path / "preprocess.json"
        self.oof, self.oof_no_tta, self.test = path / "oof.parquet", path / "oof_no_tta.parquet", path / "test.parquet"
        self.predict_json = path / "predict.json"
        self.pseudo = path / "pseudo.parquet"  # pipeline pseudo's labelled test rows for this fold (an input: kept)

    def __fspath__(self) -> str:
        return str(self.path)

    __str__ = __fspath__

    def clear(self) -> None:
        """Delete what training and prediction wrote, so the fold starts again."""
        for name in self.FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.top, ignore_errors=True)


class RunDir:
    """runs/<exp>/: an experiment or an ensemble."""

    def __init__(self, path: str | Path):
        self.path = path = Path(path)
        self.name = path.name
        self.config, self.meta = path / "config.yaml", path / "meta.json"
        self.folds_csv, self.folds_json, self.duplicates = path / "folds.csv", path / "folds.json", path / "duplicates.csv"
        self.adversarial_json, self.adversarial_csv = path / "adversarial.json", path / "adversarial.csv"
        self.pseudo = path / "pseudo.json"  # pipeline pseudo's provenance: source, thresholds, rows kept per fold
        self.oof, self.test, self.scores = path / "oof.parquet", path / "test.parquet", path / "scores.json"
        self.members, self.weights = path / "members.json", path / "weights.json"  # ensembles only
        self.report, self.figures = path / "report.html", path / "report"

    def __fspath__(self) -> str:
        return str(self.path)

    __str__ = __fspath__

    def fold(self, k: int | str) -> FoldDir:
        """fold<k>/, or full/ for k = FULL."""
        return self.full if k == FULL else FoldDir(self.path / f"fold{k}", k)

    @property
    def full(self) -> FoldDir:
        """The full-data refit's folder (`train --fold full`); its k is FULL."""
        return FoldDir(self.path / FULL, FULL)

    def fold_dirs(self) -> list[FoldDir]:
        """The fold folders on disk, in fold order (fold10 after fold9)."""
        found = [int(p.name.removeprefix("fold")) for p in self.path.glob("fold*")
                 if p.is_dir() and p.name.removeprefix("fold").isdigit()]
        return [self.fold(k) for k in sorted(found)]

    def folds_with(self, name: str, k: int) -> list[int]:
        """Which of folds 0..k-1 hold the file `name` (e.g. "best.pt": trained; "predict.json": predicted)."""
        return [i for i in range(k) if (self.fold(i).path / name).is_file()]

    def classes(self) -> list:
        """The class list prepare wrote (folds.json)."""
        return json.loads(self.folds_json.read_text())["classes"]

    def member_runs(self, runs_dir: str | Path = "runs") -> list[RunDir]:
        """An ensemble's members (members.json) where they are now: the run directory it recorded, one of that name
        beside the ensemble (the two moved or copied together), else under runs_dir. Where members.json recorded a
        member's predictions (its scores.json stamp), the first of these holding those predictions wins, so a
        different run that merely shares the name is never taken for the member."""
        members = []
        for m in json.loads(self.members.read_text()):
            places = [Path(m["run"]), self.path.parent / Path(m["run"]).name, Path(runs_dir) / m["name"]]
            found = [RunDir(p) for p in dict.fromkeys(places) if (p / "config.yaml").is_file()]
            if not found:
                raise UserError(f"{self.name}'s member {m['name']} not found: none of {', '.join(map(str, places))} "
                                "holds config.yaml; pass --runs-dir where the members live")
            same = [r for r in found if m.get("stamp") and r.stamp() == m["stamp"]]
            members.append((same or found)[0])
        return members

    def stamp(self) -> str | None:
        """The stamp of the predictions scores.json describes (None before any)."""
        return json.loads(self.scores.read_text()).get("stamp") if self.scores.is_file() else None

    def kind(self) -> str | None:
        """What the folder holds: None (nothing yet), "ensemble", "pseudo" (pipeline pseudo's), "student" (pipeline
        distill's), "experiment", or "other" (files, but no run)."""
        if self.members.is_file():  # an ensemble's first file
            return "ensemble"
        if not self.config.is_file():
            return "other" if self.path.is_dir() and any(self.path.iterdir()) else None
        tree = yaml.safe_load(self.config.read_text()) or {}
        if (tree.get("pseudo") or {}).get("source"):
            return "pseudo"
        return "student" if (tree.get("distill") or {}).get("teacher") else "experiment"

    def claim(self, kind: str, fix: str) -> RunDir:
        """This folder as what a stage is about to write there (a `kind`): refused when it holds anything else, so
        an ensemble, a pseudo-labelled experiment or a student never overwrites another run."""
        held = self.kind()
        if held not in (None, kind):
            raise UserError(f"{self.path} is {KINDS[held]}, not {KINDS[kind]}: {fix}")
        return self

    def read_scores(self, *parts: str) -> dict:
        """scores.json, checked against the stamps of the prediction files named ("oof", "test")."""
        scores = json.loads(self.scores.read_text())
        check_stamps(self.scores, scores, [getattr(self, p) for p in parts])
        return scores

    def write_predictions(self, oof: pd.DataFrame, test: pd.DataFrame, scores: dict) -> dict:
        """oof.parquet and test.parquet, then scores.json (last: what it describes is on disk), sharing one stamp."""
        scores = {**scores, "stamp": new_stamp()}
        write_parquet(self.oof, oof, scores["stamp"])
        write_parquet(self.test, test, scores["stamp"])
        write_json(self.scores, scores)
        return scores


def resolve(ref: str | Path, runs_dir: str | Path = "runs") -> RunDir:
    """An experiment by name (runs_dir/<name>) or by the path of its run directory; it must hold config.yaml. A ref
    that names two run directories (./<ref> and runs_dir/<ref>) is refused: pass the path of the one meant."""
    here, under = Path(ref), Path(runs_dir) / ref
    found = [p for p in (here, under) if (p / "config.yaml").is_file()]
    if len(found) == 2 and here.resolve() != under.resolve():
        raise UserError(f"{ref!r} names two runs, {here} and {under}; pass the path of the one you mean")
    if not found:
        raise UserError(f"no experiment {ref!r}: {under / 'config.yaml'} not found")
    return RunDir(found[0])


def best_weights(state: dict) -> dict:
    """The state_dict that scored best in a checkpoint: the raw or the EMA weights."""
    return state["ema"] if state["progress"]["best_source"] == "ema" else state["model"]


def parse_folds(fold: str | int, k: int) -> list[int | str]:
    if str(fold) == "all":
        return list(range(k))
    if str(fold) == FULL:
        return [FULL]
    try:
        f = int(fold)
    except ValueError:
        raise UserError(f"--fold {fold!r}: expected a fold number 0..{k - 1}, 'all' or 'full'") from None
    if not 0 <= f < k:
        raise UserError(f"--fold {f}: this experiment has folds 0..{k - 1} (cv.folds={k})")
    return [f]


def load_run(exp: str, runs_dir: str = "runs") -> Config:
    """The config of an experiment (by name under runs_dir, or its run directory's path), pointed at that folder:
    its run_dir is the folder named and its name the folder's, whatever its config.yaml says (a run copied from
    another machine reads itself, never a local run of the same name)."""
    return load_run_config(resolve(exp, runs_dir).path)
