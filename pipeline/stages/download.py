"""`pipeline download COMPETITION`: the competition's files through the official Kaggle client, unzipped and checked.

    pipeline download classify-leaves        # -> data/classify-leaves/, then prints the config's data: lines

The files land in a temporary folder that becomes `--to` only when the download and the unzip succeeded: an
interrupted download never leaves a half-filled data folder behind.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.files import replace_folder
from pipeline.runs.kaggle import connect

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def run(competition: str, to: str | Path | None = None, force: bool = False) -> Path:
    folder = Path(to) if to else Path("data") / competition
    if folder.exists() and any(folder.iterdir()) and not force:
        raise UserError(f"{folder} exists and is not empty; pass --force to replace it, or --to another folder")
    client = connect()
    staging = folder.with_name(f".{folder.name}.download")
    shutil.rmtree(staging, ignore_errors=True)  # a killed download's leftovers
    staging.mkdir(parents=True)
    try:
        client.download(competition, staging)
        if not any(staging.iterdir()):
            raise UserError(f"{competition}: Kaggle sent no files; check the competition's Data tab")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_folder(staging, folder)
    log.info("%s -> %s (%d files); the config lines for it follow", competition, folder,
             sum(1 for p in folder.rglob("*") if p.is_file()))
    return folder


def config_lines(folder: Path) -> list[str]:
    """The `data:` lines of a config pointing at the files found; warns about what a pipeline run will miss."""
    tables = sorted(p.name for p in folder.glob("*.csv"))
    sample = _first(tables, "sample_submission") or _first(tables, "submission")
    train, test = _first(tables, "train"), _first(tables, "test")
    if sample is None:
        log.warning("%s has no sample_submission.csv: `pipeline submit` validates against one; set "
                    "data.sample_submission to the file that shows the submission format", folder)
    lines = ["data:", f"  root: {folder}"]
    lines += [f"  {key}: {name}" for key, name in (("train_csv", train), ("test_csv", test),
                                                    ("sample_submission", sample)) if name]
    images = image_folders(folder)
    if images:
        lines.append(f"  image_dir: {images[0]}  # image folders found: {', '.join(images)}")
    return lines


def image_folders(folder: Path) -> list[str]:
    """Top-level folders that hold images (directly or one level down), largest first."""
    counts = {}
    for sub in (p for p in folder.iterdir() if p.is_dir()):
        counts[sub.name] = sum(1 for p in sub.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) + \
            sum(1 for p in sub.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [name for name, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n]


def _first(names: list[str], prefix: str) -> str | None:
    return next((n for n in names if n.lower().startswith(prefix)), None)
