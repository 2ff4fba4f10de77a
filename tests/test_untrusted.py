"""Inputs from elsewhere, read as an attacker or an unlucky user would send them: an image that is small on disk and
huge decoded (a decompression bomb). The export's own probes are in test_export.py, dependency floors in
test_dependencies.py."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pandas as pd

from tests.conftest import assert_refused, invoke

BOMB = (20000, 10000)  # 200 million pixels: 600 MB once decoded to RGB, about 200 KB as a PNG


def write_png_bomb(path: Path, width: int = BOMB[0], height: int = BOMB[1]) -> Path:
    """An 8-bit grey PNG of width x height black pixels, compressed row by row (never held whole in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (width + 1)  # filter byte + one byte per pixel
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


MEASURE = """
import resource, sys
from pipeline.core.errors import UserError
from pipeline.data.images import load_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_image(sys.argv[1], int(sys.argv[2]))
    print("decoded")
except UserError as e:
    print("refused", e)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_an_image_bomb_is_refused_from_its_header_before_any_decode(tmp_path):
    bomb = write_png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 300_000
    done = subprocess.run([sys.executable, "-c", MEASURE, str(bomb), "89478485"], capture_output=True, text=True,
                          timeout=300)
    verdict, grown = done.stdout.strip().splitlines()
    assert verdict.startswith("refused") and "20000x10000 pixels" in verdict and "image.max_pixels" in verdict
    assert int(grown) < 50  # MB: the header was read, not the 600 MB of pixels


def test_the_bomb_is_refused_in_prepare_train_and_predict(competition, make_config, copy_run, tmp_path):
    train, test = (pd.read_csv(competition / f"{n}.csv") for n in ("train", "test"))
    image = competition / train.loc[3, "image"]
    original = image.read_bytes()
    write_png_bomb(image)
    path, cfg = make_config(competition)
    assert_refused(invoke("prepare", "--config", path), "line 5:", "20000x10000 pixels, over image.max_pixels")

    image.write_bytes(original)
    assert invoke("prepare", "--config", path).exit_code == 0
    write_png_bomb(image)  # replaced after prepare checked it
    assert_refused(invoke("train", "--config", path, "--fold", "0"), "20000x10000 pixels", file=str(image))
    image.write_bytes(original)

    run = copy_run("bombed", data={"root": str(competition)})
    write_png_bomb(competition / test.loc[0, "image"])
    assert_refused(invoke("predict", "--config", Path(run.run_dir) / "config.yaml"), "20000x10000 pixels",
                   file=test.loc[0, "image"])


def test_the_pixel_limit_is_configurable(competition, make_config):
    path, _ = make_config(competition, image={"size": 32, "max_pixels": 1000})  # the digits are 32 x 32 = 1024
    assert_refused(invoke("prepare", "--config", path), "359 of 359 images", "32x32 pixels, over image.max_pixels 1,000")
    path, _ = make_config(competition, image={"size": 32, "max_pixels": 0}, name="unlimited")  # 0: no limit
    assert invoke("prepare", "--config", path).exit_code == 0
