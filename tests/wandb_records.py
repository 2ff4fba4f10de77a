"""Read what an offline W&B run recorded, from its run-<id>.wandb file, without W&B's server.

The file is W&B's transaction log: a 7-byte header, then 32 KiB blocks of LevelDB-style records (4-byte CRC,
2-byte length, 1-byte type: full, first, middle, last), each holding one protobuf `Record` of wandb.proto.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK, HEADER, CHUNK = 32768, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data, found, pending, pos = Path(path).read_bytes(), [], b"", HEADER
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    while pos + CHUNK <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + CHUNK:pos + CHUNK + length], pos + CHUNK + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            found.append(record)
            pending = b""
        else:
            pending = chunk if kind == FIRST else pending + chunk
    return found


def run_file(folder: Path, settle: float = 1.0, timeout: float = 60.0) -> Path:
    """The run's transaction log, once W&B's service has stopped writing it: `run.finish()` can return before the
    service has written the last records (an artifact), so wait until the size holds for `settle` seconds."""
    (path,) = Path(folder).glob("run-*.wandb")
    deadline, size, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        now = path.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
        time.sleep(0.1)
    return path


def summary(folder: Path) -> dict:
    """The run's summary as its last updates left it."""
    values = {}
    for record in records(run_file(folder)):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                values[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return values


def logged_keys(folder: Path) -> dict[str, str]:
    """Every key the run logged with `run.log`, with the W&B type of its value (`table-file` for a table; "" for a
    number). W&B records a media value as one item per leaf (`oof/per_class/_type`, `.../path`, ...)."""
    keys = {}
    for record in records(run_file(folder)):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                path, value = item.key or "/".join(item.nested_key), json.loads(item.value_json)
                if path.endswith("/_type"):
                    keys[path.removesuffix("/_type")] = value
                elif isinstance(value, dict) and "_type" in value:
                    keys[path] = value["_type"]
                elif not item.nested_key:
                    keys.setdefault(path, "")
    return keys


def artifacts(folder: Path) -> list[dict]:
    """The artifacts the run logged: name, type, metadata, and the paths in its manifest."""
    found = []
    for record in records(run_file(folder)):
        if record.WhichOneof("record_type") == "artifact":
            a = record.artifact
            found.append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                          "files": sorted(entry.path for entry in a.manifest.contents)})
    return found
