#!/usr/bin/env bash
# Side by side at equal budget: `pipeline train` against timm's own train.py, fine-tuning tf_efficientnet_lite0 from
# the same ImageNet file on the same images: fold 0 of configs/dev/leaves-dev.yaml (3,379 training rows, 845 validation
# rows), 128 px, batch 32, 6 epochs, the same LR, weight decay, label smoothing and vflip; timm's own defaults
# otherwise. Prints both validation accuracies (each script's best epoch).
#
#   scripts/vs_timm.sh /path/to/pytorch-image-models [OUT]      (OUT defaults to runs/vs-timm)
#
# timm's train.py is not in the timm wheel: point at a source checkout (github.com/huggingface/pytorch-image-models)
# whose train.py runs with the installed timm.
set -euo pipefail
TIMM=${1:?usage: scripts/vs_timm.sh /path/to/pytorch-image-models [OUT]}
OUT=$(realpath -m "${2:-runs/vs-timm}")
PY=.venv/bin/python
CONFIG=configs/dev/leaves-dev.yaml
EPOCHS=${EPOCHS:-6} SIZE=${SIZE:-128} BATCH=${BATCH:-32}  # the comparison's budget; EPOCHS=1 SIZE=64 for a smoke run
[ -f "$TIMM/train.py" ] || { echo "error: $TIMM/train.py not found; pass a pytorch-image-models checkout" >&2; exit 2; }
SETS=(--set name=vs-timm --set "runs_dir=$OUT" --set image.size=$SIZE --set train.epochs=$EPOCHS
      --set train.batch_size=$BATCH --set tracking.wandb=disabled --set tracking.quiet=true --set train.patience=0)
rm -rf "$OUT/timm" "$OUT/imagefolder"  # timm appends to an old summary.csv; old links could cross the split
mkdir -p "$OUT"

# Ours: fold 0 of the config's folds.
$PY -m pipeline prepare -c $CONFIG "${SETS[@]}"
$PY -m pipeline train -c $CONFIG --fold 0 --force "${SETS[@]}" | tail -1

# timm: the same split as an ImageFolder of links (with a class map, so both splits index classes alike), and the
# ImageNet file with a fresh head as its initial checkpoint. Its LR is our head's for this batch (train.lr_scale);
# our backbone trains at train.backbone_lr_mult of it, one of the recipe differences measured.
read -r LR NUM_CLASSES MODEL < <($PY - "$OUT" "$CONFIG" "$BATCH" <<'PY'
import sys
from pathlib import Path

import pandas as pd
import timm
import torch

from pipeline.core.config import load_config
from pipeline.engine.models import load_backbone
from pipeline.engine.optim import scale_lr

out, config = Path(sys.argv[1]), sys.argv[2]
cfg = load_config(config, [f"train.batch_size={sys.argv[3]}"])
folds = pd.read_csv(out / "vs-timm" / "folds.csv", dtype={"id": str})
root = Path(cfg.data.root).resolve()
for split, rows in (("train", folds[folds.fold != 0]), ("validation", folds[folds.fold == 0])):
    for image, label in zip(rows["id"], rows["target"].astype(str)):
        link = out / "imagefolder" / split / label / Path(image).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(root / cfg.data.image_dir / f"{image}{cfg.data.image_ext}")
classes = sorted(folds["target"].astype(str).unique())
(out / "class_map.txt").write_text("\n".join(classes) + "\n")
model = timm.create_model(cfg.model.name, num_classes=len(classes))
load_backbone(model, Path(cfg.model.weights_file))
torch.save({"state_dict": model.state_dict()}, out / "timm-initial.pth")
print(scale_lr(cfg.train, world_size=1).lr, len(classes), cfg.model.name)
PY
)
WEIGHT_DECAY=$($PY -c "from pipeline.core.config import load_config; print(load_config('$CONFIG').train.weight_decay)")
SMOOTHING=$($PY -c "from pipeline.core.config import load_config; print(load_config('$CONFIG').train.label_smoothing)")
VFLIP=$($PY -c "from pipeline.core.config import load_config; print(load_config('$CONFIG').augment.vflip)")
# train.py has no --device option and takes CUDA (its epoch and validation loops default to device=cuda); on a
# machine without CUDA its parsed args and both loops get the CPU.
$PY - "$TIMM" --data-dir "$OUT/imagefolder" --model "$MODEL" --class-map "$OUT/class_map.txt" \
  --initial-checkpoint "$OUT/timm-initial.pth" --num-classes "$NUM_CLASSES" --img-size $SIZE -b $BATCH --epochs $EPOCHS \
  --opt adamw --lr "$LR" --weight-decay "$WEIGHT_DECAY" --smoothing "$SMOOTHING" --vflip "$VFLIP" \
  --warmup-epochs 1 --workers 0 --no-prefetcher --output "$OUT/timm" --experiment lite0 \
  --log-interval 1000 > "$OUT/timm.log" 2>&1 <<'PY' || { tail -20 "$OUT/timm.log" >&2; exit 1; }
import functools
import sys

import torch

timm_dir = sys.argv.pop(1)
sys.path.insert(0, timm_dir)
sys.argv[0] = f"{timm_dir}/train.py"
import train  # noqa: E402  (timm's script, from the checkout)

parse = train._parse_args
def on_this_machine():
    args, text = parse()
    if not torch.cuda.is_available():
        args.device = "cpu"
    return args, text
train._parse_args = on_this_machine
if not torch.cuda.is_available():
    for loop in ("train_one_epoch", "validate"):
        setattr(train, loop, functools.partial(getattr(train, loop), device=torch.device("cpu")))
train.main()
PY

$PY - "$OUT" <<'PY'
import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
ours = pd.read_csv(out / "vs-timm" / "fold0" / "metrics.csv")
timm = pd.read_csv(out / "timm" / "lite0" / "summary.csv")
best = max(ours["valid/score"].max(), ours.get("valid_ema/score", ours["valid/score"]).max())
print(f"validation accuracy on the {len(pd.read_parquet(out / 'vs-timm' / 'fold0' / 'oof.parquet'))} rows of fold 0 "
      f"(best epoch): pipeline {best:.4f}  "
      f"timm train.py {timm['eval_top1'].max() / 100:.4f}")
PY
