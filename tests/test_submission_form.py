"""The submission's form follows sample_submission: labels where it shows class names, probabilities where it shows
fractions, and the metric only for 0/1 placeholders; submit (and infer) refuse a file in the other form.

The binary shapes are real ones: UEA series competitions whose sample holds the labels 1/2 (two of four scored 0.0
when probabilities were written), yes/no labels, Titanic (0/1 labels, accuracy) and a Kaggle AUC competition (0/1
placeholders, probabilities scored).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import load_config
from pipeline.core.errors import UserError
from pipeline.data.labels import settle_target
from pipeline.data.submission import validate
from pipeline.scoring.targets import EITHER, LABELS, SCORES, build_target, column_form
from tests.conftest import SEQ, cli


def write_binary_series(root, labels: tuple, sample_values, n_train=36, n_test=12, seed=0):
    """Series whose class (labels[0] or labels[1]) sets a sine's frequency; sample_submission's label column holds
    sample_values (one value, or one per row)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def block(ids):
        rows, names = [], []
        for sid in ids:
            y = int(sid % 2)
            t = np.arange(20)
            values = np.sin(t * (y + 1) * 0.6) + rng.normal(0, 0.2, 20)
            rows += [{"series_id": sid, "step": s, "ch0": v} for s, v in zip(t, values, strict=True)]
            names.append({"series_id": sid, "label": labels[y]})
        return pd.DataFrame(rows), pd.DataFrame(names)

    train, train_labels = block(range(n_train))
    test, solution = block(range(n_train, n_train + n_test))
    train.to_csv(root / "train.csv", index=False)
    train_labels.to_csv(root / "train_labels.csv", index=False)
    test.to_csv(root / "test.csv", index=False)
    solution.to_csv(root / "solution.csv", index=False)
    values = sample_values if np.ndim(sample_values) else [sample_values] * n_test
    solution.assign(label=values).to_csv(root / "sample_submission.csv", index=False)
    return root


SHAPES = {  # name: (training labels, sample values, --set overrides, form written, metric, prepare's words)
    "1/2 labels (UEA)": ((1, 2), 1, [], LABELS, "accuracy", "holds 1 in 'label', labels train.csv uses"),
    "yes/no labels": (("no", "yes"), "no", [], LABELS, "accuracy", "asks for one label per row"),
    "yes/no labels, binary": (("no", "yes"), "no", ["data.target_type=binary"], LABELS, "accuracy", "class names"),
    "0/1 labels, accuracy (Titanic)": ((0, 1), [0, 1] * 6, ["train.metric=accuracy"], LABELS, "accuracy",
                                       "may be placeholders: accuracy scores labels"),
    "0/1 placeholders, AUC": ((0, 1), 0, [], SCORES, "roc_auc", "wants train.metric=accuracy"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_binary_shapes_through_prepare_train_predict_submit(tmp_path, make_config, caplog, shape):
    labels, sample_values, overrides, form, metric, words = SHAPES[shape]
    root = write_binary_series(tmp_path / "comp", labels, sample_values)
    path, cfg = make_config(root, base=SEQ, model={"name": "gru"}, train={"epochs": 2}, predict={"tta": "none"})
    sets = [a for o in overrides for a in ("--set", o)]
    with caplog.at_level(logging.INFO):
        cli("prepare", "--config", path, *sets)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("submission: ")]
    assert len(said) == 1 and words in said[0], said
    assert json.loads((cfg.run_dir / "folds.json").read_text())["metric"] == metric
    cli("train", "--config", path, "--fold", "all", *sets)
    cli("predict", "--config", path, *sets)
    assert json.loads((cfg.run_dir / "scores.json").read_text())["metric"] == metric
    cli("submit", cfg.name, "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(f"{cfg.submissions_dir}/{cfg.name}.csv", dtype=str)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns) and sub["series_id"].tolist() == sample["series_id"].tolist()
    if form == LABELS:
        assert set(sub["label"]) <= {str(v) for v in labels}, sub.head()
    else:
        p = pd.to_numeric(sub["label"])
        assert p.between(0, 1).all() and p.nunique() > 2, sub.head()


def test_an_auto_metric_follows_the_sample_in_every_later_stage(tmp_path, make_config):
    """prepare settles accuracy for a labels sample; train and predict from the user's config (metric auto) read it
    from folds.json instead of taking the binary default (ROC AUC)."""
    root = write_binary_series(tmp_path / "comp", (1, 2), 1)
    path, cfg = make_config(root, base=SEQ, model={"name": "gru"}, train={"epochs": 1}, predict={"tta": "none"})
    cli("prepare", "--config", path)
    cli("train", "--config", path, "--fold", "0")
    trained_with = torch.load(cfg.run_dir / "fold0" / "best.pt", weights_only=False)["config"]
    assert trained_with["train"]["metric"] == "accuracy"  # the recipe the fold was trained (and early-stopped) with
    assert load_config(cfg.run_dir / "config.yaml").train.metric == "accuracy"


# -- the rule, column by column ---------------------------------------------------------------------------------
@pytest.mark.parametrize("values, classes, kind", [
    (["1", "2", "1"], [1, 2], LABELS),  # UEA: class names 1/2
    ([1, 1, 1], [1, 2], LABELS),  # whole numbers that are training labels other than {0, 1}
    (["yes", "no"], ["no", "yes"], LABELS),
    ([0.5, 0.5], [0, 1], SCORES),
    ([0, 1, 0], [0, 1], EITHER),  # Titanic's gender_submission, or placeholders
    ([0, 0], ["cat", "dog"], EITHER),  # placeholders for text labels
    ([3, 7], [0, 1], LABELS),  # numbers outside [0, 1] cannot be probabilities
])
def test_a_sample_column_asks_for_labels_scores_or_either(values, classes, kind):
    assert column_form(pd.Series(values), classes, "label").kind == kind


def binary_cfg(tmp_path, sample_values, classes=(1, 2), **data):
    sample = pd.DataFrame({"id": range(4), "label": sample_values})
    sample.to_csv(tmp_path / "sample_submission.csv", index=False)
    cfg = load_config(overrides=[f"data.root={tmp_path}", "data.id_col=id"])
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg, pd.read_csv(tmp_path / "sample_submission.csv"), list(classes)


def test_a_probability_file_for_a_labels_sample_is_refused_in_one_line(tmp_path):
    cfg, sample, classes = binary_cfg(tmp_path, [1, 1, 1, 1])
    settle_target(cfg, "binary", classes)
    target = build_target(cfg, classes)
    probabilities = sample.assign(label=[0.99982, 0.2, 0.7, 0.1])
    with pytest.raises(UserError) as refused:
        validate(probabilities, sample, target, cfg)
    message = str(refused.value)
    assert "\n" not in message and "column 'label'" in message and "0.99982" in message
    assert "0.99982 is a probability where a label is asked for (train.csv uses 1, 2" in message
    assert "sample_submission holds 1 in 'label', labels train.csv uses" in message
    validate(sample.assign(label=[1, 2, 2, 1]), sample, target, cfg)  # labels pass
    with pytest.raises(UserError, match="has label 3, which train.csv never uses"):
        validate(sample.assign(label=[1, 2, 3, 1]), sample, target, cfg)


def test_labels_for_a_fractions_sample_are_refused(tmp_path):
    cfg, sample, classes = binary_cfg(tmp_path, [0.5] * 4, classes=("no", "yes"))
    settle_target(cfg, "binary", classes)
    with pytest.raises(UserError, match="not a probability in .0, 1.; sample_submission holds fractions"):
        validate(sample.assign(label=["yes", "no", "no", "yes"]), sample, build_target(cfg, classes), cfg)


def test_fractions_where_the_sample_shows_whole_grades_are_refused(tmp_path):
    cfg, sample, _ = binary_cfg(tmp_path, [0, 0, 0, 0])
    cfg.train.metric = "qwk"
    grades = [0.0, 1.0, 2.0]
    settle_target(cfg, "ordinal", grades)
    target = build_target(cfg, grades)
    with pytest.raises(UserError, match="1.4 is not a grade train.csv uses .sample_submission holds whole numbers"):
        validate(sample.assign(label=[0.0, 1.4, 2.0, 1.0]), sample, target, cfg)
    validate(sample.assign(label=[0.0, 1.0, 2.0, 1.0]), sample, target, cfg)
    assert list(target.submission_values(np.array([[0.2], [1.7]]), sample, "label", {})) == [0.0, 2.0]


def test_submission_form_overrides_the_evidence(tmp_path):
    cfg, sample, classes = binary_cfg(tmp_path, [0, 0, 0, 0], classes=(0, 1), submission_form="labels")
    settle_target(cfg, "binary", classes)
    assert cfg.train.metric == "accuracy"  # labels asked for: the auto metric scores labels
    target = build_target(cfg, classes)
    assert list(target.submission_values(np.array([[0.2], [0.9], [0.6], [0.4]]), sample, "label", {})) == [0, 1, 1, 0]


def test_one_column_per_class_asks_for_probabilities_scored_by_logloss(tmp_path):
    """Kaggle's per-class layout (Otto: one-hot 0/1 placeholders) wants probabilities, not a one-hot decision."""
    sample = pd.DataFrame({"id": range(3), "a": [1, 1, 1], "b": [0, 0, 0], "c": [0, 0, 0]})
    sample.to_csv(tmp_path / "sample_submission.csv", index=False)
    cfg = load_config(overrides=[f"data.root={tmp_path}", "data.id_col=id"])
    settle_target(cfg, "multiclass", ["a", "b", "c"])
    assert cfg.train.metric == "logloss"


def test_submit_writes_the_form_of_the_sample_it_reads(tmp_path, make_config):
    """Through the CLI: fractions in the sample give probabilities; the same predictions submitted against a sample
    of labels (a refreshed competition file) give labels, validated as labels."""
    root = write_binary_series(tmp_path / "comp", (1, 2), 0.5)
    path, cfg = make_config(root, base=SEQ, model={"name": "gru"}, train={"epochs": 1}, predict={"tta": "none"},
                            data={"target_type": "binary"})
    cli("prepare", "--config", path)
    cli("train", "--config", path, "--fold", "all")
    cli("predict", "--config", path)
    cli("submit", cfg.name, "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(f"{cfg.submissions_dir}/{cfg.name}.csv")
    assert pd.to_numeric(sub["label"]).between(0, 1).all()  # fractions asked for
    pd.read_csv(root / "sample_submission.csv").assign(label=1).to_csv(root / "sample_submission.csv", index=False)
    cli("submit", cfg.name, "--runs-dir", cfg.runs_dir)
    assert set(pd.read_csv(f"{cfg.submissions_dir}/{cfg.name}.csv")["label"]) <= {1, 2}
