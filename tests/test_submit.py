import re

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.data.submission import decode, validate

CFG = load_config(None, ["data.id_col=image", "data.target_col=label"])
CLASSES = ["cat", "dog", "owl"]
SAMPLE = pd.DataFrame({"image": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "label": "cat"})


def good():
    return pd.DataFrame({"image": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "label": ["dog", "owl", "cat", "dog"]})


def test_a_good_submission_passes():
    validate(good(), SAMPLE, CLASSES, CFG)


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.assign(image=["a.jpg", "b.jpg", "c.jpg", "x.jpg"]), "ids that are not in sample_submission: row 5 is 'x.jpg'"),
    (lambda s: s.iloc[[1, 0, 2, 3]].reset_index(drop=True), "ids in a different order"),
    (lambda s: s.iloc[:3], "has 3 rows, sample_submission 4"),
    (lambda s: s.assign(label=["dog", None, "cat", "dog"]), "empty values in 1 rows (first: row 3)"),
    (lambda s: s.assign(label=["dog", "emu", "cat", "dog"]), "row 3 has label 'emu', which train.csv never uses"),
    (lambda s: s.rename(columns={"label": "class"}), "columns ['image', 'class'] differ"),
])
def test_validator_catches(damage, message):
    with pytest.raises(UserError, match=re.escape(message)):
        validate(damage(good()), SAMPLE, CLASSES, CFG)


def test_decode_follows_sample_order_and_keeps_label_types():
    test = pd.DataFrame({"id": ["d.jpg", "c.jpg", "b.jpg", "a.jpg"], "0": [0.9, 0.1, 0.2, 0.3], "7": [0.1, 0.9, 0.8, 0.7]})
    sub = decode(test, SAMPLE, CFG, [0, 7])
    assert list(sub["image"]) == list(SAMPLE["image"]) and list(sub["label"]) == [7, 7, 7, 0]
    validate(sub, SAMPLE, [0, 7], CFG)


def test_decode_writes_probabilities_when_the_sample_has_class_columns():
    sample = pd.DataFrame({"image": ["a.jpg", "b.jpg"], "owl": 0.0, "cat": 0.0, "dog": 0.0})
    test = pd.DataFrame({"id": ["b.jpg", "a.jpg"], "cat": [0.1, 0.6], "dog": [0.2, 0.3], "owl": [0.7, 0.1]})
    sub = decode(test, sample, CFG, CLASSES)
    assert list(sub.columns) == ["image", "owl", "cat", "dog"]
    assert np.allclose(sub.loc[0, ["owl", "cat", "dog"]].to_numpy(dtype=float), [0.1, 0.6, 0.3])
    validate(sub, sample, CLASSES, CFG)


def test_missing_prediction_for_a_sample_id():
    test = pd.DataFrame({"id": ["a.jpg", "b.jpg"], "cat": [1.0, 1.0], "dog": [0.0, 0.0], "owl": [0.0, 0.0]})
    with pytest.raises(UserError, match="2 ids of sample_submission have no prediction"):
        decode(test, SAMPLE, CFG, CLASSES)
