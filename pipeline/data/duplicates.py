"""Exact duplicates: samples whose content is byte-identical, within train and between train and test.

A duplicate split across folds validates a model on a sample it trained on, inflating CV; a test sample
that is a copy of a training sample is worth knowing about (its train label is in duplicates.csv).
prepare writes runs/<exp>/duplicates.csv and keeps each cluster of train duplicates in one fold.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)


def file_hash(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(paths: Sequence[Path], workers: int = 8) -> list[str]:
    """Content hash per file (threads: hashing releases the GIL, and the files are mostly in the page cache)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_hash, paths))


def text_hashes(texts: Sequence[str]) -> list[str]:
    return [hashlib.blake2b(str(t).encode("utf-8"), digest_size=16).hexdigest() for t in texts]


def report(train_ids: Sequence, train_hashes: Sequence[str], labels: Sequence,
           test_ids: Sequence, test_hashes: Sequence[str]) -> pd.DataFrame:
    """Rows of every duplicated sample: hash, split (train/test), id, label (test rows: None), sorted by hash."""
    train = pd.DataFrame({"hash": train_hashes, "split": "train", "id": list(train_ids), "label": list(labels)})
    test = pd.DataFrame({"hash": test_hashes, "split": "test", "id": list(test_ids), "label": None})
    both = pd.concat([train, test], ignore_index=True)
    in_train = set(train["hash"][train["hash"].duplicated(keep=False)])
    shared = set(train["hash"]) & set(test["hash"])
    keep = both["hash"].isin(in_train | shared)
    return both[keep].sort_values(["hash", "split", "id"], kind="stable").reset_index(drop=True)


def summarise(found: pd.DataFrame) -> list[str]:
    """One log line per finding, with counts and the first examples."""
    lines = []
    train = found[found["split"] == "train"]
    clusters = train.groupby("hash")
    dup_train = clusters.filter(lambda g: len(g) > 1)
    if len(dup_train):
        conflicting = [h for h, g in dup_train.groupby("hash") if g["label"].nunique() > 1]
        example = ", ".join(dup_train.groupby("hash")["id"].apply(lambda s: " = ".join(map(str, s.head(3)))).head(2))
        groups = dup_train["hash"].nunique()
        lines.append(f"{len(dup_train)} train samples are exact duplicates of each other: {groups} "
                     f"group{'s' * (groups != 1)}, {len(conflicting)} with different labels (e.g. {example}); "
                     "each group is kept in one fold")
    test = found[found["split"] == "test"]
    in_train = test[test["hash"].isin(set(train["hash"]))]
    if len(in_train):
        lines.append(f"{len(in_train)} test samples are exact copies of train samples (e.g. {', '.join(map(str, in_train['id'].head(3)))})")
    return lines


def merge_groups(hashes: Sequence[str], groups: Sequence | None) -> np.ndarray:
    """Component id per row: rows sharing a hash, or a group, are connected (transitively)."""
    hash_codes, _ = pd.factorize(pd.Series(list(hashes)))
    n = len(hash_codes)
    group_codes = pd.factorize(pd.Series(list(groups)))[0] if groups is not None else np.arange(n)
    # Bipartite graph rows -> hash nodes and rows -> group nodes; its components are the fold units.
    cols = np.concatenate([n + hash_codes, n + hash_codes.max() + 1 + group_codes])
    rows = np.concatenate([np.arange(n), np.arange(n)])
    size = n + hash_codes.max() + 1 + group_codes.max() + 1
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels[:n])[0]
