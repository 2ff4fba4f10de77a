"""Sequence data: long tables of series (id, step, channels) with a labels table, or one text per row.

Reading checks what a competitor would otherwise find hours later: non-numeric or empty readings, series
without a label and labels without a series, each named by series id. Normalisation statistics and the
vocabulary are fitted on a fold's training rows only (`Normaliser.fit`, `Vocabulary.fit`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.data.tables import (
    _require_clean_ids,
    _row_numbers,
    read_table,
    require_columns,
    short,
    with_target,
)

PAD, UNK = "<pad>", "<unk>"
TEXT = "__text__"  # read_texts' column of whole texts: a string, or a tuple of several text columns' strings
WORD = re.compile(r"\w+|[^\w\s]")


def feature_columns(cfg: Config, df: pd.DataFrame) -> list[str]:
    """data.feature_cols, else every column but id, step, group and target that holds numbers (a text column
    such as a subject's name is left out; a numeric column with a stray word in it is an error, not left out)."""
    d = cfg.data
    if d.feature_cols:
        return list(d.feature_cols)
    skip = {d.id_col, d.step_col, d.group_col, d.target_col}
    return [c for c in df.columns if c not in skip and not _is_text(df[c])]


def _is_text(col: pd.Series) -> bool:
    return not is_numeric_dtype(col) and col.notna().any() and pd.to_numeric(col, errors="coerce").isna().all()


def read_series(cfg: Config, which: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """A long table (train_csv or test_csv) as {series id: float32 [steps, channels]}, in first-seen order."""
    d = cfg.data
    path = cfg.data_path(which)
    df = read_table(path, which, d.id_col)
    require_columns(df, path, {"data.id_col": d.id_col, "data.step_col": d.step_col})
    _require_clean_ids(df, path, d.id_col, unique=False)  # one row per step: ids repeat
    features = feature_columns(cfg, df)
    require_columns(df, path, {f"data.feature_cols[{i}]": c for i, c in enumerate(features)})
    if not features:
        raise UserError(f"{path}: no numeric feature columns besides {d.id_col!r}/{d.step_col!r}; set data.feature_cols")
    values = df[features].apply(pd.to_numeric, errors="coerce")
    _require_readings(df, values, path, d.id_col)
    ids = df[d.id_col].astype(str)
    order = np.argsort(pd.factorize(ids)[0], kind="stable")
    if d.step_col:
        keys = pd.DataFrame({"id": pd.factorize(ids)[0], "step": pd.to_numeric(df[d.step_col], errors="coerce")})
        if keys["step"].isna().any():
            raise UserError(f"{path}: non-numeric or empty steps in column {d.step_col!r} "
                            f"(rows {_row_numbers(keys['step'].isna())})")
        twice = keys.duplicated(keep=False)
        if twice.any():
            first = np.flatnonzero(twice.to_numpy())[0]
            raise UserError(f"{path}: series {short(ids.iloc[first])} has step {short(df[d.step_col].iloc[first])} "
                            f"more than once (rows {_row_numbers(twice)}); each (series, step) is one row")
        order = keys.sort_values(["id", "step"], kind="stable").index.to_numpy()
    ids, array = ids.to_numpy()[order], values.to_numpy(np.float32)[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return dict(zip(ids[starts], np.split(array, starts[1:]), strict=True)), features


def _require_readings(df: pd.DataFrame, values: pd.DataFrame, path, id_col: str) -> None:
    """Every reading a finite number: the first bad one named by line, column and series."""
    raw = df[values.columns]
    for what, bad in (("non-numeric", values.isna() & raw.notna()), ("empty", raw.isna()),
                      ("infinite or too large", values.abs() > np.finfo(np.float32).max)):  # read as float32
        rows = bad.any(axis=1)
        if rows.any():
            i = int(np.flatnonzero(rows.to_numpy())[0])
            col = bad.columns[bad.iloc[i].to_numpy()][0]
            series = sorted(df.loc[rows, id_col].astype(str).unique())
            value = f" {short(raw[col].iloc[i])}" if what != "empty" else ""
            raise UserError(f"{path}: {what} value{value} in column {col!r} of series {short(df[id_col].iloc[i])} "
                            f"(line {i + 2}; series {', '.join(series[:10])}{' ...' if len(series) > 10 else ''}); "
                            "fill or drop these readings, or leave the column out of data.feature_cols")


def read_series_labels(cfg: Config, series: Iterable[str]) -> pd.DataFrame:
    """labels_csv (one row per series: id, label, group), checked against the series of train_csv."""
    d = cfg.data
    if not d.labels_csv:
        raise UserError("sequence data in a long table needs data.labels_csv (one label per series id); "
                        "for text set data.text_col")
    path = cfg.data_path("labels_csv")
    labels = read_table(path, "labels_csv", d.id_col)
    require_columns(labels, path, {"data.id_col": d.id_col, "data.group_col": d.group_col})
    _require_clean_ids(labels, path, d.id_col)
    labels = with_target(labels, path, cfg) if d.label_cols else labels
    require_columns(labels, path, {"data.target_col": d.target_col})
    missing = labels[d.target_col].isna()
    if missing.any():
        raise UserError(f"{path}: series {', '.join(labels.loc[missing, d.id_col].astype(str)[:10])} have no label in "
                        f"column {d.target_col!r} (rows {_row_numbers(missing)}); fill or drop them")
    have, labelled = set(series), set(labels[d.id_col].astype(str))
    unlabelled = [s for s in series if s not in labelled]
    if unlabelled:
        raise UserError(f"{cfg.data_path('train_csv')}: series {', '.join(unlabelled[:10])} have no row in {path}; "
                        "add their labels or drop their readings")
    orphans = labels[~labels[d.id_col].astype(str).isin(have)]
    if len(orphans):
        raise UserError(f"{path}: series {', '.join(orphans[d.id_col].astype(str)[:10])} have a label but no readings "
                        f"in {cfg.data_path('train_csv')}")
    return labels


def text_columns(cfg: Config) -> list[str]:
    """The columns that make one text: data.text_cols, else data.text_col; [] for series."""
    d = cfg.data
    return list(d.text_cols) if d.text_cols else [d.text_col] if d.text_col else []


def read_texts(cfg: Config, which: str, labelled: bool) -> pd.DataFrame:
    """The text table, its text columns filled ("" for empty cells) and joined, several of them, into a tuple per
    row in column TEXT."""
    d = cfg.data
    path = cfg.data_path(which)
    df = read_table(path, which, d.id_col)
    columns = text_columns(cfg)
    require_columns(df, path, {"data.id_col": d.id_col, **{f"data.text_cols[{i}]" if d.text_cols else "data.text_col": c
                                                            for i, c in enumerate(columns)},
                               **({"data.group_col": d.group_col} if labelled else {})})
    _require_clean_ids(df, path, d.id_col)
    if labelled and d.label_cols:
        df = with_target(df, path, cfg)
    elif labelled:
        require_columns(df, path, {"data.target_col": d.target_col})
        missing = df[d.target_col].isna()
        if missing.any():
            raise UserError(f"{path}: {missing.sum()} empty labels in column {d.target_col!r} (rows {_row_numbers(missing)})")
    for c in columns:
        df[c] = df[c].fillna("").astype(str)
    df[TEXT] = df[columns[0]] if len(columns) == 1 else list(zip(*(df[c] for c in columns), strict=True))
    return df


@dataclass
class Normaliser:
    """Per-channel mean and standard deviation of a fold's training series."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, series: Sequence[np.ndarray]) -> Normaliser:
        steps = np.concatenate(list(series), axis=0).astype(np.float64)
        std = steps.std(axis=0)
        return cls(steps.mean(axis=0).astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def words(text: str | tuple[str, ...], lowercase: bool) -> list[str]:
    text = text if isinstance(text, str) else " ".join(text)  # several text columns: one run of words
    return WORD.findall(text.lower() if lowercase else text)


@dataclass
class Vocabulary:
    """Word -> id by frequency in a fold's training texts; 0 is <pad>, 1 is <unk>."""

    tokens: list[str]
    lowercase: bool = True

    @classmethod
    def fit(cls, texts: Iterable[str], size: int, min_freq: int, lowercase: bool) -> Vocabulary:
        counts = Counter(w for t in texts for w in words(t, lowercase))
        kept = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_freq][:size]
        return cls([PAD, UNK, *kept], lowercase)

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> np.ndarray:
        ids = [self.index.get(w, 1) for w in words(text, self.lowercase)]
        return np.asarray(ids or [1], dtype=np.int64)  # an empty text is one <unk>, never zero steps


class HFTokenizer:
    """A locally available Hugging Face tokenizer behind the Vocabulary interface (ids shifted so 0 pads)."""

    def __init__(self, name: str):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError(f"sequence.hf_tokenizer={name!r} needs the transformers package: pip install transformers") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        except OSError:
            raise UserError(f"sequence.hf_tokenizer={name!r} is not available locally (no download here); "
                            "pass a folder holding tokenizer files") from None
        self.name = name

    def __len__(self) -> int:
        return len(self.tokenizer) + 1

    def encode(self, text: str | tuple[str, ...]) -> np.ndarray:
        text = text if isinstance(text, str) else f" {self.tokenizer.sep_token or ''} ".join(text)
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        return np.asarray([i + 1 for i in ids] or [1], dtype=np.int64)
