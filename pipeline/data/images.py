"""Competition images, shared by the image tasks: paths from ids, decoding any file to RGB, checks, hashes, sizes."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from pipeline.core.config import Config, ImageConfig
from pipeline.core.errors import UserError
from pipeline.core.seeding import seed_transform, unpack
from pipeline.data.duplicates import file_hashes
from pipeline.data.tables import MAX_LISTED, read_test

MAX_PIXELS = ImageConfig.max_pixels  # image.max_pixels's default, for readers given no config
# the limit is image.max_pixels, checked from the header before every decode (pixels_over): Pillow's own guard
# would raise at open, before the size can be read or named, and ignore the configured limit
Image.MAX_IMAGE_PIXELS = None


def image_paths(cfg: Config, ids: Sequence) -> list[Path]:
    """root/image_dir/<id><image_ext> per id (root/test_image_dir/... where that is set and the first is not there);
    an id that leads outside data.root is refused (allow_outside_root)."""
    base = Path(cfg.data.root) / cfg.data.image_dir
    paths = [base / f"{i}{cfg.data.image_ext}" for i in ids]
    if cfg.data.test_image_dir is not None:  # test images in a folder of their own: where the file is not in base
        other = Path(cfg.data.root) / cfg.data.test_image_dir
        paths = [p if p.is_file() else other / f"{i}{cfg.data.image_ext}" for i, p in zip(ids, paths, strict=True)]
    if not cfg.data.allow_outside_root:
        root = os.path.abspath(cfg.data.root)
        for n, (i, path) in enumerate(zip(ids, paths, strict=True)):
            if os.path.commonpath([root, os.path.abspath(path)]) != root:  # abspath folds "..": no disk access
                raise UserError(f"id {i!r} (row {n + 2}) leads to {path}, outside data.root {root}; ids are paths "
                                "inside the competition folder (set data.allow_outside_root=true if you mean it)")
    return paths


def read_test_images(cfg: Config, check: bool = False) -> pd.DataFrame:
    """test.csv, one row per image; check=True decodes every image (prepare does)."""
    test = read_test(cfg)
    paths = image_paths(cfg, test[cfg.data.id_col])
    if check and cfg.data.check_images:
        check_images(paths, cfg.data_path("test_csv"), max_pixels=cfg.image.max_pixels)
    return test


def image_hashes(cfg: Config, table: pd.DataFrame) -> list[str]:
    """A content hash per row (its image file's bytes), for duplicate detection at prepare."""
    return file_hashes(image_paths(cfg, table[cfg.data.id_col]))


def image_drift_features(cfg: Config, table: pd.DataFrame, split: str) -> pd.DataFrame:
    """Adversarial validation's features of each row's image (pipeline.data.drift.image_features)."""
    from pipeline.data.drift import image_features

    return image_features(image_paths(cfg, table[cfg.data.id_col]))


def image_sizes(paths: Sequence[Path], workers: int = 8) -> pd.DataFrame:
    """width, height and mode per image file, from its header alone (no pixel is decoded)."""
    def header(path: Path) -> tuple[int, int, str]:
        with Image.open(path) as img:  # lazy: PIL reads the pixels only on load()
            return (*img.size, img.mode)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(header, paths))
    return pd.DataFrame(rows, columns=["width", "height", "mode"])


def check_images(paths: Sequence[Path], table: Path, workers: int = 8, max_pixels: int = MAX_PIXELS) -> None:
    """Decode every image once (those within max_pixels); report all unreadable ones together, by CSV line."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(lambda p: _image_problem(p, max_pixels), paths))
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


def _image_problem(path: Path, max_pixels: int) -> str | None:
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty file"
    if too_large := pixels_over(path, max_pixels):
        return too_large
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated files fail here, not in the middle of training
    except Exception as e:  # PIL raises many types for corrupt data
        return f"does not decode: {e}"
    return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the image's size
JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header alone, None where it cannot be read. PNG (its IHDR chunk, always the
    first: Pillow refuses a PNG with a huge text chunk before it, which OpenCV would decode) and JPEG (its frame
    marker) are read here, in a few small reads (the check runs before every decode); other formats by Pillow.
    Formats Pillow does not know are left to OpenCV's own limit (2^30 pixels)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head[:2] == b"\xff\xd8" and (size := _jpeg_size(f)):
                return size
        with Image.open(path) as img:  # lazy: PIL reads the pixels only on load()
            return img.size
    except Exception:  # PIL raises many types for files it does not know
        return None


def _jpeg_size(f) -> tuple[int, int] | None:
    """A JPEG's (width, height) from its first frame marker, the segments before it skipped; None if not found
    within 64 segments (Pillow then reads it)."""
    f.seek(2)
    for _ in range(64):
        marker = f.read(4)
        if len(marker) < 4 or marker[0] != 0xFF:
            return None
        if marker[1] == 0xFF:  # a fill byte before the marker
            f.seek(-3, 1)
            continue
        if marker[1] in JPEG_FRAMES:
            height, width = struct.unpack(">xHH", f.read(5))
            return width, height
        f.seek(struct.unpack(">H", marker[2:])[0] - 2, 1)
    return None


def pixels_over(path: Path, max_pixels: int) -> str | None:
    """Why the image is refused unread, when its header declares more than max_pixels (0: no limit); None when
    it does not. Only the header is read: a decompression bomb is caught at its size, not at its decode."""
    size = header_size(path) if max_pixels else None
    if size is None:  # no limit, or a header nothing here reads: OpenCV's own decoder limit (2^30 pixels) stands
        return None
    width, height = size
    if width * height <= max_pixels:
        return None
    return (f"{width}x{height} pixels, over image.max_pixels {max_pixels:,}: decoded it takes "
            f"{width * height * 3 / 2**20:,.0f} MB; drop its row, or raise image.max_pixels if it is genuine")


def load_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3 whatever the file holds: gray is repeated, alpha dropped, 16-bit scaled (value >> 8).
    An image whose header declares more than max_pixels is refused before it is decoded."""
    if not Path(path).is_file():  # prepare checked it; it went missing since, or folds.csv names other images
        raise UserError(f"image {path} not found; check data.root, or rerun `pipeline prepare --force`")
    if too_large := pixels_over(path, max_pixels):
        raise UserError(f"image {path} is {too_large}")
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # IMREAD_COLOR: 3 channels, 8 bits, whatever the file
    except cv2.error as e:  # OpenCV's own limits (2^30 pixels) and decoder failures
        raise UserError(f"image {path} does not decode (OpenCV: {str(e).strip().splitlines()[-1]}); replace it, "
                        "or drop its row and rerun `pipeline prepare --force`") from None
    if img is not None:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    try:  # cv2 cannot read some formats PIL can (e.g. a few TIFF/GIF variants)
        with Image.open(path) as pil:
            return _pil_rgb(pil)
    except Exception as e:  # PIL raises many types for corrupt data
        raise UserError(f"image {path} does not decode ({type(e).__name__}); replace it, or drop its row and "
                        "rerun `pipeline prepare --force`") from None


def _pil_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 from PIL; its convert("RGB") would clip 16- and 32-bit integer images at 255."""
    if not img.mode.startswith("I"):
        return np.asarray(img.convert("RGB"))
    values = np.clip(np.asarray(img).astype(np.int64), 0, None)
    bits = 16 if img.mode.startswith("I;16") or values.max() < 1 << 16 else 32  # 32-bit TIFFs mostly hold 16-bit data
    return np.repeat((values >> (bits - 8)).astype(np.uint8)[..., None], 3, axis=2)


class ImageFiles:
    """Images decoded from disk on every read (pipeline.data.cache holds them decoded instead)."""

    def __init__(self, paths: Sequence[Path], max_pixels: int = MAX_PIXELS):
        self.paths, self.max_pixels = list(paths), max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return load_image(self.paths[i], self.max_pixels)


class ImageDataset(Dataset):
    """Images (ImageFiles or a cache) with their truths (class ids, 0/1 tag rows or values; -1 for unlabelled rows),
    through an albumentations transform."""

    def __init__(self, images: Sequence[np.ndarray], labels: np.ndarray | None, transform: Callable):
        self.images = images
        self.labels = np.asarray(labels) if labels is not None else np.full(len(images), -1, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = unpack(key)
        seed_transform(self.transform, seed)
        image = self.transform(image=self.images[i])["image"]
        return image, torch.as_tensor(self.labels[i])

    @staticmethod
    def collate(batch: list) -> list:
        """default_collate with the images stacked in the order their bytes lie: items are [C, H, W] views of
        [H, W, C] arrays (ToTensorV2), which a plain stack gathers element by element and to_device then turned back
        into channels_last. Stacked as [H, W, C] each is one copy; the batch is [B, C, H, W] in channels_last memory."""
        images, *rest = default_collate([(item[0].permute(1, 2, 0), *item[1:]) for item in batch])
        return [images.permute(0, 3, 1, 2), *rest]
