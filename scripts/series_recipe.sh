#!/usr/bin/env bash
# The default recipe for a series competition: MiniRocket (random kernels + a logistic/ridge head, seconds) and
# InceptionTime (the config's network, NETWORKS=5 per fold as the paper averages) on the same folds, blended with
# weights fitted on their OOF rows, each submitted. Prints CV, the held-back score where the data has a
# solution.csv (the dev sets), and each one's time. NETWORKS=1 is ~4.5x faster (held-back: see docs/results.md).
#
#   scripts/series_recipe.sh configs/dev/basicmotions.yaml [--set key=value ...]     # -> runs/<name>-{minirocket,inception,blend}
set -euo pipefail
CONFIG=$1; shift
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
NAME=${NAME:-$(basename "$CONFIG" .yaml)}
RUNS=${RUNS:-runs}
common=(--set "runs_dir=$RUNS" --set tracking.quiet=true "$@")

experiment() {  # name, then --set overrides: prepare, train every fold, predict, submit; its seconds -> $RUNS/<name>/seconds
  local name=$1; shift
  local sets=("${common[@]}" --set "name=$name" "$@") start=$SECONDS
  "$PIPELINE" prepare -c "$CONFIG" "${sets[@]}"
  "$PIPELINE" train -c "$CONFIG" "${sets[@]}"
  "$PIPELINE" predict -c "$CONFIG" "${sets[@]}"
  echo $((SECONDS - start)) > "$RUNS/$name/seconds"
  "$PIPELINE" submit "$name" --runs-dir "$RUNS" --out "$RUNS/$name/submission.csv"
}

experiment "$NAME-minirocket" --set model.name=minirocket --set predict.tta=none
experiment "$NAME-inception" --set "cv.folds_file=$RUNS/$NAME-minirocket/folds.csv" --set "sequence.networks=${NETWORKS:-5}"
start=$SECONDS
"$PIPELINE" ensemble "$NAME-minirocket" "$NAME-inception" --method weighted --name "$NAME-blend" --runs-dir "$RUNS"
echo $((SECONDS - start)) > "$RUNS/$NAME-blend/seconds"
"$PIPELINE" submit "$NAME-blend" --runs-dir "$RUNS" --out "$RUNS/$NAME-blend/submission.csv"

.venv/bin/python - "$RUNS" "$NAME" <<'PY'
import json, sys
from pathlib import Path
import numpy as np, pandas as pd
from pipeline.engine.fold_model import run_config
from pipeline.runs.rundir import RunDir
runs, name = sys.argv[1:]
print(f"\n{'experiment':<28} {'CV':>8} {'held-back':>10} {'seconds':>8}")
for part in ("minirocket", "inception", "blend"):
    run = RunDir(Path(runs) / f"{name}-{part}")
    cfg, scores = run_config(run), json.loads(run.scores.read_text())
    solution = Path(cfg.data.root) / "solution.csv"
    held = "-"
    if solution.is_file():
        target, key = cfg.data.target_col, cfg.data.id_col
        merged = pd.read_csv(solution).merge(pd.read_csv(run.path / "submission.csv"), on=key, suffixes=("", "_pred"))
        if scores["metric"] == "rmse":
            held = f"{np.sqrt(np.mean((merged[target] - merged[target + '_pred']) ** 2)):.4f}"
        else:
            held = f"{(merged[target].astype(str) == merged[target + '_pred'].astype(str)).mean():.4f}"
    weights = f"  weights {json.loads(run.weights.read_text())['weights']}" if run.weights.is_file() else ""
    print(f"{run.name:<28} {scores['cv']:>8.4f} {held:>10} {(run.path / 'seconds').read_text().strip():>8}"
          f"  ({scores['metric']}){weights}")
PY
