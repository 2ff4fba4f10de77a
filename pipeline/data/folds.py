"""Fold assignment (stratified, grouped, plain K-fold) and the folds file every later stage checks.

runs/<exp>/folds.csv holds id, target, (group,) fold; runs/<exp>/folds.json holds the class list, the strategy
and the folds' key: every CV setting and input-table hash that made them (folds_key). Folds belong to the
competition: the same key gives the same folds in every experiment (cv.seed, not seed), so experiments blend.
A stage refuses folds whose key or hash no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_float_dtype
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from pipeline.core.config import Config, load_run_config
from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file, write_json, write_text
from pipeline.data.duplicates import merge_groups
from pipeline.data.tables import read_table, require_columns
from pipeline.runs.rundir import RunDir
from pipeline.scoring.metrics import DEFAULTS
from pipeline.scoring.targets import build_target

log = logging.getLogger(__name__)


@dataclass
class Folds:
    table: pd.DataFrame  # id, target, (group,) fold in train.csv order
    classes: list  # sorted label values (tags, grades); a label's index is its class id; [] for regression
    target_type: str = "multiclass"  # data.target_type as prepare resolved it

    def split(self, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(training rows, validation rows) of one fold."""
        in_fold = self.table["fold"] == fold
        return self.table[~in_fold], self.table[in_fold]

    def encode(self, labels: pd.Series) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return labels.map(index).to_numpy(dtype=np.int64)


def resolve_strategy(cfg: Config, target: pd.Series) -> str:
    """auto: stratified (on the label, the tags or quantile bins of a value), grouped when there is a group column;
    a continuous target of an untyped (multiclass) task is split plainly, as before target types."""
    if cfg.cv.strategy != "auto":
        return cfg.cv.strategy
    continuous = cfg.data.target_type in ("auto", "multiclass") and is_float_dtype(target) and \
        not np.allclose(target, np.round(target))
    if cfg.data.group_col:
        return "group" if continuous else "stratified_group"
    return "kfold" if continuous else "stratified"


def resolve_target(cfg: Config, target_type: str | None, metric: str | None = None) -> None:
    """Settle data.target_type (as prepare found it; experiments from before target types are multiclass) and an
    auto train.metric, in place, so every later stage and config.yaml names them. metric: what prepare settled an
    auto metric to (folds.json; it follows what sample_submission asks for, pipeline.data.labels.settle_target); None:
    the target type's default."""
    cfg.data.target_type = target_type or "multiclass"  # "auto" stays: a task without target types (detection)
    if cfg.train.metric == "auto":  # an unrecorded metric of a task without target types: the task settles it
        cfg.train.metric = metric or DEFAULTS.get(cfg.data.target_type, "auto")


def assign_folds(target, groups: pd.Series | None, k: int, strategy: str, seed: int) -> np.ndarray:
    """Fold index per row; every row lands in exactly one validation fold, reproducibly for a seed. target is what
    stratification balances: one value per row, or a 0/1 label matrix (multilabel: iterative stratification)."""
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
    if np.ndim(target) == 2 and strategy in ("stratified", "stratified_group"):
        return _multilabel_folds(np.asarray(target), groups if strategy == "stratified_group" else None, k, seed)
    stratify = np.asarray(target).astype(str) if np.ndim(target) == 1 else np.zeros(n)
    if strategy == "stratified" and pd.Series(stratify).value_counts().max() < k:  # too few rows per stratum
        log.warning("every stratum has fewer than cv.folds=%d rows; the folds are not stratified", k)
        strategy = "kfold"
    with warnings.catch_warnings():  # make_folds already warned about rare classes, by name
        warnings.filterwarnings("ignore", message="The least populated class")
        for i, (_, valid) in enumerate(splitters[strategy]().split(np.zeros(n), stratify, groups)):
            fold[valid] = i
    return fold


def _multilabel_folds(labels: np.ndarray, groups: pd.Series | None, k: int, seed: int) -> np.ndarray:
    """Iterative stratification (Sechidis et al. 2011, the iterative-stratification package) of a 0/1 label matrix;
    with groups, of the groups' label unions, every row following its group."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    codes = np.arange(len(labels)) if groups is None else pd.factorize(groups)[0]
    units = np.zeros((codes.max() + 1, labels.shape[1]), dtype=np.int64)
    np.maximum.at(units, codes, labels)
    if len(units) < k:
        raise UserError(f"cv.folds={k} but only {len(units)} groups in data.group_col; lower cv.folds")
    fold_of_unit = np.full(len(units), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, valid) in enumerate(splitter.split(np.zeros(len(units)), units)):
        fold_of_unit[valid] = i
    return fold_of_unit[codes]


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
    fold_of_unit = assign_folds(np.asarray(target)[first], None, k, strategy, seed)
    return fold_of_unit[units]


def make_folds(cfg: Config, train: pd.DataFrame, classes: list | None = None, hashes: list[str] | None = None,
               strata: np.ndarray | None = None) -> Folds:
    """Folds for one row per sample (id, target and group columns named by the config); `classes` defaults
    to the sorted targets; `strata`, what stratification balances, to the target type's (a task passes its own:
    Task.strata, e.g. detection's per-image key of box classes). Rows with the same content hash land in the same
    fold."""
    d = cfg.data
    target, groups = train[d.target_col], (train[d.group_col] if d.group_col else None)
    strategy = resolve_strategy(cfg, target)
    classes = classes if classes is not None else sorted(target.unique().tolist())
    strata = build_target(cfg, classes).strata(target) if strata is None else strata
    counts = pd.Series(strata).value_counts() if strata.ndim == 1 else pd.Series(strata.sum(axis=0), index=classes)
    small = counts[counts < cfg.cv.folds]
    if strategy in ("stratified", "stratified_group") and len(small):
        log.warning(
            "%d classes (strata) have fewer rows than cv.folds=%d (e.g. %s); some folds will not see them in validation",
            len(small), cfg.cv.folds, ", ".join(f"{c}: {n}" for c, n in small.head(5).items()),
        )
    table = pd.DataFrame({"id": train[d.id_col].to_numpy(), "target": target.to_numpy()})
    if groups is not None:
        table["group"] = groups.to_numpy()
    table["fold"] = assign_folds_keeping_duplicates(strata, groups, cfg.cv.folds, strategy, cfg.cv.seed, hashes)
    return Folds(table=table, classes=classes, target_type=cfg.data.target_type)


def folds_key(cfg: Config) -> dict:
    """Everything that makes the folds: CV settings, the columns they split on, and the hash of every input table.
    Two experiments with the same key get the same folds (and blend); a change to any of it makes new ones."""
    d = cfg.data
    inputs = {"train_csv": sha256_file(cfg.data_path("train_csv"))}
    if d.labels_csv and cfg.data_path("labels_csv").is_file():  # sequences: the labels live in their own table
        inputs["labels_csv"] = sha256_file(cfg.data_path("labels_csv"))
    if cfg.cv.folds_file:
        inputs["folds_file"] = sha256_file(cfg.cv.folds_file)
    key = {"folds": cfg.cv.folds, "strategy": cfg.cv.strategy, "seed": cfg.cv.seed, "id_col": d.id_col,
           "target_col": d.target_col, "group_col": d.group_col, "dedupe": d.dedupe, "classes": d.classes,
           "inputs": inputs}
    if d.label_cols or d.label_sep != " ":  # keys from before target types stay valid
        key.update(label_cols=d.label_cols, label_sep=d.label_sep)
    return key


def folds_from_file(cfg: Config, train: pd.DataFrame, classes: list | None = None,
                    strata: np.ndarray | None = None) -> Folds:
    """cv.folds_file (id, fold: another experiment's folds.csv) for these samples: every id exactly once."""
    path, d = Path(cfg.cv.folds_file), cfg.data
    given = read_table(path, "cv.folds_file", "id")
    require_columns(given, path, {"id column": "id", "fold column": "fold"})
    given = given.drop_duplicates(["id", "fold"])
    ids = train[d.id_col].astype(str)
    missing, extra = ~ids.isin(given["id"]), ~given["id"].isin(ids)
    if missing.any() or extra.any() or given["id"].duplicated().any():
        what = (f"no fold for {missing.sum()} ids of train (first {ids[missing].iloc[0]!r})" if missing.any() else
                f"{extra.sum()} ids train does not have (first {given['id'][extra].iloc[0]!r})" if extra.any() else
                "ids in two folds")
        raise UserError(f"cv.folds_file {path}: {what}; it must be the folds of this train.csv (runs/<exp>/folds.csv)")
    fold = pd.to_numeric(given.set_index("id")["fold"], errors="coerce").reindex(ids).to_numpy()
    if np.isnan(fold).any() or set(fold.astype(int)) != set(range(cfg.cv.folds)):
        raise UserError(f"cv.folds_file {path} has folds {sorted(set(given['fold']))[:10]}, not 0..{cfg.cv.folds - 1} "
                        f"(cv.folds={cfg.cv.folds}); set cv.folds to its number of folds")
    folds = make_folds(cfg, train, classes, strata=strata)  # the id/target/group columns; only the fold is replaced
    folds.table["fold"] = fold.astype(np.int64)
    return folds


def save_folds(cfg: Config, folds: Folds, strategy: str) -> None:
    """folds.json first, then folds.csv: a folds.csv on disk always has its hash beside it."""
    run = RunDir(cfg.run_dir)
    text = folds.table.to_csv(index=False)
    key = folds_key(cfg)
    write_json(run.folds_json, {
        "train_sha256": key["inputs"]["train_csv"],
        "folds_sha256": hashlib.sha256(text.encode()).hexdigest(),  # a folds.csv from elsewhere does not match
        "folds": cfg.cv.folds,
        "strategy": strategy,  # as resolved (auto -> stratified, ...)
        "seed": cfg.cv.seed,
        "rows": len(folds.table),
        "classes": folds.classes,
        "target_type": folds.target_type,
        "metric": cfg.train.metric,  # as prepare settled it: what an auto train.metric means in later stages
        "key": key,
    })
    write_text(run.folds_csv, text)


def stale_reasons(cfg: Config, meta: dict) -> list[str]:
    """What changed since these folds were made (folds.json's key against the config's); [] when current.
    Folds from before the key existed are judged on what they recorded: train.csv, K and the seed."""
    now = folds_key(cfg)
    was = meta.get("key") or {"folds": meta.get("folds"), "seed": meta.get("seed"),
                              "inputs": {"train_csv": meta.get("train_sha256")}}
    tables = set(was["inputs"]) | (set(now["inputs"]) if "key" in meta else set())
    reasons = []
    made_for = meta.get("target_type", "multiclass")
    if cfg.data.target_type not in ("auto", made_for):
        reasons.append(f"data.target_type is {cfg.data.target_type!r}, the folds were made for {made_for!r}")
    for name in now:
        if name not in was:
            continue
        if name == "inputs":
            reasons += [f"{cfg.cv.folds_file if t == 'folds_file' else cfg.data_path(t)} changed"
                        for t in sorted(tables) if now[name].get(t) != was[name].get(t)]
        elif now[name] != was[name]:
            reasons.append(f"{'cv' if name in ('folds', 'strategy', 'seed') else 'data'}.{name} is "
                           f"{now[name]!r}, was {was[name]!r}")
    return reasons


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
    if reasons := stale_reasons(cfg, meta):
        raise UserError(f"{run.folds_csv} was made with other CV settings ({'; '.join(reasons)}); rerun "
                        "`pipeline prepare --force` to remake them (trained folds will no longer match), or undo the change")
    if meta.get("folds_sha256", sha256_file(run.folds_csv)) != sha256_file(run.folds_csv):
        raise UserError(f"{run.folds_csv} is not the file `pipeline prepare` wrote for {train_csv} (folds.json "
                        "holds another hash); rerun `pipeline prepare --force`")
    table = pd.read_csv(run.folds_csv, dtype={"id": str})
    classes, target_type = meta["classes"], meta.get("target_type", "multiclass")
    resolve_target(cfg, target_type, meta.get("metric"))
    # CSV round-trips labels as str/int; compare as the folds were written (tags are text, values numbers).
    if target_type == "multilabel":
        table["target"] = table["target"].fillna("").astype(str)
    elif classes and target_type != "regression":
        table["target"] = table["target"].astype(type(classes[0]))
    return Folds(table=table, classes=classes, target_type=target_type)


def run_config(run: RunDir) -> Config:
    """A run's config.yaml as prepare resolved it, pointed at the run directory where it is now."""
    cfg = load_run_config(run.path)
    folds = json.loads(run.folds_json.read_text())
    resolve_target(cfg, folds.get("target_type"), folds.get("metric"))
    return cfg
