"""The decoded-image cache: same pixels as decoding, built once, rebuilt when an image changes."""

import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.data.cache import build_cache, cached_images, cached_side
from pipeline.data.images import image_paths, load_image
from pipeline.data.tables import read_test, read_train
from pipeline.stages import predict, prepare, train
from pipeline.tasks.classification.task import build_images


def test_cache_holds_the_decoded_pixels_and_is_reused(competition, tmp_path):
    paths = sorted(competition.glob("images/*.png"))[:12]
    side = cached_side(32, 0.25)  # the smallest crop (a quarter of the area, 4:3) spans 32 px: 74 px kept
    file, index = build_cache(paths, side, tmp_path / "cache")
    images = cached_images(paths[3:6], paths, side, tmp_path / "cache")
    expected = load_image(paths[4])  # 32 px images are smaller than the side: stored as decoded, never enlarged
    assert side == 74 and len(images) == 3 and np.array_equal(images[1], expected)
    images[1][:] = 0  # a reader's copy: the cache itself is never written through
    assert np.array_equal(images[1], expected)

    mtime = file.stat().st_mtime_ns
    assert build_cache(list(reversed(paths)), side, tmp_path / "cache")[0] == file  # same set: same file
    assert file.stat().st_mtime_ns == mtime
    os.utime(paths[0], ns=(mtime + 10**9, mtime + 10**9))  # an edited image makes a new cache
    assert build_cache(paths, side, tmp_path / "cache")[0] != file


def test_training_from_the_cache(competition, make_config):
    path, cfg = make_config(competition, data={"root": str(competition), "cache": True}, train={"epochs": 1})
    prepare.run(cfg)
    cache_files = list((Path(cfg.runs_dir) / "cache").glob("*.npy"))
    n = len(read_train(cfg)) + len(read_test(cfg))
    cache = [f for f in cache_files if not f.name.endswith("-shapes.npy")]
    assert len(cache) == 1 and np.load(cache[0], mmap_mode="r").shape == (n, 32, 32, 3)
    ids = read_train(cfg)[cfg.data.id_col][:2]
    assert np.array_equal(build_images(cfg, ids)[1], load_image(image_paths(cfg, ids)[1]))
    assert image_paths(cfg, ids)[0].is_file()
    train.run(cfg, fold=0)
    predict.run(cfg, fold="0")
    assert (cfg.run_dir / "fold0" / "test.parquet").is_file()
    assert list((Path(cfg.runs_dir) / "cache").glob("*.npy")) == cache_files  # train and predict read the same cache


def test_large_images_keep_their_aspect_and_shrink_only_to_what_crops_need(tmp_path):
    wide = tmp_path / "wide.png"
    image = (np.random.default_rng(0).random((300, 600, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(wide), image)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), image[:50, :80])
    side = cached_side(64, 0.35)  # 64 / sqrt(0.75 * 0.35) = 125
    images = cached_images([wide, small], [wide, small], side, tmp_path / "cache")
    assert side == 125 and images[0].shape == (62, 125, 3) and images[1].shape == (50, 80, 3)
    expected = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (125, 62), interpolation=cv2.INTER_AREA)
    assert np.array_equal(images[0], expected)
