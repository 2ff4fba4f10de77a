"""Decoded-image cache: every train and test image decoded and resized once into a uint8 memory-mapped array.

    pipeline prepare -c configs/leaves.yaml --set data.cache=true     (train and predict then read it)

Decoding a PNG/JPEG costs more CPU than a small CNN's step on it; a cached image is a memory read. The
cache is keyed by the image paths, their sizes and mtimes, and the cached side, so a changed file or a
new image.size builds a new one; it is shared by every experiment on the same data (runs/cache/).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from pipeline.files import atomic_path, write_json
from pipeline.images import load_image

log = logging.getLogger(__name__)


class CachedImages:
    """Rows of a cache file, opened lazily so each loader worker maps it itself (nothing large is pickled)."""

    def __init__(self, file: Path, slots: np.ndarray):
        self.file, self.slots, self._array = file, slots, None

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.file, mmap_mode="r")
        return np.array(self._array[self.slots[i]])  # a copy: transforms may write into their input

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def cached_side(size: int, margin: float) -> int:
    """The stored side: image.size plus room for RandomResizedCrop to cut from."""
    return int(round(size * (1 + margin)))


def cache_key(paths: Sequence[Path], side: int) -> str:
    digest = hashlib.sha256(f"{side}\n".encode())
    for p in paths:
        stat = p.stat()
        digest.update(f"{p}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_cache(paths: Sequence[Path], side: int, cache_dir: Path, workers: int = 8) -> tuple[Path, dict[str, int]]:
    """The cache file for these images (built now if missing) and each path's row in it."""
    paths = sorted({Path(p) for p in paths}, key=str)
    key = cache_key(paths, side)
    file, index_file = cache_dir / f"images-{side}px-{key}.npy", cache_dir / f"images-{side}px-{key}.json"
    if not (file.is_file() and index_file.is_file()):
        log.info("decoding %d images into %s (%d x %d x 3 uint8, %.2f GB)", len(paths), file, side, side,
                 len(paths) * side * side * 3 / 1e9)
        with atomic_path(file) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), side, side, 3))
            _fill(array, paths, side, workers)
            del array
        write_json(index_file, [str(p) for p in paths])
    index = {p: i for i, p in enumerate(json.loads(index_file.read_text()))}
    return file, index


def _fill(array: np.ndarray, paths: list[Path], side: int, workers: int) -> None:
    """Decode and resize every image into its row (threads: cv2 releases the GIL while decoding)."""

    def put(i: int) -> None:
        array[i] = cv2.resize(load_image(paths[i]), (side, side), interpolation=cv2.INTER_AREA)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(put, range(len(paths))))
    array.flush()


@lru_cache(maxsize=4)
def _open(paths: tuple[Path, ...], side: int, cache_dir: Path) -> tuple[Path, dict[str, int]]:
    return build_cache(paths, side, cache_dir)


def cached_images(paths: Sequence[Path], all_paths: Sequence[Path], side: int, cache_dir: Path) -> CachedImages:
    """A dataset's images read from the cache of all_paths (train + test), building it on first use."""
    file, index = _open(tuple(all_paths), side, cache_dir)
    return CachedImages(file, np.array([index[str(p)] for p in paths], dtype=np.int64))
