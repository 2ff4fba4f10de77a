"""Sequence classification: series (long tables) or texts, with 1D-CNN, GRU/LSTM or transformer models.

Outputs are class probabilities (tasks.base.ClassProbabilities), so OOF files, ensembling and submissions are
those of classification. What differs: per-fold preprocessing (channel statistics or a vocabulary fitted on the
training fold and saved as fold{k}/preprocess.json), padded batches with masks, time augmentation and crop TTA.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.seeding import sample_generator, unpack
from pipeline.data.duplicates import text_hashes
from pipeline.data.labels import label_set, settle_target
from pipeline.data.submission import score_against_solution
from pipeline.data.tables import check_test_labels
from pipeline.engine.task import Demo
from pipeline.scoring.tta import VIEWS, View
from pipeline.tasks.base import ClassProbabilities
from pipeline.tasks.sequence.data import (
    TEXT,
    HFTokenizer,
    Normaliser,
    Vocabulary,
    read_series,
    read_series_labels,
    read_texts,
    text_columns,
)
from pipeline.tasks.sequence.demo_data import write_digit_series_competition
from pipeline.tasks.sequence.encoder import (
    Tokens,
    build_encoder_model,
    check_folder,
    encoder_folder,
    keep_files,
)
from pipeline.tasks.sequence.models import Members, build_sequence_model, repeat_truths
from pipeline.tasks.sequence.rocket import ROCKET_KERNELS, ROCKETS, RocketFeatures, RocketModel

# auto is no TTA: on 10 BasicMotions/JapaneseVowels runs crops never raised CV and lowered it on 7 (1.0 -> 0.95).
log = logging.getLogger(__name__)


def warn_long(cfg: Config, lengths: dict, table: str) -> None:
    """A warning, at prepare, where rows are longer than sequence.warn_len and nothing crops them (max_len 0):
    padded whole, such a row fails late (memory) or crawls."""
    s = cfg.sequence
    long = {i: n for i, n in lengths.items() if n > s.warn_len}
    if s.max_len or not long:
        return
    worst = max(long, key=long.get)
    unit = "characters" if text_columns(cfg) else "steps"
    log.warning("%s: %d row(s) longer than sequence.warn_len %s %s, the longest %s with %s; sequence.max_len is 0, so "
                "each is padded whole: set sequence.max_len (e.g. 4096) to crop them, or raise sequence.warn_len if "
                "they are meant whole", cfg.data_path(table), len(long), f"{s.warn_len:,}", unit, worst,
                f"{long[worst]:,}")


SEQUENCE_TTA = {"auto": ["identity"], "none": ["identity"], "crops": ["identity", "crop_head", "crop_tail"],
                "shifts": ["identity", "crop_head", "crop_tail"],  # shifts: the window moved to either end
                "all": ["identity", "crop_head", "crop_tail"]}  # predict.tta=search's candidates


def _crop_view(name: str, share: float) -> View:
    """A TTA view of one sequence ([steps, ...]) without `share` of its steps at the start (crop_head) or end."""
    def apply(item):
        cut = int(len(item) * share)
        if cut == 0 or len(item) - cut < 1:
            return item
        return item[cut:] if name == "crop_head" else item[: len(item) - cut]
    return View(name, apply, lambda y: y)  # outputs are per sequence: nothing to map back


class SequenceDataset(Dataset):
    """Per-sample arrays ([steps, channels] floats or [steps] token ids) with integer labels (-1: none)."""

    def __init__(self, items: list[np.ndarray], labels, train: bool, cfg: Config):
        self.items, self.train, self.s = [torch.as_tensor(x) for x in items], train, cfg.sequence
        self.labels = np.asarray(labels) if labels is not None else np.full(len(items), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        i, seed = unpack(key)
        g = sample_generator(seed)  # this sample's own draws (pipeline.core.seeding)
        x, s = self.items[i], self.s
        if self.train and s.crop > 0 and len(x) > 1:
            keep = int(torch.randint(max(1, int(np.ceil(len(x) * (1 - s.crop)))), len(x) + 1, (), generator=g))
            start = int(torch.randint(0, len(x) - keep + 1, (), generator=g))
            x = x[start:start + keep]
        if s.max_len and len(x) > s.max_len:
            start = (len(x) - s.max_len) // 2 if x.ndim == 2 else 0  # series: the centre; text: the start
            if self.train:
                start = int(torch.randint(0, len(x) - s.max_len + 1, (), generator=g))
            x = x[start:start + s.max_len]
        if self.train and x.ndim == 2:
            if s.scaling > 0:
                x = x * (1 + s.scaling * torch.randn(1, x.shape[1], generator=g))
            if s.jitter > 0:
                x = x + s.jitter * torch.randn(x.shape, generator=g)
        return x, self.labels[i]

    @staticmethod
    def collate(batch):
        items, labels = zip(*batch, strict=True)
        return (*pad(list(items)), torch.as_tensor(np.stack(labels)))


class TokenDataset(Dataset):
    """Token-id arrays for a pretrained encoder, with no augmentation (a crop would cut its special tokens);
    `lengths` makes the training loader batch similar lengths together (pipeline.core.seeding.LengthGroupedSampler)."""

    def __init__(self, items: list[np.ndarray], labels):
        self.items = [torch.as_tensor(x) for x in items]
        self.lengths = [len(x) for x in items]
        self.labels = np.asarray(labels) if labels is not None else np.full(len(items), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        return self.items[unpack(key)[0]], self.labels[unpack(key)[0]]

    collate = staticmethod(SequenceDataset.collate)


def pad(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest item: (x [B, T(, C)], mask [B, T] True on real steps)."""
    longest = max(len(x) for x in items)
    x = items[0].new_zeros((len(items), longest, *items[0].shape[1:]))
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for i, item in enumerate(items):
        x[i, : len(item)] = item
        mask[i, : len(item)] = True
    return x, mask


class SequenceTask(ClassProbabilities):
    demo = Demo("data/demo-series", write_digit_series_competition, ("demo-seq-inception.yaml", "demo-seq-gru.yaml"),
                "demo-seq-ensemble", lambda sub, sol, cfg: {"accuracy": score_against_solution(sub, sol, cfg)})
    bare_batches = True  # series and texts vary in length: bench's bare loop replays real batches

    def __init__(self, cfg: Config, classes: list):
        super().__init__(cfg, classes)
        self.text = bool(text_columns(cfg))
        self.normaliser: Normaliser | None = None
        self.vocab: Vocabulary | HFTokenizer | None = None
        self._data: dict | None = None
        # model.name=hf:<folder>: a pretrained encoder, fine-tuned from that folder (fit_fold) or rebuilt from the
        # run's copy of its config and tokenizer plus a checkpoint (load_fold)
        self.encoder = encoder_folder(cfg.model.name)
        if self.encoder and not self.text:
            raise UserError(f"model.name={cfg.model.name}: a text encoder needs texts; set data.text_col")
        if cfg.model.name in ROCKETS and self.text:
            raise UserError(f"model.name={cfg.model.name}: random convolution kernels take series, not texts; "
                            "use gru, lstm, transformer or an hf: encoder")
        self.rocket: RocketFeatures | None = None
        self.tokens: Tokens | None = None
        self.pretrained = False

    # -- data ------------------------------------------------------------------------------------------
    @staticmethod
    def sample_table(cfg: Config) -> tuple[pd.DataFrame, list]:
        if text_columns(cfg):
            samples = read_texts(cfg, "train_csv", labelled=True)
            warn_long(cfg, dict(zip(samples[cfg.data.id_col], samples[TEXT].str.len(), strict=True)), "train_csv")
        else:
            series, _ = read_series(cfg, "train_csv")
            warn_long(cfg, {i: len(x) for i, x in series.items()}, "train_csv")
            samples = read_series_labels(cfg, series)
        kind, classes = label_set(cfg, samples, cfg.data_path("train_csv" if text_columns(cfg) else "labels_csv"))
        settle_target(cfg, kind, classes)
        return samples, classes

    @staticmethod
    def fingerprints(cfg: Config, table: pd.DataFrame) -> list[str] | None:
        """Texts are hashed for duplicate detection; series are not (yet): None."""
        return text_hashes(table[TEXT]) if TEXT in table else None

    @staticmethod
    def drift_features(cfg: Config, table: pd.DataFrame, split: str) -> pd.DataFrame:
        """Texts: length and character mix; series: length, missing share and channel statistics (pipeline.data.drift)."""
        from pipeline.data.drift import series_features, text_features

        if TEXT in table:
            return text_features(table[TEXT])
        series, _ = read_series(cfg, f"{split}_csv")
        return series_features([series[str(i)] for i in table[cfg.data.id_col].astype(str)])

    @staticmethod
    def test_table(cfg: Config, check: bool = False) -> pd.DataFrame:
        """Test ids (one row per series or text); reading checks every value (and test labels, if any)."""
        if text_columns(cfg):
            test, target = read_texts(cfg, "test_csv", labelled=False), cfg.data.target_col
            if target in test.columns and cfg.data.target_type in ("auto", "multiclass", "binary") and \
                    cfg.data_path("train_csv").is_file():  # pipeline infer has no train.csv to check against
                train_labels = read_texts(cfg, "train_csv", labelled=True)[target].unique()
                check_test_labels(test, cfg.data_path("test_csv"), target, train_labels)
            return test
        series, _ = read_series(cfg, "test_csv")
        if check:
            warn_long(cfg, {i: len(x) for i, x in series.items()}, "test_csv")
        return pd.DataFrame({cfg.data.id_col: list(series)})

    @property
    def data(self) -> dict:
        """id -> raw item (series array or text) for train and test, read once; test alone where there is no
        train.csv (pipeline infer, which checks the test file's columns against the export's)."""
        if self._data is None:
            d, train_here = self.cfg.data, self.cfg.data_path("train_csv").is_file()
            if self.text:
                frames = [read_texts(self.cfg, "train_csv", True)] if train_here else []
                frames.append(read_texts(self.cfg, "test_csv", False))
                self._data = {str(i): t for f in frames for i, t in zip(f[d.id_col], f[TEXT], strict=True)}
            else:
                test, test_features = read_series(self.cfg, "test_csv")
                train, features = read_series(self.cfg, "train_csv") if train_here else ({}, test_features)
                if test_features != features:
                    raise UserError(f"{self.cfg.data_path('test_csv')} has feature columns {test_features}, "
                                    f"train has {features}")
                self._data = {**train, **test}
        return self._data

    def fit_fold(self, train_rows: pd.DataFrame) -> dict:
        """Channel statistics or the vocabulary (and the target's state), from this fold's training rows only."""
        return {**super().fit_fold(train_rows), **self._fit_inputs(train_rows)}

    def _fit_inputs(self, train_rows: pd.DataFrame) -> dict:
        items = [self.data[str(i)] for i in train_rows["id"]]
        s = self.cfg.sequence
        if not self.text:
            self.normaliser = Normaliser.fit(items)
            state = {"mean": self.normaliser.mean.tolist(), "std": self.normaliser.std.tolist()}
            if self.cfg.model.name in ROCKETS:  # the random kernels' dilations and biases, from these rows only
                self.rocket = RocketFeatures.fit(self.cfg.model.name, self.cfg.sequence.rocket_kernels or
                                                 ROCKET_KERNELS[self.cfg.model.name], self.cfg.seed,
                                                 [self.normaliser(x) for x in items])
                state["rocket"] = self.rocket.state()
            return state
        if self.encoder:  # nothing is fitted: the pretrained tokenizer, kept with the run for predict and export
            check_folder(self.encoder, weights=True)
            keep_files(self.encoder, self.run_encoder)
            self.tokens, self.pretrained = Tokens(self.encoder, s.max_len), True
            return {"encoder": self.run_encoder.name}
        if s.hf_tokenizer:
            self.vocab = HFTokenizer(s.hf_tokenizer)
            return {"hf_tokenizer": s.hf_tokenizer}
        self.vocab = Vocabulary.fit(items, s.vocab_size, s.min_freq, s.lowercase)
        return {"tokens": self.vocab.tokens, "lowercase": s.lowercase}

    def load_fold(self, state: dict) -> None:
        super().load_fold(state)
        if "mean" in state:
            self.normaliser = Normaliser(np.asarray(state["mean"], np.float32), np.asarray(state["std"], np.float32))
            self.rocket = RocketFeatures.from_state(state["rocket"]) if "rocket" in state else None
        elif "encoder" in state:
            if state["encoder"] != self.run_encoder.name:  # preprocess.json may come from an export: no path but the run's own
                raise UserError(f"preprocess state names encoder folder {state['encoder']!r}; a run keeps its "
                                "encoder in <run>/encoder: export the experiment again")
            folder = self.cfg.run_dir / state["encoder"]
            check_folder(folder, weights=False)
            self.tokens, self.pretrained = Tokens(folder, self.cfg.sequence.max_len), False
        elif "hf_tokenizer" in state:
            self.vocab = HFTokenizer(state["hf_tokenizer"])
        else:
            self.vocab = Vocabulary(state["tokens"], state["lowercase"])

    @property
    def run_encoder(self):
        """runs/<exp>/encoder/: the encoder's config and tokenizer files, shared by the folds."""
        return self.cfg.run_dir / "encoder"

    def _encode(self, key) -> np.ndarray:
        item = self.data[str(key)]
        return self.vocab.encode(item) if self.text else self.normaliser(item).astype(np.float32)

    # -- model and steps ---------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if self.normaliser is None and self.vocab is None and self.tokens is None:
            raise RuntimeError("fit_fold() or load_fold() sets the preprocessing; call it before build_model()")
        if self.rocket is not None:
            return RocketModel(self.rocket, self.target.width)
        if self.encoder:
            return build_encoder_model(self.cfg, self.encoder if self.pretrained else self.run_encoder,
                                       self.target.width, self.tokens.pad_id, self.pretrained)
        channels = 0 if self.text else len(self.normaliser.mean)
        def build():
            return build_sequence_model(self.cfg, channels, len(self.vocab) if self.text else 0, self.target.width)
        n = self.cfg.sequence.networks
        return build() if n <= 1 else Members([build() for _ in range(n)], self.target.kind)

    def build_dataset(self, rows: pd.DataFrame, train: bool) -> SequenceDataset | TokenDataset:
        if self.encoder:  # one batched tokenizer call per dataset: once per fold, not per epoch
            return TokenDataset(self.tokens.encode([self.data[str(i)] for i in rows["id"]]), self.labels(rows))
        return SequenceDataset([self._encode(i) for i in rows["id"]], self.labels(rows), train, self.cfg)

    def to_device(self, batch, device: torch.device):
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def loss(self, model: nn.Module, batch, mix: bool = True) -> torch.Tensor:
        x, mask, y = batch
        alpha = self.cfg.augment.mixup_alpha
        if mix and alpha > 0 and model.training and not self.text:
            lam = float(np.random.beta(alpha, alpha))
            perm = torch.randperm(len(x), device=x.device)
            logits = model(lam * x + (1 - lam) * x[perm], mask | mask[perm])
            return lam * self.target.loss(logits, repeat_truths(logits, y)) + \
                (1 - lam) * self.target.loss(logits, repeat_truths(logits, y[perm]))
        logits = model(x, mask)
        return self.target.loss(logits, repeat_truths(logits, y))

    def views(self, spec: str) -> list[View]:
        if spec not in SEQUENCE_TTA:
            raise UserError(f"predict.tta={spec!r}: sequence TTA is one of {', '.join(SEQUENCE_TTA)}")
        if self.encoder and spec in ("crops", "shifts"):
            raise UserError(f"predict.tta={spec}: a pretrained encoder's inputs are not cropped (that would cut its "
                            "special tokens); use predict.tta=none")
        if self.encoder:  # auto, none and search's candidates: the text as it is
            return [VIEWS["identity"]]
        return [VIEWS["identity"] if name == "identity" else _crop_view(name, self.cfg.sequence.tta_crop)
                for name in SEQUENCE_TTA[spec]]

    def infer_batch(self, model: nn.Module, batch, views: list[View]) -> torch.Tensor:
        """[V, B, C] outputs (probabilities or values); every view (crops of each sequence) in one padded forward pass."""
        x, mask, _ = batch
        items = [x[i, : int(mask[i].sum())] for i in range(len(x))]
        xs, masks = pad([view.apply(item) for view in views for item in items])
        probs = self.target.activate(model(xs.to(x.device), masks.to(x.device)))
        return probs.view(len(views), len(x), -1).cpu()
