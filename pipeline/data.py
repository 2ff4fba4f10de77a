"""Competition tables and images: read CSVs with clear errors, check every image decodes, build loaders."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.config import Config
from pipeline.distributed import ShardSampler, world
from pipeline.errors import UserError
from pipeline.seeding import SeededSampler, seed_transform, unpack

MAX_LISTED = 20  # bad rows printed one per line; the rest are counted


def read_table(path: Path, what: str, id_col: str | None = None) -> pd.DataFrame:
    """Read a competition CSV; a missing, empty or undecodable file is a UserError naming it."""
    if not path.is_file():
        raise UserError(f"{what} {path} not found; check data.root and data.{what} in the config")
    try:
        # ids stay text: "00123" must not become 123 on the way to a file name.
        df = pd.read_csv(path, dtype={id_col: str} if id_col else None)
    except pd.errors.EmptyDataError:
        raise UserError(f"{what} {path} is empty; expected a header row and data rows") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    except pd.errors.ParserError as e:
        raise UserError(f"{what} {path} is not a well-formed CSV: {str(e).strip()}") from None
    if df.empty:
        raise UserError(f"{what} {path} has a header but no rows")
    return df


def require_columns(df: pd.DataFrame, path: Path, columns: dict[str, str | None]) -> None:
    """columns maps config key -> column name; every named column must exist in df."""
    for key, col in columns.items():
        if col is None or col in df.columns:
            continue
        close = difflib.get_close_matches(col, [str(c) for c in df.columns], n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"{path}: column {col!r} (config {key}) not found; columns are {', '.join(map(str, df.columns))}; "
            f"{hint}set it with --set {key}=<column>"
        )


def read_train(cfg: Config) -> pd.DataFrame:
    path = cfg.data_path("train_csv")
    df = read_table(path, "train_csv", cfg.data.id_col)
    d = cfg.data
    require_columns(df, path, {"data.id_col": d.id_col, "data.target_col": d.target_col, "data.group_col": d.group_col})
    _require_clean_ids(df, path, d.id_col)
    missing = df[d.target_col].isna()
    if missing.any():
        rows = _row_numbers(missing)
        raise UserError(f"{path}: {missing.sum()} empty labels in column {d.target_col!r} (rows {rows}); fill or drop them")
    return df


def read_test(cfg: Config) -> pd.DataFrame:
    path = cfg.data_path("test_csv")
    df = read_table(path, "test_csv", cfg.data.id_col)
    require_columns(df, path, {"data.id_col": cfg.data.id_col})
    _require_clean_ids(df, path, cfg.data.id_col)
    return df


def _require_clean_ids(df: pd.DataFrame, path: Path, col: str) -> None:
    empty = df[col].isna()
    if empty.any():
        raise UserError(f"{path}: empty ids in column {col!r} (rows {_row_numbers(empty)})")
    dup = df[col].duplicated(keep=False)
    if dup.any():
        raise UserError(f"{path}: duplicate ids in column {col!r} (rows {_row_numbers(dup)}); ids must be unique")


def _row_numbers(mask: pd.Series) -> str:
    """File line numbers (header is line 1) of the True rows, shortened."""
    rows = [str(i + 2) for i in np.flatnonzero(mask.to_numpy())]
    return ", ".join(rows[:MAX_LISTED]) + (f", ... {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else "")


def image_paths(cfg: Config, ids: Sequence) -> list[Path]:
    base = Path(cfg.data.root) / cfg.data.image_dir
    return [base / f"{i}{cfg.data.image_ext}" for i in ids]


def check_images(paths: Sequence[Path], table: Path, workers: int = 8) -> None:
    """Decode every image once; report all unreadable ones together, by CSV line."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(_image_problem, paths))
    bad = [(i, p, why) for i, (p, why) in enumerate(zip(paths, problems, strict=True)) if why]
    if not bad:
        return
    lines = [f"  line {i + 2}: {p} ({why})" for i, p, why in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    raise UserError(
        f"{table}: {len(bad)} of {len(paths)} images cannot be read; fix or remove these rows "
        f"(or check data.root / data.image_dir / data.image_ext):\n" + "\n".join(lines)
    )


def _image_problem(path: Path) -> str | None:
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated files fail here, not in the middle of training
    except Exception as e:  # PIL raises many types for corrupt data
        return f"does not decode: {type(e).__name__}"
    return None


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 HxWx3 whatever the file holds (grayscale, RGBA, 16-bit are converted)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:  # cv2 cannot read some formats PIL can (e.g. a few TIFF/GIF variants)
        with Image.open(path) as pil:
            return np.asarray(pil.convert("RGB"))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class ImageFiles:
    """Images decoded from disk on every read (pipeline.cache holds them decoded instead)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return load_image(self.paths[i])


class ImageDataset(Dataset):
    """Images (ImageFiles or a cache) with integer labels (-1 for unlabelled rows), through an albumentations transform."""

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[int] | None, transform: Callable):
        self.images = images
        self.labels = np.asarray(labels if labels is not None else [-1] * len(images), dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        i, seed = unpack(key)
        seed_transform(self.transform, seed)
        image = self.transform(image=self.images[i])["image"]
        return image, int(self.labels[i])


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
        shuffle = DistributedSampler(dataset, num_replicas=w.size, rank=w.rank, shuffle=True, seed=seed)
        sampler = SeededSampler(shuffle, seed)
    else:
        sampler = ShardSampler(len(dataset), w.rank, w.size) if w.size > 1 else None
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
