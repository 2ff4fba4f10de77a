"""Checkpoints: the whole training state in one file, written atomically and loaded without pickle code."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.files import atomic_path


def save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def copy(src: Path, dst: Path) -> None:
    """Copy a just-written checkpoint (last.pt from best.pt): one serialisation, atomic on both ends."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def load(path: Path, mmap: bool = False) -> dict[str, Any]:
    """mmap=True maps tensors lazily: reading a checkpoint's metadata then costs no tensor I/O."""
    # weights_only: our own checkpoints hold only tensors and plain containers, so nothing needs unpickling.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
