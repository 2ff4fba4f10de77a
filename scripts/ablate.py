"""One recipe difference at a time: fold 0 of each dev set trained with its shipped config, then once per variant
(one --set each), at a CPU budget. Prints, per set, each variant's best validation score (raw or EMA weights, as
`train` picks them) and loss next to the baseline's, and a repeat of the baseline with another seed for the noise.

    .venv/bin/python scripts/ablate.py                       # every set, every variant -> runs/ablation/results.csv
    .venv/bin/python scripts/ablate.py --sets leaves miml --variants base seed1 scale_008

Finished runs are read back from results.csv, so an interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from pipeline.core.config import load_config, to_dict
from pipeline.scoring.metrics import greater_is_better

# set -> (config, budget overrides): the budget of issue 18's comparison for leaves (128 px, batch 32, 6 epochs)
SETS = {
    "leaves": ("configs/dev/leaves-dev.yaml", ["image.size=128", "train.epochs=6", "train.batch_size=32"]),
    "cactus": ("configs/dev/cactus.yaml", []),
    "miml": ("configs/dev/miml-scenes.yaml", []),
    "utkface": ("configs/dev/utkface-age.yaml", []),
}
# variant -> overrides: each moves one setting to timm's train.py default (or off), from the shipped recipe
VARIANTS = {
    "base": [],
    "seed1": ["seed=1"],  # the same recipe, another seed: how far scores move by chance
    "backbone_lr_1": ["train.backbone_lr_mult=1.0"],  # issue 18's configs had 0.5; they now ship 1.0
    "backbone_lr_05": ["train.backbone_lr_mult=0.5"],
    "scale_008": ["augment.scale_min=0.08"],
    "jitter_04": ["augment.color_jitter=0.4"],
    "no_jitter": ["augment.color_jitter=0"],
    "no_rot90": ["augment.rotate90=0"],
    "crop_0875": ["image.crop_pct=0.875"],
    "cubic": ["image.interpolation=cubic"],
    "warmup_025": ["train.warmup_epochs=0.25"],
    "uncapped": ["train.short_run_cap=1.0"],  # warmup and EMA window as before the short-run cap
    "no_ema": ["train.ema=false"],
}
COMMON = ["tracking.wandb=disabled", "tracking.quiet=true", "data.cache=true", "train.keep_top=0",
          "train.patience=0"]


def overrides(set_name: str, variant: str) -> list[str]:
    return [*COMMON, *SETS[set_name][1], *VARIANTS[variant]]


def changes_nothing(set_name: str, variant: str) -> bool:
    """A variant the set's config already has (rotate90=0 where it never turns): nothing to measure."""
    config = SETS[set_name][0]
    return variant != "base" and to_dict(load_config(config, overrides(set_name, variant))) == \
        to_dict(load_config(config, overrides(set_name, "base")))


def run(set_name: str, variant: str, out: Path) -> dict:
    config, name = SETS[set_name][0], f"{set_name}-{variant}"
    sets = [*overrides(set_name, variant), f"name={name}", f"runs_dir={out}"]
    if variant != "base":  # the baseline's folds: every variant trains and scores on the same rows
        sets += [f"cv.folds_file={out / f'{set_name}-base' / 'folds.csv'}", "data.check_images=false"]
    args = [arg for s in sets for arg in ("--set", s)]
    pipeline = [sys.executable, "-m", "pipeline"]
    start = time.time()
    subprocess.run([*pipeline, "prepare", "-c", config, *args], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*pipeline, "train", "-c", config, "--fold", "0", "--force", *args], check=True,
                   stdout=subprocess.DEVNULL)
    metric = yaml.safe_load((out / name / "config.yaml").read_text())["train"]["metric"]  # as prepare resolved it
    return {"set": set_name, "variant": variant, "metric": metric,
            **best_epoch(out / name / "fold0" / "metrics.csv", metric), "minutes": round((time.time() - start) / 60, 1)}


def best_epoch(path: Path, metric: str) -> dict:
    """The score train keeps (the better of raw and EMA weights over epochs), the last epoch's raw score, and the
    best validation loss."""
    m = pd.read_csv(path)
    sign = 1 if greater_is_better(metric) else -1
    scores = pd.concat([m["valid/score"], m.get("valid_ema/score", m["valid/score"])])
    losses = pd.concat([m["valid/loss"], m.get("valid_ema/loss", m["valid/loss"])])
    return {"best": round(float(scores.iloc[(sign * scores).to_numpy().argmax()]), 4),
            "last_raw": round(float(m["valid/score"].iloc[-1]), 4), "best_loss": round(float(losses.min()), 4)}


def table(results: pd.DataFrame) -> str:
    """Per set: each variant's best score and its change from the baseline (+ = better in the metric's direction)."""
    lines = []
    for set_name, rows in results.groupby("set", sort=False):
        base = rows[rows["variant"] == "base"]
        sign = 1 if greater_is_better(rows["metric"].iloc[0]) else -1
        lines.append(f"\n{set_name} ({rows['metric'].iloc[0]}, fold 0)")
        lines.append(f"{'variant':<16}{'best':>9}{'vs base':>9}{'last raw':>10}{'best loss':>11}{'min':>6}")
        for _, r in rows.iterrows():
            delta = sign * (r["best"] - base["best"].iloc[0]) if len(base) else float("nan")
            lines.append(f"{r['variant']:<16}{r['best']:>9.4f}{delta:>+9.4f}{r['last_raw']:>10.4f}"
                         f"{r['best_loss']:>11.4f}{r['minutes']:>6.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "results.csv"
    done = pd.read_csv(csv) if csv.is_file() else pd.DataFrame(columns=["set", "variant"])
    for set_name in args.sets:
        for variant in ["base", *[v for v in args.variants if v != "base"]]:
            if ((done["set"] == set_name) & (done["variant"] == variant)).any() or changes_nothing(set_name, variant):
                continue
            row = run(set_name, variant, args.out)
            print(f"{set_name:<8} {variant:<14} {row['metric']} {row['best']:.4f}  ({row['minutes']} min)", flush=True)
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            tmp = csv.with_suffix(".tmp")
            done.to_csv(tmp, index=False)
            tmp.replace(csv)
    print(table(done[done["set"].isin(args.sets)]))


if __name__ == "__main__":
    main()
