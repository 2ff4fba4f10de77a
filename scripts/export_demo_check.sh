#!/usr/bin/env bash
# Issue 20's must-show on the demo ensemble: export size vs the run directories, `pipeline infer` with train.csv
# moved away and no network (unshare -rn where the kernel allows it), its submission against `pipeline submit`'s,
# and the largest probability difference of fp32 and fp16 exports against the run's test.parquet.
#
#   scripts/export_demo_check.sh            # work in /tmp/export-check (WORK=...)
set -euo pipefail
PIPELINE=${PIPELINE:-$PWD/.venv/bin/pipeline}
PY=${PY:-$PWD/.venv/bin/python}
WORK=${WORK:-/tmp/export-check}
rm -rf "$WORK" && mkdir -p "$WORK"
cd "$WORK"
"$PIPELINE" demo --runs-dir runs --root demo-digits --set tracking.wandb=disabled >demo.log 2>&1
"$PIPELINE" submit demo-ensemble --runs-dir runs --out submit.csv >/dev/null 2>&1
"$PIPELINE" export demo-ensemble --runs-dir runs --out export-fp32 2>&1 | tail -1
"$PIPELINE" export demo-ensemble --runs-dir runs --out export-fp16 --dtype fp16 2>&1 | tail -1
cp -r demo-digits test-only && rm -f test-only/train.csv test-only/solution.csv
mv runs runs-away  # nothing of the run directories is reachable while infer runs
net=(unshare -rn)
"${net[@]}" true 2>/dev/null || { echo "unshare -rn not permitted here: infer runs with the network up"; net=(); }
for dtype in fp32 fp16; do
  "${net[@]}" "$PIPELINE" infer "export-$dtype" --data test-only --out "infer-$dtype.csv" 2>&1 | tail -1
done
mv runs-away runs
sha256sum submit.csv infer-fp32.csv infer-fp16.csv
cmp -s submit.csv infer-fp32.csv && echo "fp32 export: submission byte-identical to pipeline submit's" \
  || echo "fp32 export: submission DIFFERS from pipeline submit's"
"$PY" - <<'EOF'
import pandas as pd
from pipeline.stages.infer import predict_export
from pipeline.tasks.base import ClassProbabilities
run = pd.read_parquet("runs/demo-ensemble/test.parquet").sort_values("id", ignore_index=True)
cols = [c for c in run.columns if c not in ("id", "fold", "target")]
for dtype in ("fp32", "fp16"):
    frame = predict_export(f"export-{dtype}", "test-only")[0].sort_values("id", ignore_index=True)
    print(f"{dtype} export: max |dp| vs runs/demo-ensemble/test.parquet = "
          f"{(frame[cols].to_numpy() - run[cols].to_numpy()).__abs__().max():.3g} over {len(frame)} rows")
EOF
du -sh runs/demo-resnet runs/demo-effnet runs/demo-ensemble export-fp32 export-fp16
