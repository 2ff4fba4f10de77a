"""Decoded-image cache: every train and test image decoded once into a uint8 memory-mapped array.

    pipeline prepare -c configs/leaves.yaml --set data.cache=true     (train and predict then read it)

Decoding a PNG/JPEG costs more CPU than a small CNN's step on it; a cached image is a memory read. The model
must see what it would see from the files: each image keeps its aspect ratio, and is shrunk only when its long
side exceeds what the smallest random crop needs to stay at full resolution (cached_side), never enlarged. The
cache is keyed by the image paths, their sizes and mtimes, and that side, so a changed file or a new image.size
builds a new one; it is shared by every experiment on the same data (runs/cache/).
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

from pipeline.core.files import atomic_path, write_json
from pipeline.data.images import MAX_PIXELS, image_sizes, load_image

log = logging.getLogger(__name__)


class CachedImages:
    """Rows of a cache file, opened lazily so each loader worker maps it itself (nothing large is pickled)."""

    def __init__(self, file: Path, slots: np.ndarray, shapes: np.ndarray):
        self.file, self.slots, self.shapes, self._array = file, slots, shapes, None

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.file, mmap_mode="r")
        h, w = self.shapes[i]
        return np.array(self._array[self.slots[i], :h, :w])  # a copy: transforms may write into their input

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


def cached_side(size: int, scale_min: float, margin: float = 0.0) -> int:
    """The longest side kept: RandomResizedCrop's smallest crop (area scale_min, aspect up to 4:3) still spans
    image.size pixels on its short side, so no crop is upsampled from a shrunken copy (x (1 + margin) on top)."""
    return int(np.ceil(size / np.sqrt(0.75 * scale_min) * (1 + margin)))


def stored_shape(h: int, w: int, side: int) -> tuple[int, int]:
    """An image's shape in the cache: shrunk to a long side of `side` if it is longer, else as it is."""
    scale = min(1.0, side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def cache_key(paths: Sequence[Path], side: int) -> str:
    digest = hashlib.sha256(f"{side}\n".encode())
    for p in paths:
        stat = p.stat()
        digest.update(f"{p}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_cache(paths: Sequence[Path], side: int, cache_dir: Path, workers: int = 8,
                max_pixels: int = MAX_PIXELS) -> tuple[Path, dict[str, int]]:
    """The cache file for these images (built now if missing) and each path's row in it. Rows are slots of the
    largest stored shape; each image's own shape is in the shapes file beside it."""
    paths = sorted({Path(p) for p in paths}, key=str)
    key = cache_key(paths, side)
    stem = cache_dir / f"images-{side}px-{key}"
    file, index_file, shapes_file = stem.with_suffix(".npy"), stem.with_suffix(".json"), Path(f"{stem}-shapes.npy")
    if not (file.is_file() and index_file.is_file() and shapes_file.is_file()):
        headers = image_sizes(paths, workers)
        shapes = np.array([stored_shape(h, w, side) for w, h in zip(headers["width"], headers["height"], strict=True)],
                          dtype=np.int64).reshape(-1, 2)
        slot = (int(shapes[:, 0].max()), int(shapes[:, 1].max())) if len(shapes) else (1, 1)
        log.info("decoding %d images into %s (%d x %d x 3 uint8 slots, %.2f GB)", len(paths), file, *slot,
                 len(paths) * slot[0] * slot[1] * 3 / 1e9)
        with atomic_path(file) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *slot, 3))
            _fill(array, paths, shapes, workers, max_pixels)
            del array
        with atomic_path(shapes_file) as tmp, open(tmp, "wb") as f:
            np.save(f, shapes)
        write_json(index_file, [str(p) for p in paths])  # last: it marks a finished cache
    index = {p: i for i, p in enumerate(json.loads(index_file.read_text()))}
    return file, index


def _fill(array: np.ndarray, paths: list[Path], shapes: np.ndarray, workers: int, max_pixels: int) -> None:
    """Decode (and shrink, if needed) every image into its slot (threads: cv2 releases the GIL while decoding)."""

    def put(i: int) -> None:
        image, (h, w) = load_image(paths[i], max_pixels), shapes[i]
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (int(w), int(h)), interpolation=cv2.INTER_AREA)
        array[i, :h, :w] = image

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(put, range(len(paths))))
    array.flush()


@lru_cache(maxsize=4)
def _open(paths: tuple[Path, ...], side: int, cache_dir: Path, max_pixels: int) -> tuple[Path, dict[str, int]]:
    return build_cache(paths, side, cache_dir, max_pixels=max_pixels)


def cached_images(paths: Sequence[Path], all_paths: Sequence[Path], side: int, cache_dir: Path,
                  max_pixels: int = MAX_PIXELS) -> CachedImages:
    """A dataset's images read from the cache of all_paths (train + test), building it on first use."""
    file, index = _open(tuple(all_paths), side, cache_dir, max_pixels)
    slots = np.array([index[str(p)] for p in paths], dtype=np.int64)
    shapes = np.load(Path(str(file).removesuffix(".npy") + "-shapes.npy"))
    return CachedImages(file, slots, shapes[slots] if len(slots) else shapes[:0])
