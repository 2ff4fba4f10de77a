"""Competition tables and loaders: read CSVs with clear errors (file, line, column), build seeded loaders."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.core.config import Config
from pipeline.core.distributed import ShardSampler, world
from pipeline.core.errors import UserError
from pipeline.core.seeding import (
    DrawnRows,
    DrawSampler,
    LengthGroupedSampler,
    LengthSortedSampler,
    SeededSampler,
)

MAX_LISTED = 20  # bad rows printed one per line; the rest are counted


def read_table(path: Path, what: str, id_col: str | None = None) -> pd.DataFrame:
    """Read a competition CSV; a missing, empty, malformed or non-UTF-8 file is a UserError naming its line."""
    if not path.is_file():
        raise UserError(f"{what} {path} not found; check data.root and data.{what} in the config")
    try:
        # ids stay text: "00123" must not become 123 on the way to a file name.
        df = pd.read_csv(path, dtype={id_col: str} if id_col else None)
    except pd.errors.EmptyDataError:
        raise UserError(f"{what} {path} is empty; expected a header row and data rows") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path}{_not_utf8(path)}") from None
    except pd.errors.ParserError as e:
        raise UserError(f"{what} {path}: {_parser_problem(str(e))}") from None
    except OSError as e:  # permissions, a folder named like the file
        raise UserError(f"{what} {path} cannot be read ({e.strerror or e}); check its permissions") from None
    if not isinstance(df.index, pd.RangeIndex):  # pandas makes the first column an index when rows outgrow the header
        raise UserError(f"{what} {path}: line 2 has {len(df.columns) + 1} fields but the header has {len(df.columns)}; "
                        "remove trailing commas or quote values that hold commas")
    if any("\x00" in str(c) for c in df.columns):
        raise UserError(f"{what} {path} has NUL bytes in its header: UTF-16 text or not a CSV; re-save it as UTF-8")
    if df.empty:
        raise UserError(f"{what} {path} has a header but no rows; it needs at least one data row")
    return df


def _not_utf8(path: Path) -> str:
    """Where a file stops being UTF-8, and how to convert it: UTF-8 never has a newline byte inside a
    character, so decoding line by line finds the exact line."""
    with open(path, "rb") as f:
        if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            return " is UTF-16 text; re-save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8)"
        f.seek(0)
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f": line {n} is not UTF-8 (byte 0x{line[e.start]:02x} at position {e.start + 1} of the line); "
                        "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 for Latin-1 text)")
    return " is not UTF-8 text; re-save it as UTF-8"


def _parser_problem(error: str) -> str:
    """pandas' tokenizer error as a line number and a fix."""
    if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", error):
        header, line, saw = m.groups()
        return f"line {line} has {saw} fields but the header has {header}; quote values that hold commas (\"a,b\")"
    if m := re.search(r"EOF inside string starting at row (\d+)", error):
        return (f"the quote opened on line {int(m.group(1)) + 1} is never closed; close it, "
                "or write a quote inside a value as \"\"")
    return f"not a well-formed CSV ({error.strip()}); check its quotes and separators"


def require_columns(df: pd.DataFrame, path: Path, columns: dict[str, str | None]) -> None:
    """columns maps config key -> column name; every named column must exist in df."""
    for key, col in columns.items():
        if col is None or col in df.columns:
            continue
        close = difflib.get_close_matches(col, [str(c) for c in df.columns], n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        names = [short(c) for c in df.columns[:MAX_LISTED]] + (["..."] if len(df.columns) > MAX_LISTED else [])
        raise UserError(
            f"{path}: column {col!r} (config {key}) not found; columns are {', '.join(names)}; "
            f"{hint}set it with --set {key}=<column>"
        )


def read_train(cfg: Config) -> pd.DataFrame:
    """train.csv with unique, non-empty ids and a label on every row; other columns are kept and ignored."""
    path = cfg.data_path("train_csv")
    df = read_table(path, "train_csv", cfg.data.id_col)
    d = cfg.data
    require_columns(df, path, {"data.id_col": d.id_col, "data.group_col": d.group_col})
    _require_clean_ids(df, path, d.id_col)
    return with_target(df, path, cfg)


def with_target(df: pd.DataFrame, path: Path, cfg: Config) -> pd.DataFrame:
    """The table with a label on every row in data.target_col: read, or made from data.label_cols (0/1 label
    columns as tags, or several value columns of a regression as one row of values)."""
    d = cfg.data
    if d.label_cols:
        require_columns(df, path, {f"data.label_cols[{i}]": c for i, c in enumerate(d.label_cols)})
        if d.target_col in d.label_cols:  # the joined labels would overwrite one of the columns they come from
            raise UserError(f"data.target_col={d.target_col!r} is also in data.label_cols; with label columns the "
                            "target column is made from them: set data.target_col to a name train.csv does not use, "
                            "e.g. --set data.target_col=targets")
        if label_cols_kind(df, cfg) == "regression":
            df[d.target_col] = values_from_columns(df, path, cfg)
        else:
            df[d.target_col] = tags_from_columns(df, path, cfg)
        return df
    require_columns(df, path, {"data.target_col": d.target_col})
    if d.target_type != "multilabel":  # a multilabel row may have no tags (data.min_tags says if it must)
        _require_labels(df, path, d.target_col)
    return df


def label_values(df: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """data.label_cols as numbers, NaN where a cell holds something else."""
    return df[cfg.data.label_cols].apply(pd.to_numeric, errors="coerce")


def label_cols_kind(df: pd.DataFrame, cfg: Config) -> str:
    """What data.label_cols are: a regression's value columns (data.target_type=regression, or auto on numbers that
    are not all 0/1), else multilabel 0/1 label columns."""
    kind = cfg.data.target_type
    if kind == "ordinal":
        raise UserError("data.label_cols with data.target_type=ordinal: an ordinal target is one grade column; "
                        "set data.target_col, or data.target_type=regression for several value columns")
    if kind != "auto":
        return kind
    values = label_values(df, cfg)
    return "regression" if values.notna().all().all() and not values.isin([0, 1]).all().all() else "multilabel"


def values_from_columns(df: pd.DataFrame, path: Path, cfg: Config) -> pd.Series:
    """data.label_cols of a multi-output regression as one text cell per row ("v1 v2 ..."): the folds table keeps
    one target column; pipeline.scoring.targets.Regression reads the values back in data.label_cols order."""
    values = label_values(df, cfg)
    bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
    if bad.any():
        i, j = (int(a[0]) for a in np.nonzero(bad))
        col = cfg.data.label_cols[j]
        raise UserError(f"{path}: row {i + 2}, column {col!r} holds {short(df[col].iloc[i])}; a regression's "
                        "data.label_cols hold numbers")
    return pd.Series([" ".join(repr(float(v)) for v in row) for row in values.to_numpy(dtype=np.float64)],
                     index=df.index)


def tags_from_columns(df: pd.DataFrame, path: Path, cfg: Config) -> pd.Series:
    """data.label_cols (one 0/1 column per label, Jigsaw style) as tag strings joined by data.label_sep."""
    cols = cfg.data.label_cols
    values = label_values(df, cfg)
    bad = ~values.isin([0, 1])
    if bad.any().any():
        i, col = int(np.flatnonzero(bad.any(axis=1))[0]), bad.columns[bad.any()][0]
        raise UserError(f"{path}: row {i + 2}, column {col!r} holds {short(df[col].iloc[i])}; data.label_cols "
                        "of a multilabel target hold 0 or 1 (set data.target_type=regression for value columns)")
    names = np.asarray(cols, dtype=object)
    return pd.Series([cfg.data.label_sep.join(names[row.astype(bool)]) for row in values.to_numpy()], index=df.index)



def read_test(cfg: Config) -> pd.DataFrame:
    """test.csv with unique, non-empty ids; other columns are kept and ignored."""
    path = cfg.data_path("test_csv")
    df = read_table(path, "test_csv", cfg.data.id_col)
    require_columns(df, path, {"data.id_col": cfg.data.id_col})
    _require_clean_ids(df, path, cfg.data.id_col)
    return df


def check_test_labels(test: pd.DataFrame, path: Path, col: str, classes: Sequence) -> None:
    """A test table may carry the target column (a labelled hold-out); the model can only predict train's classes."""
    if col not in test.columns:
        return
    unknown = test[col].notna() & ~test[col].astype(str).isin({str(c) for c in classes})
    if unknown.any():
        values = ", ".join(short(v) for v in test.loc[unknown, col].unique()[:5])
        raise UserError(f"{path}: labels in column {col!r} that train never uses: {values} (rows {_row_numbers(unknown)}); "
                        "fix these rows, or drop the column (test labels are not used)")


def _require_clean_ids(df: pd.DataFrame, path: Path, col: str, unique: bool = True) -> None:
    empty = df[col].isna()
    if empty.any():
        raise UserError(f"{path}: empty ids in column {col!r} (rows {_row_numbers(empty)}); fill or drop these rows")
    dup = df[col].duplicated(keep=False)
    if unique and dup.any():
        raise UserError(f"{path}: duplicate ids in column {col!r} (rows {_row_numbers(dup)}); ids must be unique")


def _require_labels(df: pd.DataFrame, path: Path, col: str) -> None:
    missing = df[col].isna()
    if missing.any():
        # pandas, like Kaggle's scorers, reads NA, NaN, None, null and blank cells as missing
        raise UserError(f"{path}: {missing.sum()} empty labels in column {col!r} (rows {_row_numbers(missing)}; "
                        "blank or NA/NaN/None/null); fill or drop these rows (tags, where a row may have none: "
                        "set data.target_type=multilabel)")


def _row_numbers(mask: pd.Series) -> str:
    """File line numbers (header is line 1) of the True rows, shortened."""
    rows = [str(i + 2) for i in np.flatnonzero(mask.to_numpy())]
    return ", ".join(rows[:MAX_LISTED]) + (f", ... {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else "")


def short(value, limit: int = 40) -> str:
    """repr() of a cell for a message, cut to `limit` characters (a cell can hold a whole file)."""
    text = repr(value.item() if isinstance(value, np.generic) else value)  # 0, not np.int64(0)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def resolve_workers(requested: int) -> int:
    """-1: min(8, CPUs) loader processes beside a GPU; none when the CPU trains, since every worker takes
    cores from the model (bench, resnet18 on 2 cores: 0.92 of the bare loop with 2 workers, 0.955 with 0)."""
    if requested >= 0:
        return requested
    return min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0


def build_loader(dataset: Dataset, cfg: Config, train: bool, batch_size: int, seed: int | None = None) -> DataLoader:
    """Training loaders shuffle through a seeded sampler (call set_epoch) and hand every sample its own
    augmentation seed, so an epoch repeats exactly: after a resume, and with any number of workers or ranks."""
    workers = resolve_workers(cfg.train.num_workers)
    seed = cfg.seed if seed is None else seed
    w = world()  # under torchrun each rank trains on its share and evaluates one contiguous block
    if train:
        drawn: DrawnRows | None = getattr(dataset, "drawn", None)  # pseudo-labelled rows, drawn at their weight
        positions = range(len(dataset) if drawn is None else drawn.epoch_length(len(dataset)))
        shuffle = DistributedSampler(positions, num_replicas=w.size, rank=w.rank, shuffle=True, seed=seed)
        if drawn is not None:
            shuffle = DrawSampler(shuffle, drawn, len(dataset), seed)
        if hasattr(dataset, "lengths"):  # variable-length items (token ids): batches of similar lengths pad less
            shuffle = LengthGroupedSampler(shuffle, dataset.lengths, batch_size, seed)
        sampler = SeededSampler(shuffle, seed)
    elif w.size > 1:
        sampler = ShardSampler(len(dataset), w.rank, w.size)
    else:  # variable-length items are inferred longest first (outputs come back in dataset order)
        sampler = LengthSortedSampler(dataset.lengths) if hasattr(dataset, "lengths") else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        drop_last=train and len(dataset) > batch_size,  # mixup needs even, full batches
        worker_init_fn=_worker_init,
        # Its own generator: starting the workers then draws nothing from torch's global RNG (dropout's), which a
        # resumed run would otherwise consume once more than an uninterrupted one with persistent workers.
        generator=torch.Generator().manual_seed(seed),
        collate_fn=getattr(dataset, "collate", None),  # detection batches hold lists of boxes
    )


def _worker_init(_: int) -> None:
    cv2.setNumThreads(0)  # one decode thread per worker; the workers are the parallelism
