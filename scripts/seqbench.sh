#!/usr/bin/env bash
# Every sequence model with its dataset's default config, the fold ensemble of each, and a weighted blend
# of the five; every submission scored against solution.csv. Usage: scripts/seqbench.sh basicmotions japanesevowels
set -euo pipefail
P=.venv/bin/pipeline
for DS in "$@"; do
  root=$(.venv/bin/python -c "from pipeline.core.config import load_config; print(load_config('configs/$DS.yaml').data.root)")
  for M in inception resnet1d gru lstm transformer; do
    S=(--set name=$DS-$M --set model.name=$M --set tracking.quiet=true)
    $P prepare -c configs/$DS.yaml "${S[@]}"
    $P train -c configs/$DS.yaml --fold all "${S[@]}"
    $P predict -c configs/$DS.yaml "${S[@]}"
    $P submit $DS-$M
  done
  $P ensemble $DS-inception $DS-resnet1d $DS-gru $DS-lstm $DS-transformer --method weighted --name $DS-blend
  $P submit $DS-blend
  for M in inception resnet1d gru lstm transformer blend; do
    .venv/bin/python - "$DS" "$M" "$root" <<'PY'
import json, sys
from pipeline.core.config import load_config
from pipeline.workflows.demo import score_against_solution
ds, m, root = sys.argv[1:]
cfg = load_config(f"configs/{ds}.yaml")
s = json.load(open(f"runs/{ds}-{m}/scores.json"))
acc = score_against_solution(f"submissions/{ds}-{m}.csv", f"{root}/solution.csv", cfg)
print(f"RESULT {ds} {m} cv {s['cv']:.4f} cv_no_tta {s.get('cv_no_tta', float('nan')):.4f} test {acc:.4f}")
PY
  done
done
