"""Fold assignment (stratified, grouped, plain K-fold) and the folds file every later stage checks.

runs/<exp>/folds.csv holds id, target, (group,) fold; runs/<exp>/folds.json holds the sha256 of train.csv
it was made from, the class list and the strategy. A stage refuses folds whose hash no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api.types import is_float_dtype
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from pipeline.config import Config
from pipeline.duplicates import merge_groups
from pipeline.errors import UserError
from pipeline.files import sha256_file, write_json, write_text
from pipeline.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Folds:
    table: pd.DataFrame  # id, target, (group,) fold in train.csv order
    classes: list  # sorted label values; a label's index is its class id

    def split(self, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(training rows, validation rows) of one fold."""
        in_fold = self.table["fold"] == fold
        return self.table[~in_fold], self.table[in_fold]

    def encode(self, labels: pd.Series) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return labels.map(index).to_numpy(dtype=np.int64)


def resolve_strategy(cfg: Config, target: pd.Series) -> str:
    if cfg.cv.strategy != "auto":
        return cfg.cv.strategy
    continuous = is_float_dtype(target) and not np.allclose(target, np.round(target))
    if cfg.data.group_col:
        return "group" if continuous else "stratified_group"
    return "kfold" if continuous else "stratified"


def assign_folds(target: pd.Series, groups: pd.Series | None, k: int, strategy: str, seed: int) -> np.ndarray:
    """Fold index per row; every row lands in exactly one validation fold, reproducibly for a seed."""
    n = len(target)
    if n < k:
        raise UserError(f"cv.folds={k} but train has only {n} rows; lower cv.folds")
    if strategy in ("group", "stratified_group") and groups is None:
        raise UserError(f"cv.strategy={strategy} needs data.group_col")
    splitters = {
        "stratified": lambda: StratifiedKFold(k, shuffle=True, random_state=seed),
        "kfold": lambda: KFold(k, shuffle=True, random_state=seed),
        "group": lambda: GroupKFold(k),
        "stratified_group": lambda: StratifiedGroupKFold(k, shuffle=True, random_state=seed),
    }
    if strategy == "group":
        if groups.nunique() < k:
            raise UserError(f"cv.folds={k} but only {groups.nunique()} groups in data.group_col; lower cv.folds")
        # GroupKFold does not shuffle; permuting group labels with the seed gives seed-dependent folds.
        codes, _ = pd.factorize(groups)
        groups = pd.Series(np.random.default_rng(seed).permutation(codes.max() + 1)[codes])
    fold = np.full(n, -1, dtype=np.int64)
    stratify = target.astype(str).to_numpy()
    with warnings.catch_warnings():  # make_folds already warned about rare classes, by name
        warnings.filterwarnings("ignore", message="The least populated class")
        for i, (_, valid) in enumerate(splitters[strategy]().split(np.zeros(n), stratify, groups)):
            fold[valid] = i
    return fold


def assign_folds_keeping_duplicates(target: pd.Series, groups: pd.Series | None, k: int, strategy: str, seed: int,
                                    hashes: list[str] | None) -> np.ndarray:
    """assign_folds, with each cluster of identical samples in one fold (the same folds when there are none)."""
    if hashes is None or not pd.Series(hashes).duplicated().any():
        return assign_folds(target, groups, k, strategy, seed)
    units = merge_groups(hashes, groups)
    if groups is not None:  # duplicates bridging groups merge them; otherwise the groups already hold them
        merged = len(set(units)) < groups.nunique()
        return assign_folds(target, pd.Series(units) if merged else groups, k, strategy, seed)
    # One representative per cluster goes through the splitter (stratified on its label); copies follow it.
    first = ~pd.Series(units).duplicated().to_numpy()
    fold_of_unit = assign_folds(target[first].reset_index(drop=True), None, k, strategy, seed)
    return fold_of_unit[units]


def make_folds(cfg: Config, train: pd.DataFrame, classes: list | None = None, hashes: list[str] | None = None) -> Folds:
    """Folds for one row per sample (id, target and group columns named by the config); `classes` defaults
    to the sorted targets (detection passes its box classes and stratifies on a per-image key). Rows with
    the same content hash land in the same fold."""
    d = cfg.data
    target, groups = train[d.target_col], (train[d.group_col] if d.group_col else None)
    strategy = resolve_strategy(cfg, target)
    counts = target.value_counts()
    small = counts[counts < cfg.cv.folds]
    if strategy in ("stratified", "stratified_group") and len(small):
        log.warning(
            "%d classes (strata) have fewer rows than cv.folds=%d (e.g. %s); some folds will not see them in validation",
            len(small), cfg.cv.folds, ", ".join(f"{c}: {n}" for c, n in small.head(5).items()),
        )
    table = pd.DataFrame({"id": train[d.id_col].to_numpy(), "target": target.to_numpy()})
    if groups is not None:
        table["group"] = groups.to_numpy()
    table["fold"] = assign_folds_keeping_duplicates(target, groups, cfg.cv.folds, strategy, cfg.seed, hashes)
    return Folds(table=table, classes=classes if classes is not None else sorted(target.unique().tolist()))


def save_folds(cfg: Config, folds: Folds, strategy: str) -> None:
    """folds.json first, then folds.csv: a folds.csv on disk always has its hash beside it."""
    run = RunDir(cfg.run_dir)
    text = folds.table.to_csv(index=False)
    write_json(run.folds_json, {
        "train_sha256": sha256_file(cfg.data_path("train_csv")),
        "folds_sha256": hashlib.sha256(text.encode()).hexdigest(),  # a folds.csv from elsewhere does not match
        "folds": cfg.cv.folds,
        "strategy": strategy,
        "seed": cfg.seed,
        "rows": len(folds.table),
        "classes": folds.classes,
    })
    write_text(run.folds_csv, text)


def folds_current(cfg: Config) -> bool:
    """True when folds exist for this train.csv and these CV settings (prepare can skip)."""
    run = RunDir(cfg.run_dir)
    if not (run.folds_json.is_file() and run.folds_csv.is_file()):
        return False
    meta = json.loads(run.folds_json.read_text())
    return (
        meta.get("train_sha256") == sha256_file(cfg.data_path("train_csv"))
        and meta.get("folds") == cfg.cv.folds
        and meta.get("seed") == cfg.seed
    )


def load_folds(cfg: Config) -> Folds:
    """The experiment's folds, refused if train.csv changed since `pipeline prepare` made them."""
    run = RunDir(cfg.run_dir)
    if not run.folds_csv.is_file() or not run.folds_json.is_file():
        raise UserError(f"no folds in {run}; run `pipeline prepare --config <config>` first")
    meta = json.loads(run.folds_json.read_text())
    train_csv = cfg.data_path("train_csv")
    if not train_csv.is_file():
        raise UserError(f"train_csv {train_csv} not found; check data.root in the config")
    if meta["train_sha256"] != sha256_file(train_csv):
        raise UserError(
            f"{run.folds_csv} was made from a different {train_csv}; rerun `pipeline prepare --force` "
            "(existing fold checkpoints will no longer match their folds)"
        )
    if meta.get("folds_sha256", sha256_file(run.folds_csv)) != sha256_file(run.folds_csv):
        raise UserError(f"{run.folds_csv} is not the file `pipeline prepare` wrote for {train_csv} (folds.json "
                        "holds another hash); rerun `pipeline prepare --force`")
    table = pd.read_csv(run.folds_csv, dtype={"id": str})
    classes = meta["classes"]
    # CSV round-trips labels as str/int; compare as the folds were written.
    table["target"] = table["target"].astype(type(classes[0])) if classes else table["target"]
    return Folds(table=table, classes=classes)
