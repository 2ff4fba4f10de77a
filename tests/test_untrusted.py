"""Inputs from elsewhere, read as an attacker or an unlucky user would send them: an image that is small on disk and
huge decoded (a decompression bomb), a tracked run on a machine that must stay offline, a hand-edited submissions
log, a series nobody meant to pad whole. The export's own probes are in test_export.py, fold locks under
contention in test_distributed.py, dependency floors in test_dependencies.py."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.core.config import load_config
from pipeline.runs.submissions import SubmissionLog, record_public
from pipeline.stages import prepare
from tests.conftest import SEQ, assert_refused, invoke, merge, write_series_competition

BOMB = (20000, 10000)  # 200 million pixels: 600 MB once decoded to RGB, about 200 KB as a PNG


def write_png_bomb(path: Path, width: int = BOMB[0], height: int = BOMB[1], text: int = 0) -> Path:
    """An 8-bit grey PNG of width x height black pixels, compressed row by row (never held whole in memory);
    text > 0 puts a compressed text chunk of that many bytes before the pixels (Pillow refuses to open such a file
    past 1 MB, so a size check through Pillow alone would be skipped and OpenCV would decode it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (width + 1)  # filter byte + one byte per pixel
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    note = chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * text, 9)) if text else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + note + chunk(b"IDAT", body) + chunk(b"IEND", b""))
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


def test_past_opencvs_own_limit_the_error_is_one_line_too(tmp_path):
    """With image.max_pixels 0 (no limit of ours), OpenCV's own 2^30-pixel limit still refuses: as a UserError
    naming the file, not a cv2.error traceback."""
    from pipeline.core.errors import UserError
    from pipeline.data.images import load_image

    huge = write_png_bomb(tmp_path / "huge.png", 40000, 30000)  # 1.2 billion pixels
    with pytest.raises(UserError, match=r"huge.png does not decode \(OpenCV"):
        load_image(huge, 0)
    hidden = write_png_bomb(tmp_path / "hidden.png", text=2_000_000)  # Pillow will not open it: the IHDR says
    with pytest.raises(UserError, match="20000x10000 pixels, over image.max_pixels"):
        load_image(hidden)


def test_jpeg_and_png_sizes_are_read_from_their_headers_as_pillow_reads_them(tmp_path):
    """The fast header readers (PNG's IHDR, JPEG's frame marker) agree with Pillow on baseline, progressive and
    EXIF-carrying JPEGs and on PNGs; a JPEG whose frame says 20000 x 10000 is refused without a decode."""
    import numpy as np
    from PIL import Image

    from pipeline.core.errors import UserError
    from pipeline.data.images import header_size, load_image

    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(37, 53), (640, 480), (1, 1), (300, 2000)]):
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        exif = Image.Exif()
        exif[0x010E] = "x" * 5000  # a long description: the frame marker comes after a large APP1 segment
        for name, kwargs in [(f"{i}.png", {}), (f"{i}.jpg", {}), (f"{i}p.jpg", {"progressive": True}),
                             (f"{i}e.jpg", {"exif": exif})]:
            image.save(tmp_path / name, **kwargs)
            with Image.open(tmp_path / name) as opened:
                assert header_size(tmp_path / name) == opened.size == (w, h), name
    data = bytearray((tmp_path / "0.jpg").read_bytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 5:frame + 9] = (10000).to_bytes(2, "big") + (20000).to_bytes(2, "big")  # height, width
    (tmp_path / "bomb.jpg").write_bytes(bytes(data))
    with pytest.raises(UserError, match="20000x10000 pixels, over image.max_pixels"):
        load_image(tmp_path / "bomb.jpg")


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


DNS_SPY = """
import os, socket, traceback

def spy(real):
    def lookup(host, *args, **kwargs):
        with open(os.environ["DNS_SPY_LOG"], "a") as log:
            log.write(f"{os.getpid()} {host}\\n{''.join(traceback.format_stack(limit=6))}\\n")
        return real(host, *args, **kwargs)
    return lookup

for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
    setattr(socket, name, spy(getattr(socket, name)))
"""


def test_an_offline_tracked_run_makes_no_network_lookup(competition, make_config, tmp_path):
    """tracking.wandb=offline in the config (not WANDB_MODE in the environment): a real W&B offline run records
    the training while every name lookup in every Python process is logged, and every connect of every process
    (wandb's Go service too) is traced where strace runs. Before wandb was told first, its telemetry looked its
    server up at exit."""
    path, cfg = make_config(competition, tracking={"wandb": "offline", "quiet": True}, train={"epochs": 1})
    assert invoke("prepare", "--config", path).exit_code == 0
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(DNS_SPY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(PYTHONPATH=str(spy), DNS_SPY_LOG=str(tmp_path / "lookups.log"), HOME=str(tmp_path))
    command = [sys.executable, "-m", "pipeline", "train", "--config", str(path), "--fold", "0"]
    traced = shutil.which("strace") and subprocess.run(["strace", "-f", "-o", os.devnull, "true"],
                                                       capture_output=True).returncode == 0
    if traced:
        command = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(tmp_path / "connects.log"), *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((cfg.run_dir / "wandb").glob("offline-run-*/*.wandb"))  # a W&B run was recorded, offline
    log = tmp_path / "lookups.log"
    assert not log.exists(), log.read_text()[:3000]
    if traced:
        connects = (tmp_path / "connects.log").read_text().splitlines()
        network = [line for line in connects if "AF_INET" in line and "127.0.0.1" not in line and "::1" not in line]
        assert not network, "\n".join(network[:10])


def test_the_submission_log_reads_every_cell_as_its_text(tmp_path):
    """submissions/log.csv is edited by hand and copied between teammates: an experiment named 1e3, 007 or NA is
    that name, not a number or a missing value."""
    book = SubmissionLog(tmp_path)
    for name in ("1e3", "007", "NA", "exp"):
        book.append({"exp": name, "cv": 0.9, "file": f"{name}.csv"})
    assert book.read()["exp"].tolist() == ["1e3", "007", "NA", "exp"]
    assert record_public(book, "1e3", 0.875)["public_lb"] == 0.875
    table = book.read()
    assert table["public_lb"].tolist()[0] == 0.875 and table["cv"].dtype == "float64"
    assert table["exp"].tolist() == ["1e3", "007", "NA", "exp"]


def test_prepare_warns_about_a_series_longer_than_warn_len(tmp_path, caplog):
    root = write_series_competition(tmp_path / "series")
    tree = merge(copy.deepcopy(SEQ), {"name": "long", "runs_dir": str(tmp_path / "runs"),
                                      "data": {**SEQ["data"], "root": str(root)}, "sequence": {"warn_len": 25}})
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(tree))
    caplog.set_level(logging.WARNING, logger="pipeline")
    prepare.run(load_config(tmp_path / "long.yaml"))
    assert "longer than sequence.warn_len 25 steps" in caplog.text and "set sequence.max_len" in caplog.text
    caplog.clear()
    prepare.run(load_config(tmp_path / "long.yaml", ["sequence.max_len=20"]), force=True)  # cropped: no warning
    assert "warn_len" not in caplog.text
