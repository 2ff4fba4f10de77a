"""The notebooks in notebooks/ run top to bottom on the digits competition, writing only under tmp_path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def this_interpreter(tmp_path: Path) -> KernelManager:
    """A kernel on the Python running the tests (the .venv's, with the package under test), whatever
    kernels this user has registered."""
    spec = tmp_path / "kernels" / "pipeline-tests"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "pipeline tests", "language": "python"}))
    return KernelManager(kernel_name=spec.name, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))


def execute(name: str, tmp_path: Path, overrides: list[str]):
    """Run a notebook with OVERRIDES set after its parameters cell, as papermill injects parameters."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    at = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"OVERRIDES = {overrides!r}"))
    work = tmp_path / "cwd"  # the kernel starts here; the notebook moves to the repository root itself
    work.mkdir()
    client = nbclient.NotebookClient(nb, km=this_interpreter(tmp_path), timeout=600,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError, with the traceback, on the first failing cell
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    return nb


def outputs_of(nb, marker: str) -> list:
    """The outputs of the one code cell whose source contains marker."""
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    return cell.outputs


def has_png(outputs) -> bool:
    return any("image/png" in o.get("data", {}) for o in outputs)


def text_of(outputs) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


def test_eda_notebook_runs_on_the_digits(digits_root, tmp_path):
    nb = execute("01_eda.ipynb", tmp_path, [f"data.root={digits_root}", f"runs_dir={tmp_path / 'runs'}"])
    assert "150" in text_of(outputs_of(nb, '"train rows"'))  # conftest's digits: 150 training rows
    for figure in ("ax.bar(range(len(counts))", "image sizes", "random training images per class"):
        assert has_png(outputs_of(nb, figure)), figure
    assert "no exact duplicates" in text_of(outputs_of(nb, "duplicates.summarise"))
    assert not (tmp_path / "runs").exists()  # it reads; only prepare writes duplicates.csv


def test_oof_notebook_trains_the_quick_run_and_analyses_it(digits_root, tmp_path):
    runs = tmp_path / "runs"
    nb = execute("02_oof.ipynb", tmp_path, [f"data.root={digits_root}", f"runs_dir={runs}"])
    run = runs / "digits-quick"
    assert (run / "scores.json").is_file() and (run / "oof.parquet").is_file()  # trained here, in tmp_path
    for figure in ("confusion_frame(", "highest_loss(", "calibration_bins(", "fold_metrics(", "def fold_row"):
        assert has_png(outputs_of(nb, figure)), figure
    assert "macro avg" in text_of(outputs_of(nb, "per_class_report("))
    assert "CV accuracy" in text_of(outputs_of(nb, "cv_no_tta"))
