"""`make gpu-wheels`: the wheels a bare, offline GPU machine lacks, downloaded here into gpu-wheels/ to travel with
the tree (`make gpu-check` installs them there with pip --no-index).

The target is assumed to hold a python3 with torch, torchvision, timm, transformers, scikit-learn, pandas, pyarrow,
opencv and typer (and what they need); everything else the pipeline, its GPU tests and `make gpu-check` import is
resolved for the target's Python and platform (pip's metadata, no install here) and fetched as wheels. Pass
`--present FREEZE` (the target's `python3 -m pip freeze`) to skip exactly what it has.

    .venv/bin/python scripts/gpu_wheels.py [--python-version 3.12] [--present freeze.txt] [--out gpu-wheels]

Left out on purpose: wandb (tracking is off in the check; imported only when a run tracks) and numba/llvmlite
(~60 MB; ensemble-boxes imports them only to fuse detection boxes, which the check does not do).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# imported by the pipeline (image and detection paths, folds, export) and the GPU tests
WANTED = ["albumentations", "ensemble-boxes", "iterative-stratification", "nbformat", "pytest"]
# what the target has: the bare machine (torch, torchvision, timm, transformers, scikit-learn, pandas,
# pyarrow, opencv, typer) and what those bring with them
PRESENT = {
    "torch", "torchvision", "timm", "transformers", "scikit-learn", "pandas", "pyarrow", "opencv-python",
    "opencv-python-headless", "typer", "numpy", "scipy", "joblib", "threadpoolctl", "python-dateutil", "pytz",
    "tzdata", "six", "pyyaml", "typing-extensions", "filelock", "jinja2", "markupsafe", "networkx", "sympy", "mpmath",
    "fsspec", "huggingface-hub", "safetensors", "tokenizers", "regex", "requests", "urllib3", "idna", "certifi",
    "charset-normalizer", "tqdm", "packaging", "click", "rich", "shellingham", "markdown-it-py", "mdurl",
    "pygments", "pillow", "triton", "setuptools", "hf-xet",
}
SKIPPED = {"wandb", "numba", "llvmlite"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def present_names(freeze: Path | None) -> set[str]:
    if freeze is None:
        return PRESENT
    names = {canonical(re.split(r"[=<>@ ]", line.strip(), maxsplit=1)[0]) for line in freeze.read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--present", type=Path, help="the target's `pip freeze` (default: the bare machine's set)")
    parser.add_argument("--out", type=Path, default=Path("gpu-wheels"))
    args = parser.parse_args()
    have = present_names(args.present)
    platform = [f"--platform={p}" for p in PLATFORMS]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--ignore-installed",
                        "--only-binary=:all:", f"--python-version={args.python_version}", "--implementation=cp",
                        *platform, "--target", str(Path(tmp) / "t"), "--report", str(report), *WANTED], check=True)
        resolved = [(i["metadata"]["name"], i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]]
        needed = [(n, v) for n, v in resolved if canonical(n) not in have | SKIPPED]
        staging = Path(tmp) / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        f"--python-version={args.python_version}", "--implementation=cp", *platform,
                        "-d", str(staging), *[f"{n}=={v}" for n, v in needed]], check=True)
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(staging, args.out)
    size = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    print(f"{len(needed)} wheels, {size / 2**20:.1f} MB -> {args.out}/ (for Python {args.python_version}):")
    print("  " + ", ".join(f"{n} {v}" for n, v in needed))
    print(f"  left to the target: {', '.join(sorted(canonical(n) for n, _ in resolved if canonical(n) in have))}")


if __name__ == "__main__":
    main()
