"""What produced a run: resolved config.yaml and meta.json (git sha, argv, package versions, device, seed)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from pipeline.core.config import Config, dump_yaml
from pipeline.core.errors import UserError
from pipeline.core.files import write_json, write_text
from pipeline.runs.rundir import RunDir

PACKAGES = ("torch", "torchvision", "timm", "albumentations", "numpy", "pandas", "scikit-learn", "wandb", "pipeline")


def write_run_header(cfg: Config, stage: str) -> None:
    """Write runs/<exp>/config.yaml and meta.json before a stage does its work; never over an ensemble's."""
    run = RunDir(cfg.run_dir)
    if run.kind() == "ensemble":
        raise UserError(f"{run.path} is an ensemble; give the experiment its own name (name: in its config, or "
                        "--set name=...)")
    write_text(run.config, dump_yaml(cfg))
    write_json(run.meta, collect_meta(cfg, stage))


def collect_meta(cfg: Config, stage: str) -> dict:
    pseudo = RunDir(cfg.run_dir).pseudo
    return {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "git": git_state(),
        "seed": cfg.seed,
        "device": device_description(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        # a pseudo-labelled experiment's source and thresholds (pipeline pseudo), kept through later stages
        **({"pseudo": json.loads(pseudo.read_text())} if cfg.pseudo.source and pseudo.is_file() else {}),
    }


def git_state() -> dict:
    """The commit the code ran from, and whether the tree had uncommitted changes."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None}
    return {"sha": sha or None, "dirty": dirty if sha else None}


def device_description() -> str:
    if torch.cuda.is_available():
        return f"cuda x{torch.cuda.device_count()}: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
