#!/usr/bin/env bash
# One round of pseudo-labels on leaves-dev, end to end through the CLI: lite0 (../shared/weights) at 128 px on 3
# folds x 4 epochs, then `pipeline pseudo` (fold k's test rows from fold k's model, threshold auto from the other
# folds' OOF at precision 0.95), the new experiment trained and predicted on the same folds. Prints the CV before
# and after, and per fold the threshold, the OOF precision behind it and the test rows kept. A CPU budget (~40 min
# on 2 cores); EPOCHS=8 for a longer look.
#
#   scripts/pseudo_leaves.sh        # -> runs/pseudo-leaves/
set -euo pipefail
PIPELINE=${PIPELINE:-.venv/bin/pipeline}
RUNS=${RUNS:-runs/pseudo-leaves}
CONFIG=configs/dev/leaves-dev.yaml
common=(--set "runs_dir=$RUNS" --set tracking.wandb=disabled --set tracking.quiet=true --set data.cache=true
        --set "train.epochs=${EPOCHS:-4}" --set "cv.folds=${FOLDS:-3}" --set "predict.tta=${TTA:-hflip}"
        --set image.size=128)

"$PIPELINE" prepare -c "$CONFIG" "${common[@]}" --set name=lv-source
"$PIPELINE" train -c "$CONFIG" "${common[@]}" --set name=lv-source
"$PIPELINE" predict -c "$CONFIG" "${common[@]}" --set name=lv-source
"$PIPELINE" pseudo lv-source --name lv-pseudo --runs-dir "$RUNS" ${THRESHOLD:+--threshold "$THRESHOLD"}
"$PIPELINE" train -c "$RUNS/lv-pseudo/config.yaml"
"$PIPELINE" predict -c "$RUNS/lv-pseudo/config.yaml"
"$PIPELINE" report lv-pseudo --runs-dir "$RUNS" >/dev/null

python3 - "$RUNS" <<'PY'
import json, sys
runs = sys.argv[1]
before, after = (json.load(open(f"{runs}/{n}/scores.json")) for n in ("lv-source", "lv-pseudo"))
p = json.load(open(f"{runs}/lv-pseudo/pseudo.json"))
print(f"\nCV {before['metric']}: lv-source {before['cv']:.4f} ± {before['cv_std']:.4f} -> "
      f"lv-pseudo {after['cv']:.4f} ± {after['cv_std']:.4f} (one round, precision target {p['precision_target']})")
print(f"per fold before: {before['folds']}\nper fold after:  {after['folds']}")
for f in p["folds"]:
    t = "-" if f["threshold"] is None else f"{f['threshold']:.4f}"
    prec = "-" if f.get("oof_precision") is None else f"{f['oof_precision']:.4f}"
    top = sorted(f["per_class"].items(), key=lambda kv: -kv[1])[:3]
    print(f"fold {f['fold']}: threshold {t}, OOF precision {prec} on {f.get('oof_kept')} of {f.get('oof_units')} "
          f"OOF rows of the other folds; {f['rows']} of {f['of']} test rows kept, {len(f['per_class'])} classes "
          f"(most: {', '.join(f'{c} {n}' for c, n in top)})")
PY
