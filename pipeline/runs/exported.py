"""The export folder's layout and its manifest, in one place: what `pipeline export` writes and `pipeline infer` reads.

    <export>/  manifest.json  inference.ipynb  pipeline-<version>-py3-none-any.whl
      <exp>/     config.yaml folds.json scores.json (text encoders: encoder/, config and tokenizer)
        fold<k>/ model.safetensors recipe.yaml preprocess.json predict.json
      <ens>/     config.yaml folds.json scores.json members.json weights.json   (an ensemble: its members beside it)

Only inference lives here: no optimizer state, no training rows, no OOF predictions. Every file's sha256 is in the
manifest, checked before anything is read, so a half-uploaded Kaggle dataset fails at once and by name; a file the
manifest does not list, a node outside the folder or a malformed manifest is refused the same way.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pipeline import __version__
from pipeline.core.config import NAME
from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file
from pipeline.runs.rundir import FULL, RunDir

FORMAT = 1  # of the folder; infer refuses a newer one
MANIFEST = "manifest.json"
WEIGHTS, RECIPE, PREDICT, PREPROCESS = "model.safetensors", "recipe.yaml", "predict.json", "preprocess.json"
SHA256 = re.compile(r"[0-9a-f]{64}")
# files nothing reads that others add to a folder: the Kaggle client's metadata (pipeline publish uploads it),
# Jupyter's checkpoints of the opened notebook, macOS's folder files and a zip's resource forks
ADDED_BY_OTHERS = {"dataset-metadata.json", ".DS_Store"}
ADDED_FOLDERS = {".ipynb_checkpoints", "__MACOSX"}


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
    """The manifest of an export folder, its structure, format and package version checked, and (verify) every
    file in the folder checked against it: listed, with its hash. An export comes from someone else (a Kaggle
    dataset, a teammate's copy): nothing in it is read before this passes."""
    path = root / MANIFEST
    if not path.is_file():
        raise UserError(f"{root} is not an export: {MANIFEST} not found (make one with `pipeline export EXP`)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # bad JSON or text, numbers past Python's digit limit, deep nesting
        raise UserError(f"{path} is not a readable manifest ({type(e).__name__}: {str(e)[:200]}); export the "
                        "experiment again") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a manifest (a JSON object); export the experiment again")
    if not isinstance(manifest.get("format", 0), int) or manifest.get("format", 0) > FORMAT or \
            version_tuple(str(manifest.get("package_version", "0"))) > version_tuple(__version__):
        raise UserError(f"{root} was exported by pipeline {manifest.get('package_version')} (format "
                        f"{manifest.get('format')}), newer than this one ({__version__}, format {FORMAT}); install "
                        f"the wheel in the export: pip install --no-index --no-deps {root}/{manifest.get('wheel')}")
    check_structure(path, manifest)
    if verify:
        check_hashes(root, manifest["files"])
    return manifest


def _plain_path(name: str) -> bool:
    """A relative POSIX path of plain names (no '..', no NUL, none longer than a file name may be)."""
    parts = name.split("/")
    return all(p and p not in (".", "..") and "\0" not in p and "\\" not in p and len(p.encode()) <= 255
               for p in parts)


def _plain_name(value) -> bool:
    """One folder or file name: no separator, not '.' or '..', nothing a shell or a path would read otherwise."""
    return isinstance(value, str) and NAME.fullmatch(value) is not None and value not in (".", "..")


def check_structure(path: Path, manifest: dict) -> None:
    """The keys infer and the notebook read, with the types they read them as; node names, the root and the wheel
    plain names (a node is a folder of the export: `../x` would read outside it)."""
    def bad(what: str) -> UserError:
        return UserError(f"{path}: {what}; the export is damaged or was edited: export the experiment again")

    files, nodes, top = manifest.get("files"), manifest.get("nodes"), manifest.get("root")
    if not isinstance(files, dict) or not files or not all(
            isinstance(k, str) and isinstance(v, str) and SHA256.fullmatch(v) and _plain_path(k)
            for k, v in files.items()):
        raise bad('"files" must map every file of the export (plain relative paths) to its sha256')
    if not isinstance(nodes, dict) or not nodes:
        raise bad('"nodes" must describe the exported run directories')
    for name, node in nodes.items():
        if problem := _node_problem(name, node, nodes):
            raise bad(problem)
    if not isinstance(top, str) or top not in nodes:
        raise bad(f'"root" {top!r} is not one of its nodes')
    _acyclic(top, nodes, bad)
    if problem := next(filter(None, (_missing(n, node, files) for n, node in nodes.items())), None) or \
            _other_problem(manifest, files):
        raise bad(problem)


def _other_problem(manifest: dict, files: dict) -> str | None:
    """The wheel, the scores and the test columns, as the notebook and infer read them."""
    wheel, digest, columns = manifest.get("wheel"), manifest.get("wheel_sha256"), manifest.get("test_columns")
    if wheel is not None and not (_plain_name(wheel) and wheel.endswith(".whl") and wheel in files):
        return f'"wheel" {wheel!r} is not a wheel file listed in "files"'
    if digest is not None and not (isinstance(digest, str) and SHA256.fullmatch(digest)):
        return '"wheel_sha256" must be a sha256'
    if not isinstance(manifest.get("metric"), str) or type(manifest.get("cv")) not in (int, float):
        return '"metric" and "cv" are missing'
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        return '"test_columns" must be a list of column names'
    return None


def _node_problem(name, node, nodes: dict) -> str | None:
    if not _plain_name(name):
        return f"node {name!r} is not a plain folder name"
    if not isinstance(node, dict) or node.get("kind") not in ("experiment", "ensemble"):
        return f"node {name!r} has no kind (experiment or ensemble)"
    if node["kind"] == "ensemble":
        members = node.get("members")
        if not isinstance(members, list) or not members or not all(
                isinstance(m, str) and m in nodes and m != name for m in members) or len(set(members)) < len(members):
            return f"ensemble {name!r} must list distinct members that are nodes of the export"
        return None
    folds = node.get("folds")
    if not isinstance(folds, list) or not folds or not all(_fold_entry(f) for f in folds) or \
            len({str(f["k"]) for f in folds}) < len(folds):
        return f"experiment {name!r} must list its folds (distinct k, views, seconds per view)"
    return None


def _missing(name: str, node: dict, files: dict) -> str | None:
    """The files infer reads for this node, where the manifest does not list one."""
    needed = ["config.yaml", "folds.json", "scores.json"]
    if node["kind"] == "ensemble":
        needed += ["members.json", "weights.json"]
    else:
        needed += [f"{RunDir(Path(name)).fold(f['k']).path.name}/{n}" for f in node["folds"]
                   for n in (WEIGHTS, RECIPE, PREDICT)]
    absent = [n for n in needed if f"{name}/{n}" not in files]
    return f"node {name!r} lacks {absent[:3]} in \"files\"" if absent else None


def _fold_entry(f) -> bool:
    """{k: a fold number or "full", views: names, seconds_per_row: a number per view (optional)}."""
    if not isinstance(f, dict) or not (f.get("k") == FULL or type(f.get("k")) is int and 0 <= f["k"] < 1000):
        return False
    views, seconds = f.get("views"), f.get("seconds_per_row")
    if not isinstance(views, list) or not views or not all(isinstance(v, str) for v in views):
        return False
    return seconds is None or isinstance(seconds, dict) and all(
        type(seconds.get(v)) in (int, float) and seconds[v] >= 0 for v in views)


def _acyclic(top: str, nodes: dict, bad) -> None:
    """No ensemble is its own member, however deep: a depth-first walk with a stack (no recursion limit) that
    visits each node once (shared members are not walked again: no blow-up on a lattice of ensembles)."""
    state: dict[str, str] = {}  # node -> "open" while its members are walked, "done" after
    stack = [(top, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            state[node] = "done"
            continue
        if state.get(node) == "done":
            continue
        if state.get(node) == "open":
            raise bad(f"ensemble {node!r} is its own member")
        state[node] = "open"
        stack.append((node, True))
        members = nodes[node].get("members", []) if nodes[node]["kind"] == "ensemble" else []
        for member in members:
            if state.get(member) == "open":
                raise bad(f"ensemble {member!r} is its own member (through {node!r})")
            if state.get(member) != "done":
                stack.append((member, False))


def files_in(root: Path) -> list[str]:
    """Every file under root, by POSIX path relative to it; a link anywhere is refused."""
    found = []
    for folder, dirs, names in os.walk(root):  # os.walk does not follow links into folders
        for entry in [*dirs, *names]:
            if (Path(folder) / entry).is_symlink():
                raise UserError(f"{Path(folder) / entry} is a link; an export holds plain files only (copy the "
                                "folder with its files, not links)")
        found += [(Path(folder) / n).relative_to(root).as_posix() for n in names]
    return found


def check_hashes(root: Path, expected: dict[str, str]) -> None:
    """Every file in the folder is one the manifest lists, with its hash, and every listed file is there: nothing
    is read from a damaged, partly copied or added-to export. Links are refused (they can point anywhere); the
    listed names are plain relative paths (check_structure), so with no link none leads outside the folder."""
    for name in files_in(root):
        parts = name.split("/")
        if parts[-1] in ADDED_BY_OTHERS or ADDED_FOLDERS.intersection(parts[:-1]):
            continue  # never read
        if name != MANIFEST and name not in expected:
            raise UserError(f"{root / name} is not in the export's manifest (added since export, or the manifest "
                            "was edited); remove it, or export again")
    for name, digest in expected.items():
        path = root / name
        if not path.is_file():
            raise UserError(f"{path} is missing from the export (the manifest lists it); copy the whole folder again")
        if sha256_file(path) != digest:
            raise UserError(f"{path} does not match the manifest's sha256 (changed or partly copied since export); "
                            "copy the whole folder again, or export again")
