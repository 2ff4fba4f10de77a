"""Does a change to how submissions are decoded move any dev-set submission? (issue 34's "nothing that was right
moves"). For each dev set in ../shared/data: a tiny run through prepare/train/predict with this checkout, then
`pipeline submit` of the same predictions by this checkout and by another one (OLD, e.g. a `git worktree` of the
commit before), the two files compared byte for byte and scored on solution.csv.

    git worktree add /tmp/old <commit>
    .venv/bin/python scripts/form_check.py --old /tmp/old [--work /tmp/form-check]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from pipeline.core.config import load_config

HERE = Path(__file__).resolve().parents[1]
TINY_IMAGES = ["model.name=test_resnet", "model.weights_file=null", "image.size=32", "train.batch_size=16"]
TINY = ["cv.folds=2", "train.epochs=1", "train.max_steps_per_epoch=2", "tracking.wandb=disabled",
        "tracking.quiet=true", "cv.adversarial=false", "predict.tta=none", "predict.full_refit=false"]
SETS = {  # config: (extra overrides, how solution.csv scores a submission column)
    "cactus": (TINY_IMAGES, "roc_auc"),
    "miml-scenes": (TINY_IMAGES, "f2_samples"),
    "utkface-age": (TINY_IMAGES, "mae"),
    "raccoon": (TINY_IMAGES[:3] + ["train.batch_size=4"], None),  # boxes: compared byte for byte
    "basicmotions": ([], "accuracy"),
    "japanesevowels": ([], "accuracy"),
    "covid3month": ([], "rmse"),
    "sentiment": ([], "accuracy"),
}


def pipeline(code: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(code)}  # that checkout's package ahead of the installed one
    subprocess.run([sys.executable, "-m", "pipeline", *args], check=True, env=env, cwd=HERE,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def score(sub: Path, solution: Path, id_col: str, how: str | None) -> float | None:
    if how is None:
        return None
    s, t = pd.read_csv(sub), pd.read_csv(solution)
    col = [c for c in t.columns if c != id_col][0]
    merged = t.merge(s, on=id_col, suffixes=("_true", "_pred"))
    truth, pred = merged[f"{col}_true"], merged[f"{col}_pred"]
    if how == "accuracy":
        return float((truth.astype(str) == pred.astype(str)).mean())
    if how == "roc_auc":
        return float(skm.roc_auc_score(truth, pred))
    if how == "f2_samples":
        tags = sorted({t for row in truth for t in str(row).split()})
        def onehot(column):
            return np.array([[tag in str(row).split() for tag in tags] for row in column], dtype=int)
        return float(skm.fbeta_score(onehot(truth), onehot(pred), beta=2, average="samples", zero_division=0))
    if how == "mae":
        return float(skm.mean_absolute_error(truth, pred))
    return float(skm.root_mean_squared_error(truth, pred))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True, help="the other checkout (its package folder's parent)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/form-check"))
    args = parser.parse_args()
    rows = []
    for name, (extra, how) in SETS.items():
        config = HERE / "configs" / f"{name}.yaml"
        sets = [a for o in [*TINY, *extra, f"runs_dir={args.work / 'runs'}"] for a in ("--set", o)]
        try:
            pipeline(HERE, "prepare", "--config", str(config), *sets)
            pipeline(HERE, "train", "--config", str(config), "--fold", "all", *sets)
            pipeline(HERE, "predict", "--config", str(config), *sets)
        except subprocess.CalledProcessError as e:
            rows.append({"set": name, "same bytes": "run failed: " + e.stderr.strip().splitlines()[-1]})
            continue
        cfg = load_config(args.work / "runs" / load_config(config).name / "config.yaml")
        run = cfg.run_dir
        files = {}
        for label, code in (("new", HERE), ("old", args.old)):
            files[label] = args.work / f"{name}-{label}.csv"
            pipeline(code, "submit", str(run), "--out", str(files[label]))
        solution = HERE / cfg.data_path("sample_submission").with_name("solution.csv")
        new, old = (score(files[k], solution, cfg.data.id_col, how) for k in ("new", "old"))
        rows.append({"set": name, "target": cfg.data.target_type, "metric": cfg.train.metric,
                     "same bytes": files["new"].read_bytes() == files["old"].read_bytes(),
                     "solution score old": old, "new": new, "scored by": how or "-"})
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
