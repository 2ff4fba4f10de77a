"""The export folder's layout and its manifest, in one place: what `pipeline export` writes and `pipeline infer` reads.

    <export>/  manifest.json  inference.ipynb  pipeline-<version>-py3-none-any.whl
      <exp>/     config.yaml folds.json scores.json (text encoders: encoder/, config and tokenizer)
        fold<k>/ model.safetensors recipe.yaml preprocess.json predict.json
      <ens>/     config.yaml folds.json scores.json members.json weights.json   (an ensemble: its members beside it)

Only inference lives here: no optimizer state, no training rows, no OOF predictions. Every file's sha256 is in the
manifest, checked before anything is read, so a half-uploaded Kaggle dataset fails at once and by name.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import __version__
from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file

FORMAT = 1  # of the folder; infer refuses a newer one
MANIFEST = "manifest.json"
WEIGHTS, RECIPE, PREDICT, PREPROCESS = "model.safetensors", "recipe.yaml", "predict.json", "preprocess.json"


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.1.0' -> (0, 1, 0); a local or pre-release suffix is ignored ('0.2.0.dev1' -> (0, 2, 0))."""
    parts = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root except the manifest, by POSIX path relative to root."""
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def read_manifest(root: Path, verify: bool = True) -> dict:
    """The manifest of an export folder, its format and package version checked, and (verify) every file's hash."""
    path = root / MANIFEST
    if not path.is_file():
        raise UserError(f"{root} is not an export: {MANIFEST} not found (make one with `pipeline export EXP`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); export the experiment again") from None
    if manifest.get("format", 0) > FORMAT or version_tuple(manifest.get("package_version", "0")) > \
            version_tuple(__version__):
        raise UserError(f"{root} was exported by pipeline {manifest.get('package_version')} (format "
                        f"{manifest.get('format')}), newer than this one ({__version__}, format {FORMAT}); install "
                        f"the wheel in the export: pip install --no-index --no-deps {root}/{manifest.get('wheel')}")
    if verify:
        check_hashes(root, manifest["files"])
    return manifest


def check_hashes(root: Path, expected: dict[str, str]) -> None:
    """Every file the manifest lists is there with its hash; nothing is read from a damaged export."""
    for name, digest in expected.items():
        path = root / name
        if not path.is_file():
            raise UserError(f"{path} is missing from the export (the manifest lists it); copy the whole folder again")
        if sha256_file(path) != digest:
            raise UserError(f"{path} does not match the manifest's sha256 (changed or partly copied since export); "
                            "copy the whole folder again, or export again")
