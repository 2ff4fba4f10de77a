#!/usr/bin/env bash
# Distillation on leaves-dev, end to end through the CLI: two lite0 teachers (128 px, two seeds) on the same folds,
# their weighted ensemble, a 96 px lite0 student distilled from it (fold k from fold k's teachers only), and the
# same student trained on the labels alone. Prints each one's CV and its inference seconds per 1,000 test images
# (`pipeline infer` on its export, on this machine). A CPU budget: 3 folds x 4 epochs, hflip TTA (~1 h on 2 cores).
#
#   scripts/distill_leaves.sh                 # -> runs/distill-leaves/, exports/distill-leaves/
#   EPOCHS=6 TTA=d4 scripts/distill_leaves.sh    # the longer look
set -euo pipefail
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
RUNS=${RUNS:-runs/distill-leaves}
EXPORTS=${EXPORTS:-exports/distill-leaves}
CONFIG=configs/dev/leaves-dev.yaml
DATA=../shared/data/leaves-dev
common=(--set "runs_dir=$RUNS" --set tracking.wandb=disabled --set tracking.quiet=true --set data.cache=true
        --set "train.epochs=${EPOCHS:-4}" --set "cv.folds=${FOLDS:-3}" --set "predict.tta=${TTA:-hflip}")

experiment() {  # name, then --set overrides: prepare, train every fold, predict (avg weights)
  local name=$1; shift
  local sets=("${common[@]}" --set "name=$name" "$@")
  "$PIPELINE" prepare -c "$CONFIG" "${sets[@]}"
  "$PIPELINE" train -c "$CONFIG" "${sets[@]}"
  "$PIPELINE" predict -c "$CONFIG" "${sets[@]}"
}

experiment lv-teacher-128 --set image.size=128
experiment lv-teacher-128s1 --set image.size=128 --set seed=1 --set "cv.folds_file=$RUNS/lv-teacher-128/folds.csv"
"$PIPELINE" ensemble lv-teacher-128 lv-teacher-128s1 --method weighted --name lv-teachers --runs-dir "$RUNS"
"$PIPELINE" distill lv-teachers -c "$CONFIG" "${common[@]}" --set name=lv-student-distilled --set image.size=96 \
  --runs-dir "$RUNS"
experiment lv-student-plain --set image.size=96 --set "cv.folds_file=$RUNS/lv-teacher-128/folds.csv"

printf '\n%-22s %-8s %-10s %s\n' run cv metric 's/1000 images'
for run in lv-teachers lv-student-distilled lv-student-plain; do
  "$PIPELINE" export "$run" --runs-dir "$RUNS" --out "$EXPORTS/$run" --force >/dev/null 2>&1
  rm -f "$EXPORTS/$run.csv"
  # infer's last line: "submission ... validated against ... in N s (R rows/s)", reading, inference and checks
  rate=$("$PIPELINE" infer "$EXPORTS/$run" --data "$DATA" --out "$EXPORTS/$run.csv" 2>&1 |
         sed -n 's/.*validated against .* (\([0-9.]*\) rows\/s).*/\1/p')
  read -r cv metric < <(python3 -c "import json; s=json.load(open('$RUNS/$run/scores.json')); print(round(s['cv'], 4), s['metric'])")
  printf '%-22s %-8s %-10s %.1f\n' "$run" "$cv" "$metric" "$(echo "1000 / $rate" | bc -l)"
done
