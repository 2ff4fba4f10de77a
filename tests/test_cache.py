"""The decoded-image cache: same pixels as decoding, built once, rebuilt when an image changes."""

import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.cache import build_cache, cached_images, cached_side
from pipeline.data import read_test, read_train
from pipeline.images import image_paths, load_image
from pipeline.stages import predict, prepare, train
from pipeline.tasks.classification.task import build_images


def test_cache_holds_each_image_resized_and_is_reused(competition, tmp_path):
    paths = sorted(competition.glob("images/*.png"))[:12]
    side = cached_side(32, 0.25)
    file, index = build_cache(paths, side, tmp_path / "cache")
    images = cached_images(paths[3:6], paths, side, tmp_path / "cache")
    expected = cv2.resize(load_image(paths[4]), (side, side), interpolation=cv2.INTER_AREA)
    assert side == 40 and len(images) == 3 and np.array_equal(images[1], expected)
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
    assert len(cache_files) == 1 and np.load(cache_files[0], mmap_mode="r").shape == (n, 37, 37, 3)
    ids = read_train(cfg)[cfg.data.id_col][:2]
    assert np.array_equal(build_images(cfg, ids)[1].shape, (37, 37, 3))
    assert image_paths(cfg, ids)[0].is_file()
    train.run(cfg, fold=0)
    predict.run(cfg, fold="0")
    assert (cfg.run_dir / "fold0" / "test.parquet").is_file()
    assert list((Path(cfg.runs_dir) / "cache").glob("*.npy")) == cache_files  # train and predict read the same cache
