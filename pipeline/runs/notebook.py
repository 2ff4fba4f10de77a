"""inference.ipynb, written into every export: the Kaggle code-competition notebook that submits from it.

Attach the export as a Kaggle dataset and the competition's data, turn the internet off, run all: it installs the
export's wheel offline into a folder of its own (nothing in the notebook's environment is upgraded or replaced),
runs `pipeline infer` on the competition folder and leaves submission.csv where Kaggle collects it.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.files import write_text

PARAMETERS = '''# Parameters: where Kaggle mounts the attached datasets, and where the submission goes.
EXPORT = {export}  # this export, uploaded as a Kaggle dataset
COMPETITION = {competition}  # the competition's data (test.csv, sample_submission.csv, test files)
OUT = "/kaggle/working/submission.csv"  # what Kaggle scores
PACKAGES = "/kaggle/working/pipeline-packages"  # the wheel is installed here, beside the environment, not into it
MAX_MINUTES = None  # e.g. 500: drop TTA views, then folds, until the estimate fits the competition's limit
BATCH_SIZE = None  # None: the recipe's
WHEEL_SHA256 = {wheel_sha256}  # the wheel's hash at export, written here by `pipeline export` (None: the manifest's)
'''

# the wheel the manifest names, checked against its sha256 before pip runs it: pipeline infer verifies the rest
INSTALL = '''import hashlib, json, os, subprocess, sys

manifest = json.load(open(os.path.join(EXPORT, "manifest.json")))
wheel = manifest.get("wheel")
if wheel is None:
    print("the export holds no wheel: using the pipeline installed in this environment")
elif not isinstance(wheel, str) or os.path.basename(wheel) != wheel or not wheel.endswith(".whl"):
    raise SystemExit(f"{EXPORT}/manifest.json names {wheel!r}, not a wheel file of the export: export it again")
else:
    path = os.path.join(EXPORT, wheel)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != (WHEEL_SHA256 or manifest.get("files", {}).get(wheel)):
        raise SystemExit(f"{path} does not match the manifest's sha256 (changed since export): export it again")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                    PACKAGES, path], check=True)
'''

INFER = '''env = {**os.environ, "PYTHONPATH": os.pathsep.join([PACKAGES, os.environ.get("PYTHONPATH", "")]),
       "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
command = [sys.executable, "-m", "pipeline", "infer", EXPORT, "--data", COMPETITION, "--out", OUT]
command += ["--max-minutes", str(MAX_MINUTES)] if MAX_MINUTES else []
command += ["--batch-size", str(BATCH_SIZE)] if BATCH_SIZE else []
subprocess.run(command, check=True, env=env)
'''

SHOW = '''import pandas as pd

pd.read_csv(OUT).head()
'''


def write_notebook(path: Path, manifest: dict, dataset: str) -> None:
    """The notebook for this export: EXPORT defaults to /kaggle/input/<dataset> (the export folder's name, as a
    Kaggle dataset of it is mounted), COMPETITION to the competition folder the experiment was trained on."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    root = manifest["nodes"][manifest["root"]]
    competition = manifest.get("competition") or "competition"
    intro = (f"# Inference: {manifest['root']}\n\n"
             f"{root['kind'].capitalize()} exported by pipeline {manifest['package_version']} on "
             f"{manifest['created']}: CV {manifest['metric']} {manifest['cv']:.4f}"
             f"{'' if manifest['cv_reproduced'] else ' (a subset of folds is exported: this CV is the full set' + chr(39) + 's)'}"
             ".\n\nAttach this folder as a Kaggle dataset and the competition's data, turn the internet off, "
             "and run all cells; `submission.csv` is written to `/kaggle/working/`.")
    nb = new_notebook(cells=[
        new_markdown_cell(intro),
        # names are data: repr() makes each a Python string literal, whatever quotes or backslashes it holds
        new_code_cell(PARAMETERS.format(export=repr(f"/kaggle/input/{dataset}"),
                                        competition=repr(f"/kaggle/input/{competition}"),
                                        wheel_sha256=repr(manifest.get("wheel_sha256"))),
                      metadata={"tags": ["parameters"]}),
        new_code_cell(INSTALL),
        new_code_cell(INFER),
        new_code_cell(SHOW),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    write_text(path, nbformat.writes(nb))
