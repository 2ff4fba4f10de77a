"""The CSV readers under generated text and bytes: each returns a frame that keeps its promises or raises
UserError, never another exception. Each @example is an input that once broke a reader (the bug it found beside it).
"""

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.data.submission import read_sample, validate
from pipeline.data.tables import read_table, read_test, read_train
from pipeline.tasks.detection.data import read_box_table
from pipeline.tasks.detection.submission import check_boxes, parse_boxes
from pipeline.tasks.sequence.data import read_series, read_series_labels, read_texts
from tests.conftest import write_config

# `make test` replays the same 100 inputs per reader (derandomized: CI never goes red on a new draw);
# `make fuzz` draws fresh ones, many more: run it after touching a reader, and keep what it finds as @example.
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 100)), derandomize=not os.environ.get("FUZZ_RANDOM"),
                deadline=None, suppress_health_check=[HealthCheck.too_slow])
READERS = {"data": {"id_col": "image", "target_col": "label"}}  # the base config of every reader here
CLASSES = ["cat", "dog", "owl"]
SAMPLE = pd.DataFrame({"image": ["a", "b", "c"], "label": "cat"})
PROBS = pd.DataFrame({"image": ["a", "b", "c"], "cat": 1.0, "dog": 0.0, "owl": 0.0})

# Cells that have broken CSV readers somewhere: NA spellings, separators and quotes inside values, a NUL,
# a BOM in the middle, non-ASCII text, numbers that are not finite, a field far longer than a buffer.
ODD = ["", "NaN", "nan", "NA", "None", "null", "inf", "-inf", "1e999", "0", "7", "1.5", "-2", "cat", "dog", "a", "b",
       '"', '""', "'", ",", "a,b", "\n", "\r\n", "\t", " ", "\x00", "\ufeff", "é", "日本", "\\", "x" * 70_000]
cells = st.one_of(st.sampled_from(["a", "b", "c", "0", "1", "2.5", "cat", "dog", ""]), st.sampled_from(ODD),
                  st.text(max_size=6))
EXTRA = ["", " ", "label ", "Image", "x", "y", "text", "step", "label", "image"]
# One input each reader and check must accept. The generated inputs are nearly all refused by some (a series
# reader needs every series complete, the labels reader exactly series a and b), so without these the checks on
# an accepted frame would never run in `make test`, and a reader that refused everything would pass every test.
WELL_FORMED = {
    "table": b"image,label\na,cat\nb,dog\n",
    "test": b"image,x\na,1\nb,2\n",
    "sample": b"image,label\na,cat\nb,cat\nc,cat\n",
    "submission": b"image,label\na,cat\nb,dog\nc,owl\n",
    "probabilities": b"image,cat,dog,owl\na,1,0,0\nb,0.5,0.25,0.25\nc,0,0,1\n",
    "series": b"image,step,x,y\na,0,1.5,2\na,1,-3,4e-2\nb,0,5,6\n",
    "series_labels": b"image,label\nb,dog\na,cat\n",
    "texts": b'image,text,label\na,"good, dog",dog\nb,a cat,cat\n',
    "boxes": b"image,label,xmin,ymin,xmax,ymax\na,cat,1,2,5,6\na,dog,0,0,3.5,3\nb,,,,,\n",
    "prediction_string": "0.9 1 2 3 4 0.5 5 6 7 8",
}


@st.composite
def csv_bytes(draw, columns=("image", "label")):
    """A CSV whose header holds `columns` (one maybe missing) and others, in any order: written by the csv
    module (well-formed) or joined by hand (maybe not), encoded as UTF-8 (with BOM), Latin-1 or UTF-16, maybe cut."""
    header = list(columns) + draw(st.lists(st.sampled_from(EXTRA), max_size=2))
    if draw(st.integers(0, 9)) == 0:
        header.pop(draw(st.integers(0, len(header) - 1)))
    header = draw(st.permutations(header)) if header else [draw(st.sampled_from(EXTRA))]
    width = st.integers(max(0, len(header) - 1), len(header) + 1)
    rows = draw(st.lists(width.flatmap(lambda n: st.lists(cells, min_size=n, max_size=n)), max_size=6))
    how = draw(st.sampled_from(["minimal", "minimal", "all", "naive"]))
    if how == "naive":
        text = "\n".join(",".join(r) for r in [header, *rows]) + draw(st.sampled_from(["", "\n", "\r\n"]))
    else:
        buf = io.StringIO()
        csv.writer(buf, quoting=csv.QUOTE_ALL if how == "all" else csv.QUOTE_MINIMAL).writerows([header, *rows])
        text = buf.getvalue()
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # a file cut short, maybe inside a character
    return data


@st.composite
def submission_bytes(draw, sample: pd.DataFrame):
    """A submission close to `sample`: its ids (one maybe dropped, repeated or moved), its columns (one maybe
    renamed or added) and generated values, written by the csv module."""
    ids, header = list(sample["image"]), list(sample.columns)
    change = draw(st.sampled_from(["none", "none", "none", "drop", "repeat", "move", "rename", "add"]))
    if change == "drop":
        ids.pop(draw(st.integers(0, len(ids) - 1)))
    elif change == "repeat":
        ids[draw(st.integers(0, len(ids) - 1))] = ids[draw(st.integers(0, len(ids) - 1))]
    elif change == "move":
        ids.insert(draw(st.integers(0, len(ids) - 1)), ids.pop(draw(st.integers(0, len(ids) - 1))))
    elif change in ("rename", "add"):
        name = draw(st.sampled_from(EXTRA))
        header = header + [name] if change == "add" else [header[0], name, *header[2:]]
    rows = [[i] + draw(st.lists(cells, min_size=len(header) - 1, max_size=len(header) - 1)) for i in ids]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    return buf.getvalue().encode()


def raw(*columns):
    """Generated CSVs around these columns, or arbitrary bytes (alone or after a header line)."""
    head = ",".join(columns).encode() + b"\n"
    return st.one_of(csv_bytes(columns), csv_bytes(columns), st.binary(max_size=200),
                     st.binary(max_size=60).map(lambda b: head + b))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One folder for every example (module-scoped: hypothesis runs many examples per test call)."""
    return tmp_path_factory.mktemp("fuzz")


def write(root: Path, name: str, data: bytes) -> None:
    (root / name).write_bytes(data)


def either(read):
    """read()'s result, or None when it refused the input with a UserError (any other exception fails)."""
    try:
        return read()
    except UserError as e:
        assert str(e), "a UserError needs a message"
        return None


def refused(check) -> bool:
    """True when check() raised a UserError, False when it passed (any other exception fails)."""
    return either(lambda: check() or True) is None


def assert_clean_ids(ids: pd.Series):
    assert ids.notna().all() and ids.is_unique
    assert all(isinstance(i, str) for i in ids)


@FUZZ
@given(raw("image", "label"))
# rows one field longer than the header: pandas made the first column the index and shifted every value left
@example(b"image\r\n,\r\n")
@example(b"label,,\r\na,a,a,a\r\n")
@example(WELL_FORMED["table"])
def test_read_table(root, data):
    write(root, "t.csv", data)
    df = either(lambda: read_table(root / "t.csv", "train_csv", "image"))
    assert df is not None or data != WELL_FORMED["table"]
    if data == WELL_FORMED["table"]:
        assert df.to_dict("list") == {"image": ["a", "b"], "label": ["cat", "dog"]}
    if df is not None:
        assert len(df) and len(df.columns)
        assert isinstance(df.index, pd.RangeIndex)  # rows line up with file lines (line = index + 2)


@FUZZ
@given(raw("image", "label"))
@example(WELL_FORMED["table"])
def test_read_train(root, data):
    write(root, "train.csv", data)
    df = either(lambda: read_train(write_config(root, root, READERS)[1]))
    assert df is not None or data != WELL_FORMED["table"]
    if data == WELL_FORMED["table"]:
        assert list(df["image"]) == ["a", "b"] and list(df["label"]) == ["cat", "dog"]
    if df is not None:
        assert_clean_ids(df["image"])
        assert df["label"].notna().all()


@FUZZ
@given(raw("image"))
@example(WELL_FORMED["test"])
def test_read_test(root, data):
    write(root, "test.csv", data)
    df = either(lambda: read_test(write_config(root, root, READERS)[1]))
    assert df is not None or data != WELL_FORMED["test"]
    if data == WELL_FORMED["test"]:
        assert list(df["image"]) == ["a", "b"]
    if df is not None:
        assert_clean_ids(df["image"])


@FUZZ
@given(raw("image", "step", "x", "y"))
@example(b"image,step,y\r\n,a\r\n")  # an empty series id: TypeError while writing the error message
@example(b"image,step,x,y,\r\n,a,a,a\r\n")  # the same through a trailing comma in the header
@example(WELL_FORMED["series"])
def test_read_series(root, data):
    write(root, "series.csv", data)
    cfg = write_config(root, root, READERS, data={"train_csv": "series.csv", "step_col": "step"})[1]
    result = either(lambda: read_series(cfg, "train_csv"))
    assert result is not None or data != WELL_FORMED["series"]
    if result is not None:
        series, features = result
        assert series and features
        for key, values in series.items():
            assert isinstance(key, str) and key != "nan"
            assert values.dtype == np.float32 and values.shape[1] == len(features) and len(values)
            assert np.isfinite(values).all()


@FUZZ
@given(raw("image", "label"))
@example(WELL_FORMED["series_labels"])
def test_read_series_labels(root, data):
    write(root, "labels.csv", data)
    cfg = write_config(root, root, READERS, data={"labels_csv": "labels.csv"})[1]
    labels = either(lambda: read_series_labels(cfg, ["a", "b"]))
    assert labels is not None or data != WELL_FORMED["series_labels"]
    if labels is not None:
        assert_clean_ids(labels["image"])
        assert set(labels["image"]) == {"a", "b"} and labels["label"].notna().all()


@FUZZ
@given(raw("image", "text", "label"), st.booleans())
@example(WELL_FORMED["texts"], True)
@example(WELL_FORMED["texts"], False)
def test_read_texts(root, data, labelled):
    write(root, "texts.csv", data)
    cfg = write_config(root, root, READERS, data={"train_csv": "texts.csv", "text_col": "text"})[1]
    df = either(lambda: read_texts(cfg, "train_csv", labelled))
    assert df is not None or data != WELL_FORMED["texts"]
    if df is not None:
        assert_clean_ids(df["image"])
        assert all(isinstance(t, str) for t in df["text"])
        assert not labelled or df["label"].notna().all()


@FUZZ
@given(raw("image", "label", "xmin", "ymin", "xmax", "ymax"))
@example(b"image,label,xmin,ymin,xmax,ymax\n,")  # an empty image id went into the table as NaN
@example(WELL_FORMED["boxes"])
def test_read_box_table(root, data):
    write(root, "boxes.csv", data)
    cfg = write_config(root, root, READERS, data={"train_csv": "boxes.csv"})[1]
    table = either(lambda: read_box_table(cfg))
    assert table is not None or data != WELL_FORMED["boxes"]
    if table is not None:
        assert table["id"].notna().all()
        boxed = table["label"].notna()
        assert (table.loc[boxed, "x2"] > table.loc[boxed, "x1"]).all()
        assert (table.loc[boxed, "y2"] > table.loc[boxed, "y1"]).all()


@FUZZ
@given(raw("image", "label"))
@example(b"image\r\na\r\na\r\n")  # submit accepted duplicate ids in sample_submission.csv and wrote them
@example(b"label\r\na\r\n")  # no id column: KeyError in submit
@example(WELL_FORMED["sample"])
def test_read_sample(root, data):
    write(root, "sample.csv", data)
    sample = either(lambda: read_sample(write_config(root, root, READERS, data={"sample_submission": "sample.csv"})[1]))
    assert sample is not None or data != WELL_FORMED["sample"]
    if data == WELL_FORMED["sample"]:
        assert list(sample["image"]) == ["a", "b", "c"]
    if sample is not None:
        assert_clean_ids(sample["image"])


@FUZZ
@given(st.one_of(raw("image", "label"), submission_bytes(SAMPLE)))
@example(WELL_FORMED["submission"])
def test_submission_checks(root, data):
    write(root, "sub.csv", data)
    cfg = write_config(root, root, READERS)[1]
    sub = either(lambda: read_table(root / "sub.csv", "submission", "image"))
    valid = sub is not None and not refused(lambda: validate(sub, SAMPLE, CLASSES, cfg))
    assert valid or data != WELL_FORMED["submission"]
    if valid:
        assert list(sub["image"]) == list(SAMPLE["image"]) and set(sub["label"].astype(str)) <= set(CLASSES)


@FUZZ
@given(st.one_of(raw("image", "cat", "dog", "owl"), submission_bytes(PROBS)))
@example(b"image,cat,dog,owl\ra,a,a,a\rb,a,a,a\rc,a,a,a")  # a word as a probability: ValueError in check_labels
@example(WELL_FORMED["probabilities"])
def test_probability_submission_checks(root, data):
    write(root, "sub.csv", data)
    sub = either(lambda: read_table(root / "sub.csv", "submission", "image"))
    valid = sub is not None and not refused(lambda: validate(sub, PROBS, CLASSES, write_config(root, root, READERS)[1]))
    assert valid or data != WELL_FORMED["probabilities"]
    if valid:
        values = sub[CLASSES].to_numpy(dtype=np.float64)
        assert ((values >= 0) & (values <= 1)).all()


@FUZZ
@given(st.text(alphabet=" 0123456789.-eEinfaNx\t", max_size=40))
@example(WELL_FORMED["prediction_string"])
def test_prediction_strings(text):
    cfg, sub = load_config(None, []), pd.DataFrame({"image": ["a"], "PredictionString": [text]})
    accepted = not refused(lambda: check_boxes(sub, cfg))
    assert accepted or text != WELL_FORMED["prediction_string"]
    if accepted:
        boxes = parse_boxes(text, cfg.detect.submit_format)
        assert len(boxes) == len(text.split()) // 5
        assert all(np.isfinite([b["score"], b["x1"], b["y1"], b["x2"], b["y2"]]).all() for b in boxes)
