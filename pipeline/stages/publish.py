"""An export on Kaggle: the folder as a (private) dataset, created or versioned, and its inference notebook pushed
bound to that dataset and the competition, so a code competition's final submission is one command.

    pipeline export blend --kaggle-dataset me/blend-export --kaggle-kernel --kaggle classify-leaves

The export folder itself is not touched: the dataset's metadata file and the notebook (its EXPORT path pointing at
/kaggle/input/<slug>) are written into a staging folder of links beside it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.files import write_json
from pipeline.runs.exported import read_manifest
from pipeline.runs.kaggle import connect
from pipeline.runs.notebook import write_notebook

log = logging.getLogger(__name__)
SLUG = re.compile(r"^[A-Za-z0-9_-]+/[a-z0-9-]{6,50}$")  # Kaggle's rule: 6 to 50 of lower-case letters, digits, dashes


def run(export: Path, dataset: str, kernel: bool = False, competition: str | None = None, message: str = "") -> str:
    if not SLUG.match(dataset):
        raise UserError(f"--kaggle-dataset {dataset!r}: write OWNER/SLUG, the slug 6-50 lower-case letters, digits "
                        "or dashes (e.g. me/blend-export)")
    manifest = read_manifest(export)
    competition = competition or manifest.get("competition")
    client = connect()
    with tempfile.TemporaryDirectory(prefix=f".{export.name}.kaggle.", dir=export.parent) as tmp:
        staged = link_folder(export, Path(tmp) / "dataset")
        write_json(staged / "dataset-metadata.json", {"id": dataset, "title": title(dataset),
                                                      "licenses": [{"name": "other"}]})
        url = client.push_dataset(staged, message or f"{manifest['root']} CV {manifest['cv']:.4f}")
        log.info("dataset %s -> %s", dataset, url)
        if not kernel:
            return url
        folder = Path(tmp) / "kernel"
        folder.mkdir()
        slug = dataset.split("/")[1]
        write_notebook(folder / "inference.ipynb", {**manifest, "competition": competition}, dataset=slug)
        owner, name = dataset.split("/")[0], f"{slug}-inference"[:50]
        write_json(folder / "kernel-metadata.json", {
            "id": f"{owner}/{name}", "title": name, "code_file": "inference.ipynb", "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": False, "enable_internet": False,
            "dataset_sources": [dataset], "competition_sources": [competition] if competition else []})
        notebook = client.push_kernel(folder)
        log.info("notebook %s/%s -> %s (runs on Kaggle; submit its output from the competition's page)", owner,
                 name, notebook)
        return notebook


def link_folder(source: Path, dest: Path) -> Path:
    """dest/ holding a symlink to every entry of source (nothing is copied); a system without symlinks copies."""
    dest.mkdir()
    for entry in source.iterdir():
        try:
            os.symlink(entry.resolve(), dest / entry.name, target_is_directory=entry.is_dir())
        except OSError:
            (shutil.copytree if entry.is_dir() else shutil.copyfile)(entry, dest / entry.name)
    return dest


def title(dataset: str) -> str:
    """A dataset title from its slug, within Kaggle's 6-50 characters."""
    return dataset.split("/")[1].replace("-", " ")[:50].ljust(6, "_")
