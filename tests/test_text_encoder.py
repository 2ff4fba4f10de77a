"""Pretrained text encoders (model.name=hf:<folder>): a tiny random BERT written here in Hugging Face layout
stands in for a downloaded one (and ../shared's MiniLM, where it exists, for the real thing). Padding never changes
an output, layer-wise LR decay sets the groups it says, batches group similar lengths, every target type trains,
and a run predicts after the original model folder is gone."""

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pipeline.core.config import load_config
from pipeline.core.seeding import LengthGroupedSampler
from pipeline.engine.optim import param_groups
from pipeline.tasks.sequence.encoder import Tokens, build_encoder_model
from pipeline.tasks.sequence.task import SequenceTask, pad
from tests.conftest import SEQ, SHARED, assert_export_submits_the_same, assert_refused, cli, invoke

transformers = pytest.importorskip("transformers")

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "food", "service", "the", "was", "and", "very", "title",
         "body", "a", "day"]
MINILM = SHARED / "weights" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 2-layer, 32-wide BERT with random weights and a WordPiece vocabulary, saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))  # the argument is vocab_file (4.x), vocab (5.x)
    tokenizer.save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def write_reviews(root, n=60, tags=False):
    """Reviews with a title and a body; positive words make a positive review (and a higher score)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    rows = []
    for i in range(n):
        good = i % 2 == 0
        words = rng.choice(WORDS[:3] if good else WORDS[3:6], 3).tolist() + rng.choice(WORDS[6:], 3).tolist()
        rows.append({"id": i, "title": " ".join(words[:2]), "body": " ".join(words[2:]),
                     "label": "pos" if good else "neg", "score": float(good) * 3 + rng.normal(0, 0.3),
                     "grade": int(good) * 2 + int(rng.integers(0, 2)), "food": int(good), "service": int(i % 3 == 0)})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = pd.DataFrame({"id": range(n, n + 6), "title": ["good day", "bad day"] * 3, "body": ["great food"] * 3 + ["awful food"] * 3})
    test.to_csv(root / "test.csv", index=False)
    test[["id"]].assign(label="pos").to_csv(root / "sample_submission.csv", index=False)
    return root


def head(*sets: str):
    """A config for build_encoder_model: mean pooling, no dropout, unless told."""
    return load_config(None, ["model.drop_rate=0", *sets])


def encoder_base(folder) -> dict:
    return {**SEQ, "data": {"id_col": "id", "text_cols": ["title", "body"], "target_col": "label"},
            "model": {"name": f"hf:{folder}", "drop_rate": 0.1}, "predict": {"tta": "none"},
            "train": {**SEQ["train"], "base_lr": 2e-2, "epochs": 2}}


def test_padding_does_not_change_the_output(tiny_bert):
    tokens = Tokens(tiny_bert, 0)
    model = build_encoder_model(head(), tiny_bert, 3, tokens.pad_id, pretrained=True).eval()
    items = [torch.as_tensor(x) for x in tokens.encode(["good food", ("the title", "a very very bad body"), "fine"])]
    x, mask = pad(items)
    with torch.no_grad():
        batched = model(x, mask)
        for i, item in enumerate(items):
            torch.testing.assert_close(batched[i], model(item[None], torch.ones(1, len(item), dtype=torch.bool))[0],
                                       atol=1e-5, rtol=1e-4)
    assert tokens.tokenizer.convert_ids_to_tokens(items[1].tolist()) == \
        ["[CLS]", "the", "title", "[SEP]", "a", "very", "very", "bad", "body", "[SEP]"]  # two columns, one separator


def test_layer_lr_decay_groups(tiny_bert):
    model = build_encoder_model(head(), tiny_bert, 2, 0, pretrained=True)
    groups = param_groups(model, lr=1.0, weight_decay=0.05, backbone_lr_mult=0.5, layer_lr_decay=0.8)
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr[id(named["head.weight"])] == 1.0
    assert lr[id(named["encoder.encoder.layer.1.output.dense.weight"])] == pytest.approx(0.5 * 0.8)
    assert lr[id(named["encoder.encoder.layer.0.output.dense.weight"])] == pytest.approx(0.5 * 0.8 ** 2)
    assert lr[id(named["encoder.embeddings.word_embeddings.weight"])] == pytest.approx(0.5 * 0.8 ** 3)
    assert lr[id(named["encoder.pooler.dense.weight"])] == pytest.approx(0.5)
    assert sum(len(g["params"]) for g in groups) == len(named)
    flat = param_groups(model, lr=1.0, weight_decay=0.05, backbone_lr_mult=0.5)
    assert {g["lr"] for g in flat} == {1.0, 0.5}


def test_length_grouped_batches_are_seeded_and_pad_less():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, 1000).tolist()
    sampler = LengthGroupedSampler(torch.utils.data.RandomSampler(range(1000), generator=torch.Generator().manual_seed(0)),
                                   lengths, batch_size=16, seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(first) == list(range(1000))

    def padded(order):  # tokens in batches padded to their longest item
        return sum(16 * max(lengths[i] for i in order[j:j + 16]) for j in range(0, len(order), 16))

    assert padded(first) < 0.7 * padded(rng.permutation(1000).tolist())
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.parametrize("target, sections", [
    ("multiclass", {}),
    ("binary", {"data": {"target_type": "binary"}}),
    ("regression", {"data": {"target_col": "score"}}),
    ("ordinal", {"data": {"target_col": "grade", "target_type": "ordinal"}}),
    ("multilabel", {"data": {"target_col": "tags", "label_cols": ["food", "service"]}}),
])
def test_every_target_type_trains(target, sections, tiny_bert, tmp_path, make_config):
    root = write_reviews(tmp_path / "reviews")
    path, cfg = make_config(root, base=encoder_base(tiny_bert), **sections)
    cli("prepare", "--config", path)
    assert json.loads((cfg.run_dir / "folds.json").read_text())["target_type"] == target
    cli("train", "--config", path, "--fold", "0")
    oof = pd.read_parquet(cfg.run_dir / "fold0" / "oof.parquet")
    assert len(oof) == 20 and np.isfinite(oof.drop(columns=["id", "target", "fold"]).to_numpy(float)).all()
    # it learned the words: its outputs rank the positive reviews (even ids) above the negative ones
    positive = oof["id"].astype(int) % 2 == 0
    outputs = oof.drop(columns=["id", "target", "fold"])
    assert outputs.shape[1] == {"multiclass": 2, "multilabel": 2}.get(target, 1)  # one probability or value
    output = {"multiclass": "pos", "multilabel": "food"}.get(target, outputs.columns[0])
    assert roc_auc_score(positive, outputs[output]) > 0.8, oof  # a constant scores 0.5


def test_encoder_through_the_cli_and_without_its_folder(tiny_bert, tmp_path, make_config):
    """The five stages with a GRU beside the encoder; then the original folder goes and the run still predicts
    the same from its checkpoints and runs/<exp>/encoder/ (as an offline notebook would)."""
    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    root = write_reviews(tmp_path / "reviews")
    path, cfg = make_config(root, base=encoder_base(folder), name="enc", train={"epochs": 3})
    gru, _ = make_config(root, base={**encoder_base(folder), "model": {"name": "gru"}}, name="gru",
                         sequence={"min_freq": 1})
    for p in (path, gru):
        cli("prepare", "--config", p)
        cli("train", "--config", p, "--fold", "all")
        cli("predict", "--config", p)
    kept = sorted(f.name for f in (cfg.run_dir / "encoder").iterdir())
    assert "config.json" in kept and "tokenizer.json" in kept and not any("safetensors" in f for f in kept)
    scores = json.loads((cfg.run_dir / "scores.json").read_text())
    assert scores["cv"] > 0.8  # the words decide the label: a fine-tuned encoder learns them
    cli("tune", "--config", path, "--trials", "2", "--set", "train.epochs=1", "--param",
        "train.layer_lr_decay=uniform:0.7:1")
    trials = pd.read_csv(cfg.run_dir / "tune" / "trials.csv")
    assert len(trials) == 2 and (trials["state"] == "complete").all() and trials["train.layer_lr_decay"].nunique() == 2
    before = pd.read_parquet(cfg.run_dir / "test.parquet")
    shutil.rmtree(folder)
    cli("predict", "--config", path)
    pd.testing.assert_frame_equal(pd.read_parquet(cfg.run_dir / "test.parquet"), before)
    cli("report", "enc", "--runs-dir", cfg.runs_dir)
    assert (cfg.run_dir / "report.html").is_file()
    cli("ensemble", "enc", "gru", "--method", "weighted", "--name", "blend", "--runs-dir", cfg.runs_dir)
    cli("submit", "blend", "--runs-dir", cfg.runs_dir)
    sub = pd.read_csv(tmp_path / "subs" / "blend.csv")
    assert sub["id"].tolist() == list(range(60, 66)) and set(sub["label"]) <= {"pos", "neg"}
    blended = pd.read_parquet(cfg.run_dir.parent / "blend" / "test.parquet").set_index("id")["pos"]
    assert blended[["60", "62"]].min() > blended[["63", "65"]].max()  # "good day, great food" over "bad ..., awful"
    export = assert_export_submits_the_same(cfg.runs_dir, "blend", root, tmp_path)  # tokenizer and config travel
    assert sorted(f.name for f in (export / "enc" / "encoder").iterdir()) == kept


def test_missing_or_incomplete_folders_are_refused(tiny_bert, tmp_path, make_config):
    root = write_reviews(tmp_path / "reviews")
    path, _ = make_config(root, base=encoder_base(tmp_path / "nowhere"))
    cli("prepare", "--config", path)
    assert_refused(invoke("train", "--config", path, "--fold", "0"), "no such folder", "nothing is downloaded")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_bert, partial)
    (partial / "model.safetensors").unlink()
    assert_refused(invoke("train", "--config", path, "--fold", "0", "--set", f"model.name=hf:{partial}"),
                   "is incomplete", "weights")


def test_without_transformers_the_extra_is_named(tiny_bert, monkeypatch):
    from pipeline.core.errors import UserError

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(UserError, match=r"pip install -e '\.\[text\]'"):
        Tokens(tiny_bert, 0)


@pytest.mark.skipif(not MINILM.is_dir(), reason="needs ../shared/weights/all-MiniLM-L6-v2")
def test_minilm_loads_its_pretrained_weights():
    """Mean-pooled MiniLM sentence vectors as its README measured them: similar reviews close, unrelated far."""
    tokens = Tokens(MINILM, 0)
    model = build_encoder_model(head(), MINILM, 2, tokens.pad_id, pretrained=True).eval()
    texts = ["The food was delicious and the staff were friendly.", "Great meal, lovely service.",
             "My phone battery died after two days."]
    x, mask = pad([torch.as_tensor(t) for t in tokens.encode(texts)])
    with torch.no_grad():
        states = model.encoder(input_ids=x, attention_mask=mask.long()).last_hidden_state
    m = mask.unsqueeze(-1).float()
    vectors = torch.nn.functional.normalize((states * m).sum(1) / m.sum(1), dim=1)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.48, abs=0.02)
    assert abs(float(vectors[0] @ vectors[2])) < 0.1


def test_sequence_task_rebuilds_from_the_run_copy(tiny_bert, tmp_path, make_config):
    root = write_reviews(tmp_path / "reviews")
    _, cfg = make_config(root, base=encoder_base(tiny_bert))
    task = SequenceTask(cfg, ["neg", "pos"])
    rows = pd.DataFrame({"id": [str(i) for i in range(10)], "target": ["pos", "neg"] * 5})
    state = task.fit_fold(rows)
    trained = task.build_model()
    again = SequenceTask(load_config(None, [f"runs_dir={cfg.runs_dir}", f"name={cfg.name}", "task=sequence",
                                            f"data.root={root}", "data.id_col=id", "data.text_cols=[title, body]",
                                            "data.target_col=label", "model.name=hf:/gone"]), ["neg", "pos"])
    again.load_fold(state)
    rebuilt = again.build_model()
    rebuilt.load_state_dict(trained.state_dict())
    assert again.build_dataset(rows, train=False).lengths == task.build_dataset(rows, train=False).lengths


def test_options_train_a_step(tiny_bert):
    """CLS pooling, multi-sample dropout and gradient checkpointing: one AdamW step moves every weight that has
    a gradient, and the dropout samples average to one output per row."""
    tokens = Tokens(tiny_bert, 8)
    model = build_encoder_model(head("model.pooling=cls", "model.drop_rate=0.3", "model.dropout_samples=4",
                                     "train.grad_checkpointing=true"), tiny_bert, 2, tokens.pad_id, pretrained=True).train()
    x, mask = pad([torch.as_tensor(t) for t in tokens.encode(["good food and very very good service indeed", "bad"])])
    assert x.shape[1] == 8  # truncated at tokenisation to sequence.max_len, special tokens kept
    assert getattr(model.encoder, "is_activation_checkpointing", None) or model.encoder.is_gradient_checkpointing
    before = [p.detach().clone() for p in model.parameters()]
    out = model(x, mask)
    assert out.shape == (2, 2)
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 0])).backward()
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert sum(moved) > 0.9 * len(moved)


def test_bench_times_the_text_loop_on_the_loaders_batches(tiny_bert, tmp_path, make_config):
    from pipeline.stages import prepare
    from pipeline.workflows import bench

    root = write_reviews(tmp_path / "reviews")
    _, cfg = make_config(root, base=encoder_base(tiny_bert))
    prepare.run(cfg)
    result = bench.training(cfg, 2, 1, chunk=1)
    assert result["bare"] > 0 and result["pipeline"] > 0 and np.isfinite(result["ratio"])
    rows = bench.task_rows(cfg, 2, 1, "(f) text")
    assert [r[0][:9] for r in rows] == ["(f) text,"] * 2 and rows[1][3] != "error"


def test_inference_sorted_by_length_comes_back_in_row_order(tiny_bert, tmp_path, make_config):
    """The validation/test loader runs longest first; infer's outputs are each row's own, as one row at a time."""
    from pipeline.data.tables import build_loader
    from pipeline.engine.loop import infer

    root = write_reviews(tmp_path / "reviews")
    _, cfg = make_config(root, base=encoder_base(tiny_bert))
    task = SequenceTask(cfg, ["neg", "pos"])
    rows = pd.DataFrame({"id": [str(i) for i in range(12)], "target": ["pos", "neg"] * 6})
    task.fit_fold(rows)
    model = task.build_model().eval()
    data = task.build_dataset(rows, train=False)
    data.items[3] = torch.cat([data.items[3][:-1], data.items[3][1:]])  # a long row in the middle
    data.lengths[3] = len(data.items[3])
    loader = build_loader(data, cfg, False, 5)
    assert list(loader.sampler)[0] == 3
    batched = infer(task, model, loader, torch.device("cpu"), torch.float32)[0]
    with torch.no_grad():
        alone = [task.target.activate(model(x[None], torch.ones(1, len(x), dtype=torch.bool)))[0].numpy()
                 for x in data.items]
    np.testing.assert_allclose(batched, np.stack(alone), atol=1e-5)


def test_the_run_copy_follows_the_model_it_was_trained_on(tiny_bert, tmp_path):
    from pipeline.tasks.sequence.encoder import keep_files

    run = tmp_path / "run" / "encoder"
    keep_files(tiny_bert, run)
    stamp = (run / "config.json").stat().st_mtime_ns
    keep_files(tiny_bert, run)  # the same folder again: left as it is
    assert (run / "config.json").stat().st_mtime_ns == stamp
    other = tmp_path / "other"
    shutil.copytree(tiny_bert, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    keep_files(other, run)  # retrained on another model: its files replace the old copy
    assert json.loads((run / "config.json").read_text())["num_hidden_layers"] == 1
    assert sorted(p.name for p in run.parent.iterdir()) == ["encoder"]  # no temporary or stale folders left
