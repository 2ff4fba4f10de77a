"""The baseline a competitor would write by hand: segmentation_models_pytorch, one fold, a fixed 0.5 threshold.

    python scripts/plain_smp.py --data ../shared/data/tgs-salt --folds runs/tgs-salt-dev/folds.csv \
        --weights ../shared/weights/efficientnet_lite0_imagenet_timm.pth --fold 0 --epochs 8 --size 128

Same encoder, weights file, image size, epochs, batch and fold as a pipeline run, none of the pipeline: a U-Net, AdamW
at 1e-3 with a cosine schedule, BCE + Dice, horizontal flips, the last epoch's weights, the mask resized back to the
image and cut at 0.5, scored with TGS Salt's IoU-mAP written out here. It imports nothing from pipeline/.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F


def rle_decode(text, shape=(101, 101)) -> np.ndarray:
    mask = np.zeros(shape[0] * shape[1], np.uint8)
    if isinstance(text, str) and text:
        numbers = np.asarray(text.split(), dtype=np.int64)
        for start, length in zip(numbers[::2] - 1, numbers[1::2], strict=True):
            mask[start:start + length] = 1
    return mask.reshape(shape, order="F")


def tgs_score(pred: np.ndarray, true: np.ndarray) -> float:
    if true.sum() == 0 and pred.sum() == 0:
        return 1.0
    iou = (pred & true).sum() / (pred | true).sum()
    return float(np.mean([iou > t for t in np.arange(0.5, 1.0, 0.05)]))


def load(data: str, ids, rles, size: int):
    images = np.stack([cv2.resize(cv2.imread(f"{data}/train/images/{i}.png"), (size, size)) for i in ids])
    masks = np.stack([rle_decode(r) for r in rles])
    return images, masks


def main() -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("--data", None), ("--folds", None), ("--weights", None)):
        parser.add_argument(name, required=default is None)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    train = pd.read_csv(f"{args.data}/train.csv", keep_default_na=False)
    folds = pd.read_csv(args.folds, dtype={"id": str})
    fold_of = dict(zip(folds["id"], folds["fold"], strict=True))
    train["fold"] = train["id"].map(fold_of)
    tr, va = train[train["fold"] != args.fold], train[train["fold"] == args.fold]
    x_tr, m_tr = load(args.data, tr["id"], tr["rle_mask"], args.size)
    x_va, m_va = load(args.data, va["id"], va["rle_mask"], args.size)
    y_tr = np.stack([cv2.resize(m, (args.size, args.size), interpolation=cv2.INTER_NEAREST) for m in m_tr])

    model = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=1)
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    model.encoder.model.load_state_dict(state, strict=False)
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)  # tf_efficientnet_lite0's pretraining
    std = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)

    def prep(x: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std

    steps = args.epochs * (len(x_tr) // args.batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps, pct_start=0.05)
    dice, bce = smp.losses.DiceLoss("binary", from_logits=True), torch.nn.BCEWithLogitsLoss()
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = np.random.default_rng(epoch).permutation(len(x_tr))
        for b in range(len(x_tr) // args.batch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            x, y = prep(x_tr[idx]), torch.from_numpy(y_tr[idx]).float()[:, None]
            flip = torch.rand(len(idx)) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            logits = model(x)
            loss = bce(logits, y) + dice(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f} ({time.time() - started:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(model(prep(x_va[i:i + 64]))) for i in range(0, len(x_va), 64)])
        probs = F.interpolate(probs, size=(101, 101), mode="bilinear", align_corners=False)[:, 0].numpy()
    scores = [tgs_score(p >= 0.5, t.astype(bool)) for p, t in zip(probs, m_va, strict=True)]
    print(f"plain smp fold {args.fold}: IoU-mAP {np.mean(scores):.4f} at threshold 0.5 on {len(va)} images, "
          f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
