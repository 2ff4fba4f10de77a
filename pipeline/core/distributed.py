"""Data-parallel training under torchrun, and a lock per fold so independent workers never share a fold.

    torchrun --standalone --nproc_per_node=2 -m pipeline train --config C --fold 0     (make train GPUS=2)
    pipeline train --fold all --on ray     # every fold a Ray task (pipeline.runs.executor); locks keep folds apart

One process per device: NCCL on CUDA, gloo on CPU. Every rank computes the same validation score from
the gathered outputs; only rank 0 writes files or talks to W&B.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def init() -> World:
    """Join the process group torchrun describes in the environment; a plain process is a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or dist.is_initialized():
        return world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world()


def device() -> torch.device:
    return torch.device("cuda", world().local_rank) if torch.cuda.is_available() else torch.device("cpu")


def mean(value: float) -> float:
    """The mean of a float over ranks (the value itself in a world of one)."""
    if world().size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return float(t.item()) / world().size


def total(value: int) -> int:
    if world().size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device())
    dist.all_reduce(t)
    return int(t.item())


def broadcast(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if world().size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world().size > 1:
        dist.barrier()


class ShardSampler(Sampler):
    """Contiguous, unpadded shards for inference: rank r gets one block, so concatenating the ranks'
    outputs in rank order restores the dataset order exactly (DistributedSampler pads and interleaves)."""

    def __init__(self, n: int, rank: int, size: int):
        per = -(-n // size)
        self.indices = range(min(n, rank * per), min(n, (rank + 1) * per))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def gather_chunks(chunks: list, loader) -> list:
    """Per-batch outputs of every rank, in dataset order, when the loader was sharded; else unchanged."""
    if world().size == 1 or not isinstance(loader.sampler, ShardSampler):
        return chunks
    parts = [None] * world().size
    dist.all_gather_object(parts, chunks)
    return [c for part in parts for c in part]


RELEASED = ""  # FoldLock._stale_text: the lock file went away (no lock is ever empty text: it holds JSON)


class FoldLock:
    """A fold's train.lock, created exclusively: a second worker on the same runs/ sees it and moves on.

    The holder touches the file every HEARTBEAT seconds. A lock is stale, and taken over, when its process is gone
    (same host, dead pid), when it was written by an earlier attempt of the same Ray task (a retry after the worker
    or its node died), or when its heartbeat stopped for STALE seconds (a host that died, wherever it was). A live
    holder's lock is respected.
    """

    HEARTBEAT, STALE = 30.0, 120.0

    def __init__(self, path: Path, ray_task: str = ""):
        self.path, self.ray_task = path, ray_task  # the Ray task id of the holder ("" outside Ray)
        self.held, self._text = False, ""
        self._stop = threading.Event()

    def acquire(self) -> bool:
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "ray_task": self.ray_task})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                seen = self._stale_text()
                if seen is None:
                    return False  # a live holder
                if seen == RELEASED:
                    continue  # gone between our attempt and the read: the exclusive create decides
                if self._take_over(seen, me):
                    return self._hold(me)
                continue  # another worker took it over, or it was released: try again
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return self._hold(me)
        return False

    def _take_over(self, seen: str, me: str) -> bool:
        """Replace the stale lock whose text is `seen` with ours. Every worker that judged that lock stale races
        for one marker named after it (created exclusively), so exactly one replaces it; the lock file is never
        missing meanwhile (os.replace), and a late contender sees a text other than `seen` and backs off."""
        marker = self.path.with_name(f"{self.path.name}.takeover-{hashlib.sha1(seen.encode()).hexdigest()[:16]}")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - marker.stat().st_mtime > self.STALE:  # a contender died mid-takeover
                    marker.unlink()
            return False
        try:
            try:
                if self.path.read_text() != seen:
                    return False  # taken over already, or released and taken afresh
            except FileNotFoundError:
                return False  # released: the exclusive create decides
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(me)
            os.replace(tmp, self.path)
            return True
        finally:
            marker.unlink()

    def _hold(self, text: str) -> bool:
        self.held, self._text = True, text
        self._stop.clear()
        threading.Thread(target=self._beat, daemon=True, name=f"heartbeat {self.path}").start()
        return True

    def owner(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"{info['host']} pid {info['pid']}"
        except (OSError, ValueError, KeyError):
            return "another worker"

    def info(self) -> dict:
        """The holder as the file says ({} when there is none or it cannot be read)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def _stale_text(self) -> str | None:
        """The lock's text when it is stale (its holder is gone), None when a live holder has it, RELEASED when
        there is no lock any more."""
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return RELEASED
        except OSError:
            return None
        try:
            info = json.loads(text)
        except ValueError:
            info = None
        if not isinstance(info, dict):  # being written right now, or left half-written by a worker that died
            return text if age > self.STALE else None
        return text if self._gone(info, age) else None

    def _gone(self, info: dict, age: float) -> bool:
        if self.ray_task and info.get("ray_task") == self.ray_task:
            return True  # our own earlier attempt: Ray retried this task after its worker died
        if age > self.STALE:
            return True  # nobody has touched it for minutes: its holder is gone, on whichever host
        if info.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError):
            return False
        return False

    def release(self) -> None:
        self._stop.set()
        if self.held:
            with contextlib.suppress(OSError):
                if self.path.read_text() == self._text:  # ours still (not taken over while we looked dead)
                    self.path.unlink()
            self.held = False
