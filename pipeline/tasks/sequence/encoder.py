"""Pretrained Hugging Face text encoders (`model.name: hf:<folder>`), fine-tuned with a pooled head, offline.

The folder is a Hugging Face model folder (config.json, weights, tokenizer files), read with
`local_files_only`: a Kaggle code competition has no hub, and neither has this machine. Training copies the
folder's config and tokenizer (not its weights) into runs/<exp>/encoder/, so a fold's checkpoint and that
folder rebuild the model anywhere, without the original weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.files import atomic_dir

log = logging.getLogger(__name__)

PREFIX = "hf:"
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
# what rebuilds a model without its weights: its architecture and its tokenizer (any of these that exist)
KEPT = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
        "vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model", "added_tokens.json")
LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")  # encoder.layer.3. (BERT, RoBERTa, DeBERTa), layers.3. (others)


def encoder_folder(model_name: str) -> Path | None:
    """The model folder of `hf:<folder>`; None for any other model name."""
    if not model_name.startswith(PREFIX):
        return None
    path = model_name[len(PREFIX):].strip()
    if not path:
        raise UserError("model.name=hf: needs a local model folder, e.g. hf:../shared/weights/all-MiniLM-L6-v2")
    return Path(path)


def transformers():
    """The transformers package, or a one-line error naming the extra that installs it."""
    try:
        import transformers as tf
    except ImportError:
        raise UserError("model.name=hf:... needs Hugging Face transformers: pip install -e '.[text]' "
                        "(make setup installs it)") from None
    tf.utils.logging.disable_progress_bar()  # a weights-loading bar per fold is noise in logs
    return tf


def check_folder(folder: Path, weights: bool) -> None:
    """A complete model folder: config.json, a tokenizer and (to fine-tune from it) the weights."""
    if not folder.is_dir():
        raise UserError(f"model.name=hf:{folder}: no such folder; point it at a local Hugging Face model folder "
                        "(config.json, weights, tokenizer files); nothing is downloaded")
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model",
                                                  "sentencepiece.bpe.model")):
        missing.append("tokenizer files (tokenizer.json, vocab.txt, ...)")
    if weights and not any((folder / f).is_file() for f in WEIGHTS):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if missing:
        raise UserError(f"model folder {folder} is incomplete: no {', '.join(missing)}; save it with "
                        "model.save_pretrained() and tokenizer.save_pretrained()")


def keep_files(source: Path, run_encoder: Path) -> None:
    """Copy the architecture and tokenizer files into the run; a copy of another folder (the experiment retrained
    on a different model) is replaced, one of this folder left as it is."""
    names = [n for n in KEPT if (source / n).is_file()]
    if all(_same(source / n, run_encoder / n) for n in names):
        return
    if run_encoder.exists():
        log.warning("%s holds another model's files; replacing them with %s's", run_encoder, source)
        stale = run_encoder.with_name(f".{run_encoder.name}.{os.getpid()}.old")
        with contextlib.suppress(FileNotFoundError):  # another rank moved it first
            os.replace(run_encoder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(run_encoder) as tmp:
        for name in names:
            shutil.copy2(source / name, tmp / name)


def _same(a: Path, b: Path) -> bool:
    return b.is_file() and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


class Tokens:
    """A Hugging Face tokenizer: texts (or several columns per text) to token-id arrays, in one batched call."""

    def __init__(self, folder: Path, max_len: int):
        tf = transformers()
        try:
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"{folder}: the tokenizer does not load ({str(e).splitlines()[0]})") from None
        limit = self.tokenizer.model_max_length
        self.max_len = min(max_len or 512, limit if limit and limit < 100_000 else 512)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.sep = self.tokenizer.sep_token or self.tokenizer.eos_token or " "

    def encode(self, texts: Sequence[str | tuple[str, ...]]) -> list[np.ndarray]:
        """Token ids with the model's special tokens, truncated to max_len; several columns are joined by the
        tokenizer's separator token (a title [SEP] a body)."""
        joined = [t if isinstance(t, str) else f" {self.sep} ".join(t) for t in texts]
        ids = self.tokenizer(joined, truncation=True, max_length=self.max_len, add_special_tokens=True)["input_ids"]
        return [np.asarray(i, dtype=np.int64) for i in ids]


class EncoderClassifier(nn.Module):
    """A pretrained encoder, its states pooled over the attention mask (mean, or the first token), and a linear
    head; multi-sample dropout averages the head over several dropout draws while training."""

    def __init__(self, encoder: nn.Module, num_outputs: int, pad_id: int, pooling: str, dropout: float,
                 samples: int):
        super().__init__()
        self.encoder, self.pad_id, self.pooling = encoder, pad_id, pooling
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) for _ in range(max(1, samples)))
        self.head = nn.Linear(encoder.config.hidden_size, num_outputs)
        self.num_layers = int(getattr(encoder.config, "num_hidden_layers", 0))

    def get_classifier(self) -> nn.Module:
        return self.head

    def lr_layer(self, name: str) -> int:
        """Depth of a parameter for layer-wise LR decay: 0 for the embeddings, i + 1 for layer i, num_layers + 1
        for what sits above the layers (pooler, final norms) and the head."""
        if name.startswith("head."):
            return self.num_layers + 1
        found = LAYER.search(name)
        if found:
            return int(found.group(1)) + 1
        return 0 if "embed" in name else self.num_layers + 1

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # padded steps hold the tokenizer's pad id: RoBERTa-style models number positions from it
        ids = ids.masked_fill(~mask, self.pad_id)
        states = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * m).sum(1) / m.sum(1).clamp_min(1.0)
        if not self.training or len(self.dropouts) == 1:
            return self.head(self.dropouts[0](pooled))
        return torch.stack([self.head(drop(pooled)) for drop in self.dropouts]).mean(0)


def build_encoder_model(cfg: Config, folder: Path, num_outputs: int, pad_id: int, pretrained: bool) -> EncoderClassifier:
    """From the folder's weights (pretrained, to fine-tune) or its config alone (a checkpoint's weights follow);
    model.pooling, model.drop_rate, model.dropout_samples and train.grad_checkpointing shape it."""
    tf = transformers()
    try:
        if pretrained:
            encoder = tf.AutoModel.from_pretrained(str(folder), local_files_only=True)
        else:
            encoder = tf.AutoModel.from_config(tf.AutoConfig.from_pretrained(str(folder), local_files_only=True))
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: the encoder does not load ({str(e).splitlines()[0]})") from None
    if cfg.train.grad_checkpointing:  # transformers 5 renamed it (4.x has only the old name)
        if hasattr(encoder, "activation_checkpointing_enable"):
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m = cfg.model
    return EncoderClassifier(encoder, num_outputs, pad_id, m.pooling, m.drop_rate, m.dropout_samples)
