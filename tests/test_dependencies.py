"""Dependency floors that exclude releases with a known code-execution (or data-leak) bug in what the pipeline reads
from other people's files: weights, parquet, images, model folders. A floor lowered in pyproject.toml, or an
environment holding an older release, fails here."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# distribution: (the first fixed release, the last vulnerable one, why)
FIXED = {
    "torch": ("2.6", "2.5.1", "CVE-2025-32434: weights_only=True loads could run code"),
    "pyarrow": ("14.0.1", "14.0.0", "CVE-2023-47248: a parquet file could unpickle arbitrary objects"),
    "opencv-python-headless": ("4.8.1.78", "4.8.0.76", "CVE-2023-4863: libwebp heap overflow"),
    "pillow": ("10.3", "10.2.0", "CVE-2024-28219 buffer overflow; CVE-2023-50447 before 10.2"),
    "transformers": ("4.48", "4.47.1", "CVE-2024-11392/11393/11394: untrusted deserialisation"),
    "tqdm": ("4.66.3", "4.66.2", "CVE-2024-34062: CLI arguments evaluated"),
    "scikit-learn": ("1.5", "1.4.2", "CVE-2024-5206: TfidfVectorizer stored its training tokens"),
    "setuptools": ("70", "69.5.1", "CVE-2024-6345: code execution through package_index"),
}


def declared() -> dict[str, Requirement]:
    """Every requirement pyproject.toml declares (dependencies, extras, build system), by normalised name."""
    project = tomllib.loads(PYPROJECT.read_text())
    lines = [*project["project"]["dependencies"], *project["build-system"]["requires"],
             *(r for extra in project["project"]["optional-dependencies"].values() for r in extra)]
    return {Requirement(r).name.lower(): Requirement(r) for r in lines}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_the_floor_excludes_the_last_vulnerable_release(name):
    fixed, vulnerable, why = FIXED[name]
    requirement = declared().get(name)
    assert requirement is not None, f"{name} is not declared in pyproject.toml ({why})"
    assert not requirement.specifier.contains(vulnerable, prereleases=True), f"{requirement} admits {vulnerable}: {why}"
    assert requirement.specifier.contains(fixed), f"{requirement} excludes the fixed release {fixed}"


def test_installed_versions_meet_every_declared_floor():
    """The environment the tests run in holds no release below what pyproject.toml declares (a stale .venv, a
    platform wheel pinned lower): checked for every installed dependency, not only the ones above."""
    below = []
    for name, requirement in declared().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment did not install
        if not requirement.specifier.contains(Version(installed), prereleases=True):
            below.append(f"{name} {installed} (pyproject.toml: {requirement})")
    assert not below, "installed below the declared floor: " + "; ".join(below)
