"""Bad inputs through the real CLI, the cases of docs/bad-inputs.md: exit code 2, one `error:` line that
names the file and the row or column, no traceback, nothing written. Odd images are converted, not refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.images import load_image
from tests.conftest import SEQ, assert_refused, invoke, write_series_competition


def files(*folders: Path) -> set[Path]:
    return {p for folder in folders if folder.exists() for p in folder.rglob("*")}


def rewrite(root: Path, name: str, edit) -> None:
    """Apply edit(frame) to a CSV read as plain text (no NA guessing) and write it back."""
    df = pd.read_csv(root / name, dtype=str, keep_default_na=False)
    edit(df)
    df.to_csv(root / name, index=False)


def set_cells(name: str, column: str, values: dict):
    """values: {row (0-based): new text}."""
    def edit(df):
        for row, value in values.items():
            df.loc[row, column] = value
    return lambda root: rewrite(root, name, edit)


def copy_cell(name: str, column: str, source: int, target: int):
    def edit(df):
        df.loc[target, column] = df.loc[source, column]
    return lambda root: rewrite(root, name, edit)


def drop_column(name: str, column: str):
    return lambda root: rewrite(root, name, lambda df: df.drop(columns=column, inplace=True))


def rename_column(name: str, old: str, new: str):
    return lambda root: rewrite(root, name, lambda df: df.rename(columns={old: new}, inplace=True))


def insert_column(*names: str, column: str, values, at: int = 1):
    """values: one value for every row, or values(n) -> n values."""
    def damage(root):
        for name in names:
            rewrite(root, name, lambda df: df.insert(at, column, values(len(df)) if callable(values) else values))
    return damage


def write_bytes(name: str, data: bytes):
    return lambda root: (root / name).write_bytes(data)


def edit_line(name: str, line: int, edit):
    """Change one physical line (1 = header) of a file as bytes."""
    def damage(root):
        lines = (root / name).read_bytes().split(b"\n")
        lines[line - 1] = edit(lines[line - 1])
        (root / name).write_bytes(b"\n".join(lines))
    return damage


def damage_image(table: str, row: int, make):
    """Replace the image of one table row (0-based) by make(original image path)."""
    def damage(root):
        image = pd.read_csv(root / table)["image"].iloc[row]
        make(root / image)
    return damage


def truncated_jpeg(path: Path) -> None:
    _, jpeg = cv2.imencode(".jpg", cv2.imread(str(path)))
    path.write_bytes(jpeg.tobytes()[: len(jpeg) // 2])  # the file names stay .png: decoders go by content


PREPARE_REFUSES = [
    pytest.param(drop_column("train.csv", "label"), "train.csv", ["column 'label' (config data.target_col) not found"],
                 id="missing-label-column"),
    pytest.param(rename_column("test.csv", "image", "file"), "test.csv",
                 ["column 'image' (config data.id_col) not found; columns are 'file'"], id="missing-test-id-column"),
    pytest.param(drop_column("sample_submission.csv", "image"), "sample_submission.csv",
                 ["column 'image' (config data.id_col) not found"], id="missing-sample-id-column"),
    pytest.param(copy_cell("train.csv", "image", 0, 3), "train.csv", ["duplicate ids in column 'image' (rows 2, 5)"],
                 id="duplicate-train-ids"),
    pytest.param(copy_cell("test.csv", "image", 2, 7), "test.csv", ["duplicate ids in column 'image' (rows 4, 9)"],
                 id="duplicate-test-ids"),
    pytest.param(set_cells("train.csv", "image", {6: ""}), "train.csv", ["empty ids in column 'image' (rows 8)"],
                 id="empty-id"),
    pytest.param(set_cells("train.csv", "label", {4: "", 10: "NaN"}), "train.csv",
                 ["2 empty labels in column 'label' (rows 6, 12"], id="nan-labels"),
    pytest.param(insert_column("test.csv", column="label", values=lambda n: ["digit_1"] * 3 + ["digit_x"] + [""] * (n - 4)),
                 "test.csv", ["labels in column 'label' that train never uses: 'digit_x' (rows 5);"],
                 id="test-label-unknown-to-train"),
    pytest.param(damage_image("train.csv", 5, lambda p: p.write_bytes(b"")), "train.csv",
                 ["1 of 150 images cannot be read", "line 7:", "(empty file)"], id="zero-byte-image"),
    pytest.param(damage_image("test.csv", 9, truncated_jpeg), "test.csv",
                 ["1 of 359 images cannot be read", "line 11:", "does not decode"], id="truncated-jpeg"),
    pytest.param(edit_line("train.csv", 7, lambda b: b.replace(b"digit", b"d\xefgit")), "train.csv",
                 ["line 7 is not UTF-8 (byte 0xef at position 18 of the line)", "re-save it as UTF-8"],
                 id="latin-1-train-csv"),
    pytest.param(lambda root: (root / "test.csv").write_text((root / "test.csv").read_text(), encoding="utf-16"),
                 "test.csv", ["is UTF-16 text; re-save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8)"],
                 id="utf-16-test-csv"),
    pytest.param(write_bytes("train.csv", b""), "train.csv", ["is empty; expected a header row"],
                 id="zero-byte-train-csv"),
    pytest.param(write_bytes("test.csv", b"image\n"), "test.csv", ["has a header but no rows"], id="empty-test-set"),
    pytest.param(edit_line("train.csv", 5, lambda b: b + b",extra"), "train.csv",
                 ["line 5 has 3 fields but the header has 2; quote values that hold commas"],
                 id="extra-field-in-a-row"),
    pytest.param(edit_line("train.csv", 2, lambda b: b + b","), "train.csv",
                 ["line 2 has 3 fields but the header has 2"], id="extra-field-in-the-first-row"),
    pytest.param(edit_line("test.csv", 4, lambda b: b'"' + b), "test.csv",
                 ["the quote opened on line 4 is never closed"], id="unclosed-quote"),
]


@pytest.mark.parametrize("damage, file, fragments", PREPARE_REFUSES)
def test_prepare_refuses(competition, make_config, tmp_path, damage, file, fragments):
    damage(competition)
    path, cfg = make_config(competition)
    before = files(competition)
    assert_refused(invoke("prepare", "--config", path), *fragments, file=file)
    assert not cfg.run_dir.exists() and files(competition) == before  # no folds.csv, no stray temporary file


@pytest.mark.parametrize("damage", [
    pytest.param(insert_column("train.csv", "test.csv", column="notes", values='x, "quoted"'), id="extra-columns"),
    pytest.param(lambda root: (root / "train.csv").write_text((root / "train.csv").read_text(), encoding="utf-8-sig"),
                 id="utf-8-bom"),
    pytest.param(insert_column("test.csv", column="label", values=lambda n: ["digit_3", ""] * (n // 2) + [""] * (n % 2)),
                 id="test-labels-known-to-train"),
])
def test_prepare_accepts(competition, make_config, damage):
    damage(competition)
    path, cfg = make_config(competition)
    result = invoke("prepare", "--config", path)
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(cfg.run_dir / "folds.csv").columns[:2]) == ["id", "target"]


def odd_images(root: Path) -> dict[str, np.ndarray]:
    """Grayscale, RGBA, 16-bit gray and RGB PNGs and a 32-bit TIFF of 16-bit values in train.csv's place of
    five digits; returns what load_image must give for each (by train.csv path)."""
    train = pd.read_csv(root / "train.csv")
    gray = cv2.cvtColor(cv2.imread(str(root / train["image"][0])), cv2.COLOR_BGR2GRAY)
    ramp = np.linspace(0, 65535, gray.size).reshape(gray.shape).astype(np.uint16)
    rgb = np.dstack([gray, 255 - gray, gray // 2])
    expected = {"gray.png": np.dstack([gray] * 3), "rgba.png": rgb, "gray16.png": np.dstack([ramp >> 8] * 3),
                "rgb16.png": np.dstack([ramp >> 8, (65535 - ramp) >> 8, ramp >> 8]),
                "int32.tif": np.dstack([ramp >> 8] * 3)}
    cv2.imwrite(str(root / "images/gray.png"), gray)
    rgba = np.dstack([rgb, np.full_like(gray, 128)])  # half transparent: the alpha is dropped, not blended
    cv2.imwrite(str(root / "images/rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    cv2.imwrite(str(root / "images/gray16.png"), ramp)
    cv2.imwrite(str(root / "images/rgb16.png"), np.dstack([ramp, 65535 - ramp, ramp])[..., ::-1].copy())
    Image.fromarray(ramp.astype(np.int32)).save(root / "images/int32.tif")  # cv2 cannot read it: PIL's path
    for i, name in enumerate(expected):
        train.loc[i, "image"] = f"images/{name}"
    train.to_csv(root / "train.csv", index=False)
    return {f"images/{name}": image.astype(np.uint8) for name, image in expected.items()}


def test_odd_images_are_converted_not_refused(competition, make_config):
    expected = odd_images(competition)
    for name, image in expected.items():
        loaded = load_image(competition / name)
        assert loaded.shape == (*image.shape[:2], 3) and loaded.dtype == np.uint8, name
        np.testing.assert_array_equal(loaded, image, err_msg=name)  # 16-bit scaled (>> 8), not clipped at 255
    path, cfg = make_config(competition, cv={"folds": 2}, train={"epochs": 1})
    assert invoke("prepare", "--config", path).exit_code == 0
    result = invoke("train", "--config", path, "--fold", "0")
    assert result.exit_code == 0, result.output
    assert (cfg.run_dir / "fold0/best.pt").is_file()


def test_folds_made_from_other_data_are_refused_by_predict(competition, make_config):
    path, cfg = make_config(competition)
    assert invoke("prepare", "--config", path).exit_code == 0
    rewrite(competition, "train.csv", lambda df: df.drop(index=[0, 1], inplace=True))
    before = files(cfg.run_dir)
    assert_refused(invoke("predict", "--config", path), "was made from a different", "prepare --force", file="folds.csv")
    assert files(cfg.run_dir) == before


def test_a_folds_csv_copied_from_other_data_is_refused(competition, make_config):
    path, cfg = make_config(competition)
    assert invoke("prepare", "--config", path).exit_code == 0
    folds = pd.read_csv(cfg.run_dir / "folds.csv")
    folds["id"] = folds["id"].str.replace("images/", "images/other-")
    folds.to_csv(cfg.run_dir / "folds.csv", index=False)
    assert_refused(invoke("train", "--config", path, "--fold", "0"), "prepare --force", file="folds.csv")
    assert not (cfg.run_dir / "fold0").exists()


@pytest.fixture
def experiment(copy_run, competition, tmp_path):
    """The session's trained and predicted digits run, copied to tmp_path/runs/exp with its config pointed at a
    private copy of the competition and at sample.csv there, a copy of sample_submission.csv a test may damage;
    (base folder, data root)."""
    shutil.copy(competition / "sample_submission.csv", competition / "sample.csv")
    copy_run("exp", data={"root": str(competition), "sample_submission": "sample.csv"})
    return tmp_path, competition


SUBMIT_REFUSES = [
    pytest.param(set_cells("sample.csv", "image", {5: "images/nope.png"}),
                 ["1 ids of sample_submission have no prediction", "sample.csv rows 7; first 'images/nope.png'"],
                 id="sample-ids-not-in-test"),
    pytest.param(copy_cell("sample.csv", "image", 0, 5), ["duplicate ids in column 'image' (rows 2, 7)"],
                 id="duplicate-sample-ids"),
    pytest.param(drop_column("sample.csv", "image"), ["column 'image' (config data.id_col) not found"],
                 id="sample-without-id-column"),
    pytest.param(insert_column("sample.csv", column="extra", values="0", at=2), ["missing column 'extra'"],
                 id="extra-sample-column"),
    pytest.param(drop_column("sample.csv", "label"), ["extra column 'label'"], id="sample-without-label-column"),
    pytest.param(write_bytes("sample.csv", b""), ["is empty"], id="zero-byte-sample"),
    pytest.param(edit_line("sample.csv", 3, lambda b: b + b"\xff"), ["line 3 is not UTF-8"], id="non-utf-8-sample"),
]


@pytest.mark.parametrize("damage, fragments", SUBMIT_REFUSES)
def test_submit_refuses(experiment, damage, fragments):
    base, root = experiment
    damage(root)
    before = files(base / "runs", base / "subs")
    assert_refused(invoke("submit", "exp", "--runs-dir", base / "runs"), *fragments, file="sample.csv")
    assert files(base / "runs", base / "subs") == before  # no submission, no log row


def test_submit_takes_the_label_column_name_of_the_sample(experiment):
    base, root = experiment
    rename_column("sample.csv", "label", "category")(root)
    result = invoke("submit", "exp", "--runs-dir", base / "runs")
    assert result.exit_code == 0, result.output
    sub = pd.read_csv(base / "subs/exp.csv")
    assert list(sub.columns) == ["image", "category"] and sub["category"].str.startswith("digit_").all()


@pytest.fixture
def series(tmp_path) -> Path:
    return write_series_competition(tmp_path / "series", n_train=12, n_test=4)


SERIES_REFUSES = [
    pytest.param(drop_column("train.csv", "step"), "train.csv", ["column 'step' (config data.step_col) not found"],
                 id="missing-step-column"),
    pytest.param(set_cells("train.csv", "ch1", {4: "abc"}), "train.csv",
                 ["non-numeric value 'abc' in column 'ch1' of series 's0' (line 6"], id="non-numeric-reading"),
    pytest.param(set_cells("test.csv", "ch0", {2: ""}), "test.csv", ["empty value in column 'ch0' of series", "(line 4"],
                 id="empty-reading"),
    pytest.param(set_cells("train.csv", "ch2", {3: "inf"}), "train.csv",
                 ["infinite or too large value inf in column 'ch2'"],
                 id="infinite-reading"),
    pytest.param(set_cells("train.csv", "step", {1: "0"}), "train.csv",
                 ["series 's0' has step 0 more than once (rows 2, 3)"],
                 id="duplicate-step"),
    pytest.param(set_cells("train.csv", "series_id", {2: ""}), "train.csv", ["empty ids in column 'series_id' (rows 4)"],
                 id="empty-series-id"),
    pytest.param(set_cells("train_labels.csv", "label", {4: ""}), "train_labels.csv",
                 ["series s4 have no label in column 'label' (rows 6)"], id="nan-series-label"),
    pytest.param(set_cells("train_labels.csv", "series_id", {4: "s3"}), "train_labels.csv",
                 ["duplicate ids in column 'series_id' (rows 5, 6)"], id="duplicate-label-ids"),
    pytest.param(edit_line("train_labels.csv", 3, lambda b: b + b"\xe9"), "train_labels.csv", ["line 3 is not UTF-8"],
                 id="latin-1-labels"),
    pytest.param(write_bytes("test.csv", b"series_id,step,ch0,ch1,ch2\n"), "test.csv", ["has a header but no rows"],
                 id="empty-test-set"),
]


@pytest.mark.parametrize("damage, file, fragments", SERIES_REFUSES)
def test_prepare_refuses_bad_series(series, make_config, damage, file, fragments):
    damage(series)
    path, cfg = make_config(series, base=SEQ)
    assert_refused(invoke("prepare", "--config", path), *fragments, file=file)
    assert not cfg.run_dir.exists()


def test_a_text_column_in_a_long_table_is_left_out(series, make_config):
    insert_column("train.csv", "test.csv", column="subject", values="alice", at=2)(series)
    path, cfg = make_config(series, base=SEQ)
    assert invoke("prepare", "--config", path).exit_code == 0
    assert json.loads((cfg.run_dir / "folds.json").read_text())["rows"] == 12
