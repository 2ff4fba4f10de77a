"""Sequence models by name: InceptionTime and ResNet 1D-CNNs, bidirectional GRU/LSTM, a transformer encoder.

Every model takes (x, mask): x is [B, T, C] floats (time series) or [B, T] token ids, mask is [B, T] with True
on real steps. Padding never changes a sequence's output: convolutions zero the padded steps after every block,
recurrent nets run on packed sequences, attention ignores padded keys, and pooling averages real steps only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pipeline.core.config import Config
from pipeline.core.errors import UserError


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, D], averaging the real steps only."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min).amax(1)


class Stem(nn.Module):
    """Token ids -> embeddings, or series channels -> a linear projection; [B, T, D] either way."""

    def __init__(self, in_channels: int, vocab_size: int, dim: int):
        super().__init__()
        self.tokens = vocab_size > 0
        self.proj = nn.Embedding(vocab_size, dim, padding_idx=0) if self.tokens else nn.Linear(in_channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class InceptionBlock(nn.Module):
    """InceptionTime's module: a bottleneck, three kernel sizes and a max-pool branch, concatenated."""

    def __init__(self, channels_in: int, filters: int, kernels=(9, 19, 39)):
        super().__init__()
        self.bottleneck = nn.Conv1d(channels_in, filters, 1, bias=False)
        self.convs = nn.ModuleList(nn.Conv1d(filters, filters, k, padding=k // 2, bias=False) for k in kernels)
        self.pool = nn.Sequential(nn.MaxPool1d(3, stride=1, padding=1), nn.Conv1d(channels_in, filters, 1, bias=False))
        self.norm = nn.BatchNorm1d(filters * (len(kernels) + 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = self.bottleneck(x)
        pad = mask == 0
        # -inf on padded steps: the max-pool sees what it would at the true end of the sequence
        pooled = self.pool[0](x.masked_fill(pad, float("-inf"))).masked_fill(pad, 0.0)
        out = torch.cat([conv(b) for conv in self.convs] + [self.pool[1](pooled)], dim=1)
        return torch.relu(self.norm(out)) * mask


class Inception1d(nn.Module):
    """InceptionTime (Fawaz et al., 2020): six inception modules with a residual every three."""

    def __init__(self, stem: Stem, dim: int, filters: int, depth: int, num_classes: int, dropout: float):
        super().__init__()
        self.stem = stem
        width = filters * 4
        self.blocks = nn.ModuleList(InceptionBlock(dim if i == 0 else width, filters) for i in range(depth))
        self.shortcuts = nn.ModuleList(
            nn.Sequential(nn.Conv1d(dim if i == 0 else width, width, 1, bias=False), nn.BatchNorm1d(width))
            for i in range(0, depth, 3))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x, mask):
        m = mask.unsqueeze(1).to(torch.float32)
        h = self.stem(x).transpose(1, 2) * m  # [B, D, T]
        residual = h
        for i, block in enumerate(self.blocks):
            h = block(h, m)
            if i % 3 == 2:
                h = torch.relu(h + self.shortcuts[i // 3](residual)) * m
                residual = h
        return self.head(masked_mean(h.transpose(1, 2), mask))


class ResBlock1d(nn.Module):
    def __init__(self, channels_in: int, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(c, channels, k, padding=k // 2, bias=False)
                                   for c, k in ((channels_in, 7), (channels, 5), (channels, 3)))
        self.norms = nn.ModuleList(nn.BatchNorm1d(channels) for _ in range(3))
        self.shortcut = nn.Sequential(nn.Conv1d(channels_in, channels, 1, bias=False), nn.BatchNorm1d(channels))

    def forward(self, x, m):
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            h = norm(conv(h))
            h = (torch.relu(h) if i < 2 else h) * m
        return torch.relu(h + self.shortcut(x)) * m


class ResNet1d(nn.Module):
    """The ResNet baseline of Wang et al. (2017): three residual blocks of 7/5/3 convolutions."""

    def __init__(self, stem: Stem, dim: int, filters: int, num_classes: int, dropout: float):
        super().__init__()
        self.stem = stem
        widths = (filters, filters * 2, filters * 2)
        self.blocks = nn.ModuleList(ResBlock1d(c_in, c) for c_in, c in zip((dim, *widths[:-1]), widths, strict=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], num_classes))

    def forward(self, x, mask):
        m = mask.unsqueeze(1).to(torch.float32)
        h = self.stem(x).transpose(1, 2) * m
        for block in self.blocks:
            h = block(h, m)
        return self.head(masked_mean(h.transpose(1, 2), mask))


class Recurrent(nn.Module):
    """Bidirectional GRU or LSTM on packed sequences; mean and max of the states over real steps."""

    def __init__(self, stem: Stem, dim: int, hidden: int, layers: int, num_classes: int, dropout: float, cell: str):
        super().__init__()
        self.stem = stem
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                       dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * hidden, num_classes))

    def forward(self, x, mask):
        h = self.stem(x)
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
        return self.head(torch.cat([masked_mean(out, mask), masked_max(out, mask)], dim=1))


class PositionalEncoding(nn.Module):
    """The sinusoidal encoding of Vaswani et al., added to the inputs."""

    def __init__(self, dim: int, max_len: int = 4096):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div[: dim // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > len(self.pe):
            raise UserError(f"sequences of {x.shape[1]} steps exceed the positional encoding ({len(self.pe)}); "
                            "set sequence.max_len")
        return x + self.pe[: x.shape[1]]


class Transformer(nn.Module):
    """A pre-norm transformer encoder with sinusoidal positions; padded keys are masked out of attention."""

    def __init__(self, stem: Stem, dim: int, heads: int, layers: int, num_classes: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise UserError(f"sequence.dim={dim} must be divisible by sequence.heads={heads}")
        self.stem = stem
        self.position = PositionalEncoding(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(self, x, mask):
        h = self.encoder(self.position(self.stem(x)), src_key_padding_mask=~mask)
        return self.head(masked_mean(self.norm(h), mask))


class Members(nn.Module):
    """sequence.networks > 1: InceptionTime's ensemble (Fawaz et al. average five networks) inside one model.
    Training: each member's outputs, stacked along the batch ([M x B, C]), so the loss is the mean of the members'
    own losses and each member learns alone, from its own initialisation, on the same batches. Evaluation: the
    members' predictions averaged, returned as the logits of that average (what the target activates to it)."""

    def __init__(self, members: list[nn.Module], kind: str):
        super().__init__()
        self.members, self.kind = nn.ModuleList(members), kind

    def forward(self, x, mask):
        outs = [m(x, mask) for m in self.members]
        if self.training:
            return torch.cat(outs, dim=0)
        stacked = torch.stack([o.float() for o in outs])
        if self.kind == "multiclass":  # log of the mean probability: softmax gives the mean back
            return torch.logsumexp(torch.log_softmax(stacked, dim=-1), dim=0) - math.log(len(outs))
        if self.kind in ("binary", "multilabel"):
            p = torch.sigmoid(stacked).mean(0).clamp(1e-7, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)
        return stacked.mean(0)  # values: the affine activation commutes with the mean


def repeat_truths(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The truths once per member where the model stacks its members' outputs (Members in training)."""
    times = len(logits) // len(y)
    return y if times == 1 else y.repeat(times, *[1] * (y.ndim - 1))


SEQUENCE_MODELS = ("inception", "resnet1d", "gru", "lstm", "transformer")


def build_sequence_model(cfg: Config, in_channels: int, vocab_size: int, num_classes: int) -> nn.Module:
    """model.name picks the architecture; sequence.* sizes it. vocab_size > 0 means token-id inputs."""
    s, name = cfg.sequence, cfg.model.name
    stem = Stem(in_channels, vocab_size, s.dim)
    drop = cfg.model.drop_rate
    if name == "inception":
        return Inception1d(stem, s.dim, s.filters, s.layers * 3, num_classes, drop)
    if name == "resnet1d":
        return ResNet1d(stem, s.dim, s.filters, num_classes, drop)
    if name in ("gru", "lstm"):
        return Recurrent(stem, s.dim, s.hidden, s.layers, num_classes, drop, name)
    if name == "transformer":
        return Transformer(stem, s.dim, s.heads, s.layers, num_classes, drop)
    raise UserError(f"model.name={name!r} is not a sequence model; choose one of {', '.join(SEQUENCE_MODELS)}, "
                    "minirocket or multirocket")
