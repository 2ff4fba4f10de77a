"""Masks in and out: Kaggle's run-length encoding, mask image files, and the checks that name the file or row.

RLE as Kaggle writes it: "start length start length ...", starts 1-indexed, pixels numbered down the columns
(column-major, order "F": TGS Salt, Carvana's is row-major "C"); an empty mask is an empty string.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import UserError
from pipeline.data.images import header_size


def rle_encode(mask: np.ndarray, order: str = "F") -> str:
    """The RLE of a 2-D 0/1 mask ("" when empty)."""
    flat = np.asarray(mask, dtype=np.uint8).reshape(-1, order=order)
    padded = np.concatenate([[0], flat, [0]])
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1  # 1-indexed starts and one past each run's end
    edges[1::2] -= edges[::2]
    return " ".join(map(str, edges))


def rle_decode(text, shape: tuple[int, int], order: str = "F", where: str = "") -> np.ndarray:
    """A uint8 0/1 mask of `shape` from an RLE string (NaN or "" -> empty); a malformed run is refused naming
    `where` (the file and row)."""
    mask = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    if not isinstance(text, str) or not text.strip():
        return mask.reshape(shape, order=order)
    try:
        numbers = np.asarray(text.split(), dtype=np.int64)
    except ValueError:
        raise UserError(f"{where}: RLE {text[:40]!r} holds something other than whole numbers") from None
    if len(numbers) % 2:
        raise UserError(f"{where}: RLE has an odd count of numbers ({len(numbers)}); it is pairs of start and length")
    starts, lengths = numbers[::2] - 1, numbers[1::2]
    ends = starts + lengths
    if (starts < 0).any() or (lengths <= 0).any() or (ends > mask.size).any():
        bad = int(np.flatnonzero((starts < 0) | (lengths <= 0) | (ends > mask.size))[0])
        raise UserError(f"{where}: RLE run {bad + 1} (start {starts[bad] + 1}, length {lengths[bad]}) falls outside "
                        f"the {shape[0]}x{shape[1]} image ({mask.size} pixels, starts count from 1)")
    for s, e in zip(starts, ends, strict=True):
        mask[s:e] = 1
    return mask.reshape(shape, order=order)


def read_mask_file(path: Path, values: list[int] | None, size: tuple[int, int]) -> np.ndarray:
    """A mask image as class indices: binary (values None) is any non-zero pixel (16-bit 0/65535 PNGs too);
    multi-class masks hold 0 and the configured class values, refused if they hold another value. Its header
    must say it is its image's (height, width) `size`: checked before a pixel is decoded."""
    if not path.is_file():
        raise UserError(f"mask {path} not found: every training image needs a mask file (an empty one for no mask)")
    h, w = size

    def check(found: tuple[int, int] | None) -> None:  # (width, height) from the header, then from the pixels
        if found is not None and found != (w, h):
            raise UserError(f"mask {path} is {found[0]}x{found[1]} but its image is {w}x{h}; masks must be the "
                            "size of their images")

    check(header_size(path))
    try:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        mask = None
    if mask is None:
        raise UserError(f"mask {path} does not decode; replace it")
    if mask.ndim == 3:
        mask = mask[..., 0]
    check((mask.shape[1], mask.shape[0]))
    if values is None:
        return (mask > 0).astype(np.uint8)
    allowed = np.asarray([0, *values])
    found = np.unique(mask)
    stray = np.setdiff1d(found, allowed)
    if stray.size:
        raise UserError(f"mask {path} holds value(s) {stray[:5].tolist()} besides 0 and the classes' "
                        f"{values} (segment.mask_values); fix the file or the config")
    index = np.zeros(int(allowed.max()) + 1, dtype=np.uint8)
    index[np.asarray(values)] = np.arange(1, len(values) + 1)
    return index[mask]


def channels(indices: np.ndarray, k: int) -> np.ndarray:
    """[k, H, W] 0/1 channels from a class-index mask (channel c is class c + 1)."""
    return (indices[None] == np.arange(1, k + 1)[:, None, None]).astype(np.uint8)
