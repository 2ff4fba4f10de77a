"""Seconds for one detection mAP evaluation at Global-Wheat scale (issue 21): 3,000 images x ~40 boxes, one class,
~100 detections per image (score_thr 0.05, max_det 100), as `predict` and fusion tuning evaluate it.

    .venv/bin/python scripts/map_speed.py [--images 3000] [--boxes 40] [--repeats 3]
"""

import argparse
import time

import numpy as np

from pipeline.tasks.detection.boxes import Detections, mean_average_precision


def wheat_like(images: int, boxes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    for _ in range(images):
        k = int(rng.integers(boxes // 2, boxes * 3 // 2 + 1))
        xy = rng.uniform(0, 0.92, (k, 2))
        true = np.concatenate([xy, xy + rng.uniform(0.03, 0.08, (k, 2))], axis=1)
        hit = rng.random(k) < 0.85
        found = true[hit] + rng.normal(0, 0.008, (hit.sum(), 4))
        junk_xy = rng.uniform(0, 0.92, (max(0, 100 - len(found)), 2))
        det = np.concatenate([found, np.concatenate([junk_xy, junk_xy + 0.05], axis=1)])
        scores = np.concatenate([rng.uniform(0.3, 1, len(found)), rng.uniform(0.05, 0.5, len(junk_xy))])
        truths.append((true, np.zeros(k, np.int64)))
        preds.append(Detections(det.astype(np.float32), scores.astype(np.float32), np.zeros(len(det), np.int64),
                                (1024, 1024)))
    return truths, preds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--boxes", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    truths, preds = wheat_like(args.images, args.boxes)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scores = mean_average_precision(preds, truths)
        seconds.append(time.perf_counter() - start)
    print(f"mAP of {args.images} images x ~{args.boxes} boxes, {sum(len(p.boxes) for p in preds)} detections: "
          f"map50 {scores['map50']:.4f} map {scores['map']:.4f} in {min(seconds):.2f} s (best of {args.repeats})")


if __name__ == "__main__":
    main()
