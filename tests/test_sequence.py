"""Sequences: padding never changes an output, preprocessing sees the training fold only, each model trains,
bad series are named, and the five stages run through the CLI on a small long-table competition."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import Config, load_config
from pipeline.core.errors import UserError
from pipeline.stages import prepare
from pipeline.tasks.sequence.models import SEQUENCE_MODELS, build_sequence_model
from pipeline.tasks.sequence.task import SequenceDataset, SequenceTask, pad
from tests.conftest import SEQ, assert_export_submits_the_same, cli, oof_accuracy, write_series_competition


@pytest.fixture
def series_root(tmp_path):
    return write_series_competition(tmp_path / "series")


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
@pytest.mark.parametrize("tokens", [False, True])
def test_padding_does_not_change_the_output(name, tokens):
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.name={name}", "sequence.dim=16", "sequence.filters=8", "sequence.hidden=8",
                             "sequence.heads=2", "sequence.layers=1"])
    model = build_sequence_model(cfg, 0 if tokens else 3, 50 if tokens else 0, 4).eval()
    lengths = [7, 19, 12]
    items = [torch.randint(2, 50, (n,)) if tokens else torch.randn(n, 3) for n in lengths]
    x, mask = pad(items)
    with torch.no_grad():
        batched = model(x, mask)
        for i, item in enumerate(items):
            alone = model(item[None], torch.ones(1, len(item), dtype=torch.bool))
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_one_training_step_per_model(name, series_root, make_config):
    _, cfg = make_config(series_root, base=SEQ, model={"name": name})
    prepare.run(cfg)
    folds = pd.read_csv(cfg.run_dir / "folds.csv", dtype={"id": str})
    task = SequenceTask(cfg, ["class0", "class1", "class2"])
    task.fit_fold(folds[folds.fold != 0])
    model = task.build_model().train()
    data = task.build_dataset(folds[folds.fold != 0], train=True)
    batch = SequenceDataset.collate([data[i] for i in range(8)])
    before = [p.detach().clone() for p in model.parameters()]
    loss = task.loss(model, batch)
    loss.backward()
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    assert torch.isfinite(loss)
    stepped = [(a, b) for a, b in zip(before, model.parameters(), strict=True) if b.grad is not None]
    assert stepped and all(not torch.equal(a, b) for a, b in stepped)  # some got gradients, all of those moved


def test_normalisation_comes_from_the_training_fold_only(series_root, make_config):
    _, cfg = make_config(series_root, base=SEQ)
    prepare.run(cfg)
    folds = pd.read_csv(cfg.run_dir / "folds.csv", dtype={"id": str})
    task = SequenceTask(cfg, ["class0", "class1", "class2"])
    train_rows = folds[folds.fold != 1]
    state = task.fit_fold(train_rows)
    long = pd.read_csv(series_root / "train.csv", dtype={"series_id": str})
    own = long[long.series_id.isin(train_rows.id)][["ch0", "ch1", "ch2"]]
    np.testing.assert_allclose(state["mean"], own.mean().to_numpy(), atol=1e-5)
    np.testing.assert_allclose(state["std"], own.std(ddof=0).to_numpy(), atol=1e-5)
    everything = long[["ch0", "ch1", "ch2"]].mean().to_numpy()
    assert not np.allclose(state["mean"], everything, atol=1e-6)


def test_vocabulary_comes_from_the_training_fold_only(tmp_path):
    root = tmp_path / "text"
    root.mkdir()
    texts = ["good food good", "bad food bad", "good service", "bad service", "zebra zebra only here", "fine fine"]
    pd.DataFrame({"id": range(6), "text": texts, "label": ["p", "n", "p", "n", "p", "n"]}).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": [9], "text": ["good"]}).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"id": [9], "label": ["p"]}).to_csv(root / "sample_submission.csv", index=False)
    cfg = load_config(None, ["task=sequence", f"data.root={root}", "data.id_col=id", "data.text_col=text",
                             "data.target_col=label", "sequence.min_freq=1"])
    task = SequenceTask(cfg, ["n", "p"])
    state = task.fit_fold(pd.DataFrame({"id": ["0", "1", "2", "3"], "target": ["p", "n", "p", "n"]}))
    assert state["tokens"][:2] == ["<pad>", "<unk>"]
    assert set(state["tokens"][2:]) == {"good", "bad", "food", "service"}  # nothing from rows 4-5
    assert task._encode("4").tolist() == [1, 1, 1, 1]  # an unseen text is all <unk>


@pytest.mark.parametrize("edit, message", [
    (lambda t, lab: (t.assign(ch1=t.ch1.astype(object).where(t.index != 5, "1.2.3")), lab), "non-numeric value '1.2.3'"),
    (lambda t, lab: (t.assign(ch2=t.ch2.where(t.index != 5)), lab), "empty value in column 'ch2'"),
    (lambda t, lab: (t, lab[lab.series_id != "s3"]), "series s3 have no row"),
    (lambda t, lab: (t, lab.assign(label=lab.label.where(lab.series_id != "s2"))), "series s2 have no label"),
])
def test_bad_series_are_named(series_root, make_config, edit, message):
    train = pd.read_csv(series_root / "train.csv")
    labels = pd.read_csv(series_root / "train_labels.csv")
    train, labels = edit(train, labels)
    train.to_csv(series_root / "train.csv", index=False)
    labels.to_csv(series_root / "train_labels.csv", index=False)
    _, cfg = make_config(series_root, base=SEQ)
    with pytest.raises(UserError, match=message) as err:
        prepare.run(cfg)
    if "value" in message:
        assert "series 's0'" in str(err.value)
    assert not (cfg.run_dir / "folds.csv").exists()


def test_sequence_through_the_cli(series_root, make_config, tmp_path):
    path_a, cfg_a = make_config(series_root, base=SEQ, name="a", model={"name": "inception"})
    path_b, _ = make_config(series_root, base=SEQ, name="b", model={"name": "gru"}, predict={"tta": "none"})
    for path in (path_a, path_b):
        cli("prepare", "--config", path)
        cli("train", "--config", path, "--fold", "all")
        cli("predict", "--config", path)
    assert (cfg_a.run_dir / "fold0" / "preprocess.json").is_file()
    scores = json.loads((cfg_a.run_dir / "scores.json").read_text())
    assert scores["tta"] == "crops" and scores["rows"] == 48
    oof = pd.read_parquet(cfg_a.run_dir / "oof.parquet")
    assert scores["cv"] == pytest.approx(oof_accuracy(oof, ["class0", "class1", "class2"]))  # the OOF file's CV
    runs = cfg_a.runs_dir
    cli("ensemble", "a", "b", "--method", "weighted", "--name", "blend", "--runs-dir", runs)
    cli("submit", "blend", "--runs-dir", runs)
    sub = pd.read_csv(tmp_path / "subs/blend.csv")
    assert sub["series_id"].tolist() == pd.read_csv(series_root / "sample_submission.csv")["series_id"].tolist()
    assert set(sub["label"]) <= {"class0", "class1", "class2"}
    assert_export_submits_the_same(runs, "blend", series_root, tmp_path)  # per-fold channel statistics travel


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_members_train_apart_and_predict_their_mean(kind):
    from pipeline.tasks.sequence.models import Members, repeat_truths

    torch.manual_seed(0)
    cfg = Config()
    cfg.model.name, cfg.sequence.dim, cfg.sequence.filters, cfg.sequence.layers = "inception", 8, 4, 1
    width = 1 if kind != "multiclass" else 3
    nets = [build_sequence_model(cfg, 2, 0, width) for _ in range(3)]
    model = Members(nets, kind)
    x, mask = torch.randn(4, 10, 2), torch.ones(4, 10, dtype=torch.bool)
    assert model.train()(x, mask).shape == (12, width)  # each member's rows: each its own loss
    assert repeat_truths(torch.zeros(12, width), torch.arange(4)).tolist() == [0, 1, 2, 3] * 3
    model.eval()
    outs = torch.stack([n(x, mask) for n in nets])
    activate = {"multiclass": lambda o: o.softmax(-1), "binary": torch.sigmoid, "regression": lambda o: o}[kind]
    assert torch.allclose(activate(model(x, mask)), activate(outs).mean(0), atol=1e-5)


def test_several_networks_per_fold_train_through_the_cli(series_root, make_config):
    path, cfg = make_config(series_root, base=SEQ, model={"name": "inception"}, sequence={"networks": 2},
                            cv={"folds": 2}, train={"epochs": 1})
    for command in ("prepare", "train", "predict"):
        cli(command, "--config", path)
    state = torch.load(cfg.run_dir / "fold0" / "best.pt", weights_only=True)
    assert any(k.startswith("members.1.") for k in state["model"])  # two networks in the fold's checkpoint
