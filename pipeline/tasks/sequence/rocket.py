"""The ROCKET family beside the neural models: aeon's MiniRocket / MultiRocket features, a linear head solved in
closed form with its regularisation chosen by inner CV.

    model.name: minirocket | multirocket      (sequence.rocket_kernels: 10,000 / 6,250 kernels, the papers')

Per fold: the transform's dilations and biases are fitted on the fold's training series only (Task.fit_fold, saved
in preprocess.json beside the channel statistics); then every training series becomes its features, standardised,
and the head is solved on them (pipeline.engine.loop's closed-form path, one "epoch"):
  - classes, binary, tags: logistic regression, C chosen by inner stratified K-fold log-loss (LogisticRegressionCV;
    one per tag) -- probabilities that blend with the networks';
  - values, grades: ridge regression on the standardised target, alpha by leave-one-out (RidgeCV).
The head becomes the model's nn.Linear with the standardisation folded in, so predict, TTA, ensembles, export and
infer run it as any network. Pseudo-label rows drawn at pipeline pseudo's weight enter as sample weights.

Lengths: aeon's transforms take one length. Each series is cut, or padded at the end with zeros (the channel mean,
after normalisation), to the fold's longest training series, and to at least 9 steps (the kernel's length).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from pipeline.core.errors import UserError

log = logging.getLogger(__name__)
ROCKETS = ("minirocket", "multirocket")
ROCKET_KERNELS = {"minirocket": 10_000, "multirocket": 6_250}  # the papers' defaults (sequence.rocket_kernels: 0)
KERNEL = 9  # MiniRocket's kernel length: the shortest series the transform takes
ALPHAS = np.logspace(-3, 3, 10)  # ridge grid of the ROCKET papers (RidgeClassifierCV)
CS = np.logspace(-4, 3, 8)  # inverse L2 strengths for the logistic head, chosen by inner CV
FITTED = {"minirocket": ("parameters",), "multirocket": ("parameter", "parameter1")}  # aeon's fitted attributes


def transformer(name: str, kernels: int, seed: int):
    """aeon's transform by model.name (imported here: only ROCKET models need aeon and numba)."""
    try:
        from aeon.transformations.collection.convolution_based import MiniRocket, MultiRocket
    except ImportError:
        raise UserError(f"model.name={name} needs aeon: pip install 'aeon>=1.0' (or `make setup`)") from None
    made = {"minirocket": MiniRocket, "multirocket": MultiRocket}[name]
    return made(n_kernels=kernels, random_state=seed, n_jobs=1)


def as_batch(items: list[np.ndarray], length: int) -> np.ndarray:
    """[N, C, length] float32 from [steps, C] series: cut at `length`, or zero-padded at the end."""
    out = np.zeros((len(items), items[0].shape[1], length), np.float32)
    for i, x in enumerate(items):
        x = np.nan_to_num(np.asarray(x, np.float32)[:length])
        out[i, :, : len(x)] = x.T
    return out


class RocketFeatures:
    """A fitted MiniRocket/MultiRocket transform, kept as plain arrays (preprocess.json) and rebuilt from them."""

    def __init__(self, name: str, kernels: int, seed: int, length: int, channels: int, fitted=None):
        self.name, self.kernels, self.seed, self.length, self.channels = name, kernels, seed, length, channels
        self.transform = transformer(name, kernels, seed)
        if fitted is None:
            return
        # aeon keeps its fitted state in documented attributes; a fit on two blank series sets everything else
        # (its checks of channels and length), then the saved arrays replace what that fit found
        self.transform.fit(np.zeros((2, channels, length), np.float32))
        for attr, arrays in fitted.items():
            setattr(self.transform, attr, tuple(np.asarray(a["values"], a["dtype"]) for a in arrays))

    @classmethod
    def fit(cls, name: str, kernels: int, seed: int, items: list[np.ndarray]) -> RocketFeatures:
        length = max(KERNEL, max(len(x) for x in items))
        made = cls(name, kernels, seed, length, items[0].shape[1])
        made.transform.fit(as_batch(items, length))
        return made

    def state(self) -> dict:
        fitted = {attr: [{"dtype": str(a.dtype), "values": a.tolist()} for a in getattr(self.transform, attr)]
                  for attr in FITTED[self.name]}
        return {"name": self.name, "kernels": self.kernels, "seed": self.seed, "length": self.length,
                "channels": self.channels, "fitted": fitted}

    @classmethod
    def from_state(cls, state: dict) -> RocketFeatures:
        return cls(state["name"], state["kernels"], state["seed"], state["length"], state["channels"], state["fitted"])

    def __call__(self, items: list[np.ndarray]) -> np.ndarray:
        """[N, F] float32 features."""
        return np.asarray(self.transform.transform(as_batch(items, self.length)), np.float32)

    @property
    def width(self) -> int:
        return self([np.zeros((self.length, self.channels), np.float32)]).shape[1]


class RocketModel(nn.Module):
    """(x [B, T, C], mask [B, T]) -> the linear head's outputs on the series' ROCKET features. `solve` sets the head."""

    def __init__(self, features: RocketFeatures, width: int):
        super().__init__()
        self.features = features
        self.head = nn.Linear(features.width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).tolist()
        series = x.detach().float().cpu().numpy()
        f = torch.from_numpy(self.features([s[:n] for s, n in zip(series, lengths, strict=True)]))
        return self.head(f.to(self.head.weight.device))

    def solve(self, task, dataset) -> float:
        """Fit the head on every row of the training dataset (inner CV picks the regularisation); its loss in sample.
        task: the sequence task (its target: the outputs' kind, the values' standardisation)."""
        from sklearn.preprocessing import StandardScaler

        started = time.perf_counter()
        target = task.target
        labels = np.asarray(dataset.labels)
        if labels.dtype.kind == "f" and target.kind in ("multiclass", "binary", "multilabel"):
            raise UserError(f"model.name={self.features.name} learns labels, not soft targets (pipeline pseudo --soft, "
                            "distill, mixup): use hard labels")
        weights = sample_weights(dataset)
        x = self.features([item.numpy() for item in dataset.items])
        scaler = StandardScaler().fit(x, sample_weight=weights)
        z = scaler.transform(x)
        if target.kind in ("regression", "ordinal"):
            coef, intercept, chosen = solve_ridge(z, labels, target, weights)
        else:
            coef, intercept, chosen = solve_logistic(z, labels, target, weights, self.head.out_features)
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        w = coef / scale  # the standardisation folded into the head: W (x - mean) / scale + b
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            self.head.bias.copy_(torch.from_numpy((intercept - w @ scaler.mean_).astype(np.float32)))
            outputs = target.activate(self.head(torch.from_numpy(x))).numpy()
        loss = target.valid_loss(labels, outputs)
        log.info("%s head: %d rows x %d features, %s, in %.1fs", self.features.name, len(x), x.shape[1], chosen,
                 time.perf_counter() - started)
        return float(loss)


def sample_weights(dataset) -> np.ndarray:
    """1 per labelled row; pseudo-labelled rows (pipeline pseudo) at the share they are drawn at per epoch."""
    weights = np.ones(len(dataset))
    drawn = getattr(dataset, "drawn", None)
    if drawn is not None:
        weights[drawn.start:] = drawn.share
    return weights


def solve_ridge(z: np.ndarray, labels: np.ndarray, target, weights: np.ndarray):
    """Ridge on the target standardised as the loss standardises it (pipeline.scoring.targets.Regression); alpha by LOO."""
    from sklearn.linear_model import RidgeCV

    y = (labels.reshape(len(labels), -1) - np.asarray(target.mean)) / np.asarray(target.std)
    ridge = RidgeCV(alphas=ALPHAS).fit(z, y, sample_weight=weights)
    coef = np.atleast_2d(ridge.coef_)
    return coef, np.atleast_1d(ridge.intercept_), f"ridge alpha {ridge.alpha_:g} (leave-one-out)"


def solve_logistic(z: np.ndarray, labels: np.ndarray, target, weights: np.ndarray, width: int):
    """Logistic regression per output (classes: one multinomial; tags: one per tag), C by inner CV log-loss."""
    if target.kind == "multilabel":
        parts = [logistic(z, labels[:, j], weights, 1) for j in range(labels.shape[1])]
        coef, intercept = np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return coef, intercept, "logistic C " + "/".join(f"{p[2]:g}" for p in parts) + " (inner CV log-loss)"
    coef, intercept, c = logistic(z, labels, weights, width)
    return coef, intercept, f"logistic C {c:g} (inner CV log-loss)"


NEVER = -30.0  # the logit of a class no training row has: probability ~1e-13


def logistic(z: np.ndarray, y: np.ndarray, weights: np.ndarray, width: int):
    """(coef [width, F], intercept [width], C) for class ids y in 0..width-1 (width 1: a binary's positive logit)."""
    present, counts = np.unique(y, return_counts=True)
    coef, intercept = np.zeros((width, z.shape[1])), np.full(width, NEVER)
    if len(present) == 1:  # one class only: that class, always
        intercept[:] = -NEVER if width == 1 and present[0] == 1 else NEVER
        if width > 1:
            intercept[int(present[0])] = 0.0
        return coef, intercept, float("nan")
    # An L2-penalised linear model's weights lie in the span of its training rows (the representer theorem), so
    # with fewer rows than features it is solved exactly in that span's coordinates: 32 x 10,000 becomes 32 x 32.
    basis = np.linalg.svd(z, full_matrices=False)[2].T if len(z) < z.shape[1] else np.eye(z.shape[1])
    model, c = fit_logistic(z @ basis, y, weights, int(min(5, counts.min())))
    w, b = model.coef_ @ basis.T, model.intercept_
    if width == 1:  # binary: sklearn's one logit is for classes_[1], the positive class
        return w[:1], b[:1], c
    rows = present.astype(int)
    coef[rows], intercept[rows] = (w, b) if len(present) > 2 else (np.vstack([-w[0] / 2, w[0] / 2]), np.r_[-b[0] / 2, b[0] / 2])
    return coef, intercept, c


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, folds: int):
    """LogisticRegressionCV over CS by inner stratified K-fold log-loss; a middle C where a class has one row."""
    import warnings

    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    with warnings.catch_warnings():  # scikit-learn 1.8+ announces attribute and default changes we do not rely on
        warnings.simplefilter("ignore", FutureWarning)
        if folds < 2:  # no inner CV can hold that class out
            return LogisticRegression(C=1e-2, max_iter=2000).fit(x, y, sample_weight=weights), 1e-2
        model = LogisticRegressionCV(Cs=CS, cv=StratifiedKFold(folds, shuffle=True, random_state=0),
                                     scoring="neg_log_loss", max_iter=2000).fit(x, y, sample_weight=weights)
    return model, float(np.atleast_1d(model.C_)[0])
