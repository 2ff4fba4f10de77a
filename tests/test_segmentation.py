"""task: segmentation: RLE and metrics against independent implementations, decision rules fitted without the
fold they score, bad masks refused in one line, and the whole loop (demo, multi-class masks) through the CLI."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.core.config import Config, with_values
from pipeline.core.errors import UserError
from pipeline.tasks.segmentation.demo_data import write_digit_masks_competition
from pipeline.tasks.segmentation.masks import rle_decode, rle_encode
from pipeline.tasks.segmentation.metrics import Counts, RuleSearch, counts, pair_scores
from pipeline.tasks.segmentation.task import SegmentationTask
from tests.conftest import assert_export_submits_the_same, assert_refused, cli, invoke

pytest.importorskip("segmentation_models_pytorch")


def naive_rle(mask: np.ndarray) -> str:
    """Kaggle's RLE, pixel by pixel down the columns: no numpy tricks to share a bug with."""
    runs, start, length, n = [], None, 0, 0
    for x in range(mask.shape[1]):
        for y in range(mask.shape[0]):
            n += 1
            if mask[y, x]:
                if start is None:
                    start, length = n, 0
                length += 1
            elif start is not None:
                runs += [start, length]
                start = None
    if start is not None:
        runs += [start, length]
    return " ".join(map(str, runs))


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 1)))
def test_rle_matches_a_pixel_by_pixel_encoder_and_round_trips(mask):
    assert rle_encode(mask) == naive_rle(mask)
    assert np.array_equal(rle_decode(rle_encode(mask), mask.shape), mask)
    assert np.array_equal(rle_decode(rle_encode(mask, "C"), mask.shape, "C"), mask)
    assert rle_encode(mask, "C") == naive_rle(mask.T.copy())  # row-major is column-major of the transpose


def tgs_score(pred: np.ndarray, true: np.ndarray) -> float:
    """TGS Salt's per-image score as its kernels wrote it: precision at IoU thresholds 0.5:0.05:0.95."""
    if true.sum() == 0 and pred.sum() == 0:
        return 1.0
    iou = (pred & true).sum() / (pred | true).sum()
    return float(np.mean([iou > t for t in np.arange(0.5, 1.0, 0.05)]))


def test_metrics_match_independent_implementations_on_random_masks():
    rng = np.random.default_rng(0)
    probs, truths, mine_tgs, mine_dice = [], [], [], []
    for _ in range(300):
        true = rng.random((16, 16)) < rng.choice([0.0, 0.1, 0.5])
        pred = true ^ (rng.random((16, 16)) < rng.choice([0.0, 0.02, 0.3]))
        if rng.random() < 0.2:
            pred[:] = False
        probs.append((pred * 255).astype(np.uint8)[None])
        truths.append(true.astype(np.uint8)[None])
        mine_tgs.append(tgs_score(pred, true))
        inter, total = (pred & true).sum(), pred.sum() + true.sum()
        mine_dice.append(1.0 if total == 0 else 2 * inter / total)
    c = counts(probs, truths, 0.5)
    assert pair_scores(c, "iou_map") == pytest.approx(mine_tgs)
    assert pair_scores(c, "dice") == pytest.approx(mine_dice)
    # every mask empty: the empty truths score 1, the others 0
    empty = counts([np.zeros_like(p) for p in probs], truths, 0.5)
    assert pair_scores(empty, "iou_map").mean() == pytest.approx(np.mean([t.sum() == 0 for t in truths]))


def test_each_folds_rules_are_fitted_without_its_rows(tmp_path):
    """Fold 0's decision rules do not move when fold 0's truths change; the headline CV is the held-out one."""
    rng = np.random.default_rng(1)
    n = 90
    probs = [np.clip(rng.normal(0.5, 0.3, (1, 12, 12)) * 255, 0, 255).astype(np.uint8) for _ in range(n)]
    truths = [(p > rng.integers(60, 200)).astype(np.uint8) for p in probs]
    folds = np.repeat([0, 1, 2], n // 3)
    cfg = with_values(Config(), {"task": "segmentation", "train.metric": "iou_map"})
    task = SegmentationTask(cfg, ["mask"])
    fitted = task.fitted_scores(probs, truths, folds)
    changed = [np.zeros_like(t) if k == 0 else t for t, k in zip(truths, folds, strict=True)]
    again = task.fitted_scores(probs, changed, folds)
    assert fitted["rules_per_fold"][0] == again["rules_per_fold"][0]
    search = RuleSearch(probs, truths, "iou_map", 144)
    rules = search.fit(np.flatnonzero(folds != 0))[0]
    assert fitted["rules_per_fold"][0] == rules.as_dict()
    assert fitted["cv"] <= fitted["cv_fitted_in_sample"] + 1e-12


def test_counts_emptied_by_area_and_peak():
    c = Counts(np.array([5.0, 50.0, 0.0]), np.array([5.0, 0.0, 3.0]), np.array([5.0, 0.0, 0.0]),
               np.array([0.9, 0.6, 0.0]))
    out = c.emptied(min_area=10, empty_below=0.0)
    assert out.pred.tolist() == [0.0, 50.0, 0.0] and out.inter.tolist() == [0.0, 0.0, 0.0]
    assert c.emptied(0, 0.7).pred.tolist() == [5.0, 0.0, 0.0]


# --- through the CLI ---------------------------------------------------------------------------------------------

SEG = {
    "task": "segmentation",
    "data": {"id_col": "id", "target_col": "rle_mask", "image_dir": "images", "image_ext": ".png"},
    "model": {"name": "test_resnet", "pretrained": False},
    "image": {"size": 64},
    "augment": {"hflip": 0.0},
    "cv": {"folds": 2},
    "train": {"epochs": 1, "batch_size": 16, "num_workers": 0, "base_lr": 1e-2, "metric": "iou_map"},
    "predict": {"tta": "hflip"},
    "tracking": {"wandb": "disabled", "quiet": True},
}


@pytest.fixture(scope="module")
def masks_root(tmp_path_factory):
    return write_digit_masks_competition(tmp_path_factory.mktemp("masks"), n_train=80, n_test=24)


def test_the_demo_runs_the_whole_loop(tmp_path):
    """`pipeline demo --task segmentation`, one epoch a fold: train, predict, ensemble, submit, held-back score."""
    from pipeline.workflows import demo

    summary = demo.run("segmentation", root=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"),
                       submissions_dir=str(tmp_path / "subs"), overrides=["train.epochs=1", "cv.folds=2", "image.size=32"])
    assert 0 <= summary["held_back"]["iou_map"] <= 1 and 0 <= summary["ensemble_cv"] <= 1
    sub = pd.read_csv(summary["submission"], keep_default_na=False)
    solution = pd.read_csv(tmp_path / "data" / "solution.csv", keep_default_na=False)
    assert list(sub["id"]) == list(solution["id"])
    for text in sub["rle_mask"]:
        rle_decode(text, (48, 48))  # every cell decodes on the image


def test_train_predict_submit_with_fitted_rules(masks_root, make_config, tmp_path):
    path, cfg = make_config(masks_root, base=SEG, name="seg")
    for command in (("prepare",), ("train",), ("predict",)):
        cli(*command, "--config", path)
    scores = pd.read_json(cfg.run_dir / "scores.json", typ="series")
    assert set(scores["decisions"]) == {"threshold", "min_area", "empty_below"}
    assert set(scores["rules_per_fold"]) == {"0", "1"} and 0 <= scores["predicted_empty"] <= 1
    oof = pd.read_parquet(cfg.run_dir / "oof.parquet")
    assert {"probs", "truth", "height", "width"} <= set(oof.columns) and oof["height"].eq(48).all()
    cli("submit", "seg", "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(tmp_path / "subs" / "seg.csv", keep_default_na=False)
    assert len(sub) == 24 and list(sub.columns) == ["id", "rle_mask"]
    report = cli("report", "seg", "--runs-dir", cfg.runs_dir)
    assert report.exit_code == 0 and (cfg.run_dir / "report" / "masks.png").is_file()
    assert_export_submits_the_same(cfg.runs_dir, "seg", masks_root, tmp_path)  # export + infer, no train data


def test_multi_class_mask_files_give_one_rle_per_image_and_class(tmp_path, make_config):
    """Mask PNGs holding class values 1 and 2 (one channel each), a sample in Severstal's <id>_<class> layout."""
    root = tmp_path / "mc"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    ids = [f"i{n:03d}" for n in range(40)]
    for i in ids:
        image = rng.integers(0, 60, (32, 32), dtype=np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        y, x = rng.integers(0, 20, 2)
        mask[y:y + 10, x:x + 10] = rng.integers(0, 3)
        image[mask == 1] += 120
        image[mask == 2] += 190
        cv2.imwrite(str(root / "images" / f"{i}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{i}.png"), mask)
    pd.DataFrame({"id": ids[:30]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": ids[30:]}).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"ImageId_ClassId": [f"{i}_{c}" for i in ids[30:] for c in ("a", "b")],
                  "EncodedPixels": "1 1"}).to_csv(root / "sample_submission.csv", index=False)
    path, cfg = make_config(root, base=SEG, name="mc", segment={"mask_dir": "masks", "classes": ["a", "b"]},
                            data={**SEG["data"], "sample_id_col": "ImageId_ClassId"},
                            image={"size": 32}, train={**SEG["train"], "metric": "dice"})
    for command in (("prepare",), ("train",), ("predict",)):
        cli(*command, "--config", path)
    cli("submit", "mc", "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(tmp_path / "subs" / "mc.csv", keep_default_na=False)
    assert list(sub["ImageId_ClassId"]) == [f"{i}_{c}" for i in ids[30:] for c in ("a", "b")]


# --- bad input ---------------------------------------------------------------------------------------------------

def broken(masks_root, tmp_path, change) -> str:
    root = shutil.copytree(masks_root, tmp_path / "broken")
    change(root)
    return root


@pytest.mark.parametrize("row, rle, fragments", [
    (3, "5 3 9", ["id m0003", "odd count"]),
    (4, "2300 10", ["id m0004", "outside the 48x48"]),
    (5, "1 x", ["id m0005", "whole numbers"]),
])
def test_malformed_rle_is_refused_naming_the_row(masks_root, make_config, tmp_path, row, rle, fragments):
    def edit(root):
        table = pd.read_csv(root / "train.csv", keep_default_na=False)
        table.loc[row, "rle_mask"] = rle
        table.to_csv(root / "train.csv", index=False)
    root = broken(masks_root, tmp_path, edit)
    path, _ = make_config(root, base=SEG)
    assert_refused(invoke("prepare", "--config", path), *fragments, file="train.csv")


def test_bad_mask_files_are_refused_naming_the_file(masks_root, make_config, tmp_path):
    def as_files(root):
        table = pd.read_csv(root / "train.csv", keep_default_na=False)
        (root / "masks").mkdir()
        for i, text in zip(table["id"], table["rle_mask"], strict=True):
            cv2.imwrite(str(root / "masks" / f"{i}.png"), rle_decode(text, (48, 48)))
    root = broken(masks_root, tmp_path, as_files)
    path, _ = make_config(root, base=SEG, segment={"mask_dir": "masks"})
    cv2.imwrite(str(root / "masks" / "m0002.png"), np.zeros((40, 48), np.uint8))
    assert_refused(invoke("prepare", "--config", path), "is 48x40 but its image is 48x48", file="m0002.png")
    (root / "masks" / "m0002.png").unlink()
    assert_refused(invoke("prepare", "--config", path), "has no mask file", "m0002")
    cv2.imwrite(str(root / "masks" / "m0002.png"), np.full((48, 48), 7, np.uint8))
    path, _ = make_config(root, base=SEG, name="mc", segment={"mask_dir": "masks", "classes": ["a", "b"]})
    assert_refused(invoke("prepare", "--config", path), "value(s) [7]", file="m0002.png")


def test_side_values_become_input_planes_scaled_on_the_fold_and_the_rgb_filters_stay(masks_root, make_config,
                                                                                        tmp_path):
    """segment.side_csv: one more input channel, a constant plane of the image's standardised value; the weights
    file's first convolution keeps its RGB filters and starts the new channel at zero."""
    import timm
    import torch

    from pipeline.data.folds import load_folds
    from pipeline.tasks import build_task

    root = broken(masks_root, tmp_path, lambda r: None)
    ids = [*pd.read_csv(root / "train.csv")["id"], *pd.read_csv(root / "test.csv")["id"]]
    pd.DataFrame({"id": ids, "z": np.arange(len(ids)) * 10.0}).to_csv(root / "depths.csv", index=False)
    weights = tmp_path / "encoder.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    path, cfg = make_config(root, base=SEG, name="side", segment={"side_csv": "depths.csv"},
                            model={"name": "test_resnet", "pretrained": True, "weights_file": str(weights)})
    cli("prepare", "--config", path)
    task = build_task(cfg, ["mask"])
    train_rows, _ = load_folds(cfg).split(0)
    state = task.fit_fold(train_rows)
    assert state["side_mean"][0] == pytest.approx(np.mean(np.arange(len(ids))[:80][np.isin(ids[:80], train_rows["id"])]) * 10)
    model = task.build_model()
    stem = torch.load(weights, weights_only=True)
    first = next(k for k, v in model.encoder.model.state_dict().items() if v.ndim == 4)
    filters = model.encoder.model.state_dict()[first]
    assert filters.shape[1] == 4 and torch.equal(filters[:, :3], stem[first]) and not filters[:, 3].any()
    x, _, _ = task.to_device(next(iter(torch.utils.data.DataLoader(task.build_dataset(train_rows.head(4), False),
                                                                   batch_size=4))), torch.device("cpu"))
    assert x.shape[1] == 4 and torch.allclose(x[:, 3].flatten(1).std(dim=1), torch.zeros(4))
    model.train()
    batch = task.to_device(next(iter(torch.utils.data.DataLoader(task.build_dataset(train_rows.head(4), True),
                                                                 batch_size=4))), torch.device("cpu"))
    task.loss(model, batch).backward()
    stem = next(m for m in model.encoder.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.weight.grad[:, 3].abs().sum() > 0  # the side plane's filters learn
    (root / "depths.csv").write_text("id,z\nm0000,1\n")
    with pytest.raises(UserError, match="depths.csv has no row for id"):
        build_task(cfg, ["mask"]).build_dataset(train_rows, False)
