"""Combining members' outputs: mean, weighted, rank, geometric, and a stacked meta-model.

Class probabilities (multiclass) have their own fast paths below; probabilities of independent labels (binary,
multilabel) and values (regression, ordinal) go through `blend_outputs`' general climb and meta-models.

Weights and meta-models are fitted on out-of-fold predictions only; test predictions never enter a fit.
Every fitted method is also scored the honest way: fitted on K-1 folds, scored on the held-out fold; and it replaces
the plain mean only when that held-out gain exceeds its own noise (pipeline.scoring.noise).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression

from pipeline.core.errors import UserError
from pipeline.scoring.metrics import Metric, logloss
from pipeline.scoring.noise import judge

EPS = 1e-7


def combine(method: str, members: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Blend [N, C] probability arrays with weights summing to one; rows of the result sum to one."""
    w = np.asarray(weights, dtype=np.float64)
    if method == "geometric":
        logs = sum(wi * np.log(np.clip(p, EPS, 1.0)) for wi, p in zip(w, members, strict=True))
        out = np.exp(logs - logs.max(axis=1, keepdims=True))
    elif method == "rank":
        # Per class, each member's scores become ranks in [0, 1]: scale differences between members vanish.
        out = sum(wi * (rankdata(p, axis=0) / len(p)) for wi, p in zip(w, members, strict=True))
    else:  # mean, weighted: a float32 running sum, one member converted at a time
        out = None
        for wi, p in zip(w, members, strict=True):
            term = float32(p) * np.float32(wi)
            out = term if out is None else np.add(out, term, out=out)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def _objective(metric: Metric, target: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Sort key, larger is better: the metric, then log-loss to break ties (accuracy is flat)."""
    score = metric(target, probs)
    return (score if metric.greater_is_better else -score, -logloss(target, probs))


def hill_climb(method: str, members: list[np.ndarray], target: np.ndarray, metric: Metric,
               rounds: int = 50, tol: float = 1e-5) -> np.ndarray:
    """Caruana ensemble selection on a linear blend: start from the best member, add (with replacement)
    whichever member improves the OOF objective most, stop when none does by more than tol. Weights are the
    selection counts, summing to one.

    Exact but incremental, so 20 members x 100k rows x 176 classes climb in seconds: a running sum of the
    chosen members; log-loss from the true-class column alone; and for argmax metrics only the rows where
    the trial member could overturn the running blend's label are re-ranked.
    """
    members = as_float32(members)
    n, idx = len(members), np.arange(len(target))
    true = [p[idx, target] for p in members]  # [N] each: all log-loss needs
    peak = [p.max(axis=1) for p in members]
    counts = np.zeros(n)
    singles = [_objective(metric, target, p) for p in members]
    first = max(range(n), key=lambda i: singles[i])
    counts[first], best = 1, singles[first]
    total, total_true = members[first].copy(), true[first].copy()
    for _ in range(rounds):
        labels = total.argmax(axis=1)
        top2 = np.partition(total, -2, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0] - 1e-6  # a hair of slack for float rounding
        size = counts.sum() + 1
        trials = []
        for i, p in enumerate(members):
            p_true = (total_true + true[i]) / size  # members' rows sum to one, so the blend's do too
            if metric.on_labels is None:  # a metric of the probabilities themselves: the whole trial blend
                score = metric(target, (total + p) / size)
            else:
                # Adding p lifts class j over the blend's label only if p[j] - p[label] exceeds the margin.
                rows = np.flatnonzero(peak[i] - p[idx, labels] >= margin)
                trial_labels = labels.copy()
                trial_labels[rows] = (total[rows] + p[rows]).argmax(axis=1)
                score = metric.on_labels(target, trial_labels)
            trials.append(((score if metric.greater_is_better else -score, -_logloss_true(p_true)), i))
        score, i = max(trials)
        if not _improves(score, best, tol):
            break
        best, counts[i] = score, counts[i] + 1
        total += members[i]
        total_true += true[i]
    return counts / counts.sum()


def float32(a: np.ndarray) -> np.ndarray:
    """a as float32 (no copy when it already is); float16, how predictions may be stored, converts through
    torch, ~20x numpy's speed."""
    if a.dtype == np.float16:
        return torch.from_numpy(np.ascontiguousarray(a)).float().numpy()
    return np.asarray(a, dtype=np.float32)


def as_float32(arrays) -> list[np.ndarray]:
    return [float32(a) for a in arrays]


def _logloss_true(p_true: np.ndarray) -> float:
    return float(-np.log(np.clip(p_true, 1e-15, 1.0)).mean())


def _improves(new: tuple[float, float], old: tuple[float, float], tol: float) -> bool:
    """A better metric, or the same metric and a log-loss lower by more than tol (smaller gains are noise)."""
    return new[0] > old[0] or (new[0] == old[0] and new[1] > old[1] + tol)


def held_out_weights_score(method: str, members: list[np.ndarray], target: np.ndarray, folds: np.ndarray,
                           metric: Metric) -> tuple[float, np.ndarray]:
    """Fit weights on K-1 folds, blend the held-out fold with them: the OOF score weights cannot flatter."""
    ks = list(np.unique(folds))
    weights = _in_threads(lambda k: _climb_without(k, method, members, target, folds, metric), ks)
    blended = _blend_held_out(method, members, folds, dict(zip(ks, weights, strict=True)))
    return metric(target, blended), blended


def _climb_without(k, method: str, members: list[np.ndarray], target: np.ndarray, folds: np.ndarray,
                   metric: Metric) -> np.ndarray:
    """Weights climbed on every row outside fold k (k=None: on every row)."""
    rows = slice(None) if k is None else folds != k
    return hill_climb(method, [p[rows] for p in members], target[rows], metric)


def _blend_held_out(method: str, members: list[np.ndarray], folds: np.ndarray, weights: dict) -> np.ndarray:
    """Each fold's rows blended with the weights fitted without them."""
    blended = np.zeros_like(members[0], dtype=np.float32)
    for k, w in weights.items():
        held = folds == k
        blended[held] = combine(method, [p[held] for p in members], w)
    return blended


def _in_threads(fn, items: list) -> list:
    """fn over items on up to two threads: numpy releases the GIL in the climbs' array work, so two climbs
    run nearly twice as fast on two cores; more threads would hold more fold copies in memory at once."""
    with ThreadPoolExecutor(max_workers=min(2, len(items), os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def stack(members: list[np.ndarray], target: np.ndarray, folds: np.ndarray, tests: list[np.ndarray],
          n_classes: int, c: float = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Logistic regression on the members' log-probabilities, cross-validated on the same folds.

    Returns (stacked OOF, test, stacker): each OOF row comes from a meta-model that never saw its fold, and the
    test prediction is the mean of those K meta-models, exactly as fold models are averaged; the stacker holds
    their coefficients, for `apply_stacker` on another test set (pipeline infer).
    """
    x = np.hstack([np.log(np.clip(p, EPS, 1.0)) for p in members])
    oof = np.zeros((len(x), n_classes), dtype=np.float32)
    metas = []
    for k in np.unique(folds):
        fit, held = folds != k, folds == k
        meta = LogisticRegression(C=c, max_iter=2000).fit(x[fit], target[fit])
        oof[held] = _full_proba(meta, x[held], n_classes)
        metas.append(_meta_state(meta))
    stacker = {"kind": "logistic", "classes": n_classes, "metas": metas}
    return oof, apply_stacker(stacker, tests), stacker


def _full_proba(model: LogisticRegression, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class, also those absent from this fold's training rows."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def _meta_state(model) -> dict:
    """A fitted linear meta-model as plain lists (JSON), exact to the last bit (float64 reprs round-trip)."""
    state = {"coef": model.coef_.tolist(), "intercept": np.atleast_1d(model.intercept_).tolist()}
    if hasattr(model, "classes_"):
        state["classes"] = model.classes_.tolist()
    return state


def _meta_model(state: dict):
    """The sklearn model of a _meta_state, ready to predict (as fitted: the same arithmetic, the same outputs)."""
    from sklearn.linear_model import Ridge

    if "classes" not in state:  # ridge on values
        model = Ridge()
        model.coef_, model.intercept_ = np.asarray(state["coef"]), float(state["intercept"][0])
    else:
        model = LogisticRegression(max_iter=2000)
        model.coef_, model.intercept_ = np.asarray(state["coef"]), np.asarray(state["intercept"])
        model.classes_ = np.asarray(state["classes"])
    model.n_features_in_ = model.coef_.shape[-1]
    return model


def apply_stacker(stacker: dict, tests: Sequence[np.ndarray]) -> np.ndarray:
    """A saved stacker (stack's or stack_columns') on members' test outputs: the mean of its K meta-models."""
    tests = as_float32(tests)
    if stacker["kind"] == "logistic":
        x = np.hstack([np.log(np.clip(p, EPS, 1.0)) for p in tests])
        out = np.zeros((len(x), stacker["classes"]), dtype=np.float64)
        for state in stacker["metas"]:
            out += _full_proba(_meta_model(state), x, stacker["classes"]) / len(stacker["metas"])
        return out.astype(np.float32)
    values = stacker["kind"] == "ridge"
    out = np.zeros_like(tests[0], dtype=np.float64)
    for j, metas in enumerate(stacker["columns"]):
        x = np.stack([p[:, j] for p in tests], axis=1).astype(np.float64)
        if not values:
            x = np.log(np.clip(x, EPS, 1 - EPS)) - np.log(np.clip(1 - x, EPS, 1.0))
        for state in metas:
            if "rate" in state:  # a label absent (or everywhere) in these folds: its rate
                pred = np.full(len(x), state["rate"])
            else:
                model = _meta_model(state)
                pred = model.predict(x) if values else model.predict_proba(x)[:, 1]
            out[:, j] += pred / len(metas)
    return out.astype(np.float32)


@dataclass
class Blend:
    """An ensemble's OOF and test outputs, with what was fitted and its honest (other-folds) score."""

    oof: Any
    test: Any
    weights: np.ndarray | None  # per member, summing to one; None for a meta-model
    held_out: float | None  # score with weights fitted on the other folds; None when nothing was fitted
    params: dict = field(default_factory=dict)  # other fitted settings (e.g. the WBF IoU)
    stacker: dict | None = None  # a meta-model's coefficients (method stack), for apply_stacker


def blend_without_fold(fitted: dict, oofs: list[np.ndarray], truth: np.ndarray, folds: np.ndarray, k,
                       tests: list[np.ndarray], metric: Metric, target) -> np.ndarray:
    """Fold k's version of an ensemble's fitted blend (its weights.json), applied to tests: weights climbed on the
    OOF rows outside fold k, or the stacker's meta-model that was fitted without fold k. What blends fold k's
    targets for a student (pipeline distill) has then never seen fold k's labels; only the ensemble's choice of
    equal weights over climbed ones or a stacker (weights_from), made on every fold, is kept as the ensemble made it."""
    method, columns = applied_method(fitted), target.kind != "multiclass"
    if method == "stack":
        i = list(np.unique(folds)).index(k)  # stack() fits one meta-model per fold, in fold order
        stacker = fitted["stacker"]
        one = ({**stacker, "metas": [stacker["metas"][i]]} if "metas" in stacker else
               {**stacker, "columns": [[column[i]] for column in stacker["columns"]]})
        return apply_stacker(one, tests)
    weights = np.full(len(oofs), 1 / len(oofs))
    if method == "weighted":
        rows = folds != k
        members = as_float32([p[rows] for p in oofs])
        weights = (climb_columns(members, truth[rows], metric, target.valid_loss) if columns else
                   hill_climb(method, members, truth[rows], metric))
    return apply_blend(method, tests, weights, None, columns)


def applied_method(fitted: dict) -> str:
    """The method an ensemble's weights.json applies: its own, or the mean where its fitted weights or stacker did
    not beat the mean by more than noise (weights_from "uniform")."""
    return "mean" if fitted.get("weights_from") == "uniform" else fitted["method"]


def apply_blend(method: str, tests: Sequence[np.ndarray], weights: np.ndarray | None, stacker: dict | None,
                columns: bool) -> np.ndarray:
    """An ensemble's fitted blend on its members' outputs for another test set: what the ensemble stage computed
    for test.parquet, by the same functions (columns: independent probabilities or values, not classes)."""
    if method == "stack":
        return apply_stacker(stacker, tests)
    return (combine_columns if columns else combine)(method, tests, np.asarray(weights, dtype=np.float64))


def blend_probabilities(method: str, oofs: Sequence[np.ndarray], tests: Sequence[np.ndarray], target: np.ndarray,
                        folds: np.ndarray, metric: Metric) -> Blend:
    """mean | weighted (hill climbing) | rank | geometric | stack, fitted on OOF rows only.

    A fitted blend's OOF is honest: each fold's rows blended by weights (or a meta-model) fitted on the other
    folds, so the CV scored on it is the held-out score; the in-sample score is kept in params["cv_in_sample"].
    oofs and tests may be lazy sequences (members read from disk as they are iterated): fixed-weight blends
    stream them, one member in memory at a time; fitting weights or a meta-model needs every OOF at once.
    """
    if method == "stack":
        members = as_float32(oofs)
        oof, test, stacker = stack(members, target, folds, tests, members[0].shape[1])
        return stack_or_mean(combine, members, tests, target, metric, oof, test, stacker)
    if method == "weighted":
        oofs = as_float32(oofs)  # in memory, converted once for all K+1 climbs and the blend
        weights, held_out_oof, params = fit_weights(oofs, target, folds, metric)
        if held_out_oof is not None:
            return Blend(held_out_oof, combine(method, tests, weights), weights, metric(target, held_out_oof), params)
        return Blend(combine(method, oofs, weights), combine(method, tests, weights), weights, None, params)
    weights = np.full(len(oofs), 1 / len(oofs))
    return Blend(combine(method, oofs, weights), combine(method, tests, weights), weights, None)


def fit_weights(oofs: list[np.ndarray], target: np.ndarray, folds: np.ndarray,
                metric: Metric) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Hill-climbed weights for float32 members, kept only when their held-out score beats the plain mean:
    (weights, the held-out blended OOF or None when the mean is kept, params). Beating it means by more than the
    gain's noise (pipeline.scoring.noise): on 36 rows, a win by one row is not evidence.

    When every member saturates the metric (BasicMotions: five members at CV 1.0), the climb is steered
    by log-loss alone and chose one member that scored 0.875 on test where the mean scored 1.0; so
    weights must earn their place on folds they were not fitted on, else every member counts equally.
    """
    uniform = np.full(len(oofs), 1 / len(oofs))
    ks = list(np.unique(folds))
    # The K held-out climbs (the honest score) and the climb on every row (the weights used), two at a time.
    *per_fold, weights = _in_threads(lambda k: _climb_without(k, "weighted", oofs, target, folds, metric), [*ks, None])
    held_out_oof = _blend_held_out("weighted", oofs, folds, dict(zip(ks, per_fold, strict=True)))
    params = judge("hill climbing", metric, target, held_out_oof, combine("mean", oofs, uniform))
    if params["weights_from"] == "uniform":
        return uniform, None, params
    return weights, held_out_oof, {**params, "cv_in_sample": metric(target, combine("weighted", oofs, weights))}


def stack_or_mean(mix, members: list[np.ndarray], tests, truth: np.ndarray, metric: Metric, oof: np.ndarray,
                  test: np.ndarray, stacker: dict) -> Blend:
    """A stacked blend (its cross-fitted OOF, test and stacker) when it beats the mean of the members by more than
    noise, as fitted weights must (pipeline.scoring.noise); else the mean, by mix (combine or combine_columns)."""
    uniform = np.full(len(members), 1 / len(members))
    mean_oof = mix("mean", members, uniform)
    params = judge("stacking", metric, truth, oof, mean_oof)
    if params["weights_from"] == "uniform":
        return Blend(mean_oof, mix("mean", tests, uniform), uniform, None, params)
    return Blend(oof, test, None, params["fitted_held_out"], params, stacker)  # stacked OOF: fitted on other folds


# -- binary, multilabel, regression, ordinal ------------------------------------------------------------------
def blend_outputs(method: str, oofs: Sequence[np.ndarray], tests: Sequence[np.ndarray], truth: np.ndarray,
                  folds: np.ndarray, metric: Metric, target) -> Blend:
    """blend_probabilities for any target (pipeline.scoring.targets): class probabilities take its fast paths; sigmoid
    probabilities blend per column (rank: per column, the standard for AUC; geometric: in logit space) and values
    as weighted means (rank and geometric refused); stack is logistic regression per label, or ridge on values."""
    if target.kind == "multiclass":
        return blend_probabilities(method, oofs, tests, truth, folds, metric)
    values = target.kind in ("regression", "ordinal")
    if values and method in ("rank", "geometric"):
        raise UserError(f"--method {method} blends probabilities; a {target.kind} target blends values: "
                        "use mean, weighted or stack")
    mix = combine_columns
    if method == "stack":
        members, tests = as_float32(oofs), as_float32(tests)
        oof, test, stacker = stack_columns(members, truth, folds, tests, values)
        return stack_or_mean(mix, members, tests, truth, metric, oof, test, stacker)
    if method != "weighted":
        weights = np.full(len(oofs), 1 / len(oofs))
        return Blend(mix(method, oofs, weights), mix(method, tests, weights), weights, None)
    oofs = as_float32(oofs)
    loss = target.valid_loss
    def climb(k):
        rows = slice(None) if k is None else folds != k
        return climb_columns([p[rows] for p in oofs], truth[rows], metric, loss)
    ks = list(np.unique(folds))
    *per_fold, weights = _in_threads(climb, [*ks, None])
    held_out_oof = np.zeros_like(oofs[0])
    for k, w in zip(ks, per_fold, strict=True):
        held_out_oof[folds == k] = mix("weighted", [p[folds == k] for p in oofs], w)
    uniform = np.full(len(oofs), 1 / len(oofs))
    mean_oof = mix("mean", oofs, uniform)
    params = judge("hill climbing", metric, truth, held_out_oof, mean_oof)
    if params["weights_from"] == "uniform":
        return Blend(mean_oof, mix("mean", tests, uniform), uniform, None, params)
    params["cv_in_sample"] = metric(truth, mix("weighted", oofs, weights))
    return Blend(held_out_oof, mix("weighted", tests, weights), weights, params["fitted_held_out"], params)


def combine_columns(method: str, members, weights: np.ndarray) -> np.ndarray:
    """Column-wise weighted blend of [N, K] probabilities or values (rank: each column's ranks in [0, 1])."""
    out = None
    for w, p in zip(np.asarray(weights, dtype=np.float64), members, strict=True):
        p = float32(p).astype(np.float64)
        if method == "rank":
            p = rankdata(p, axis=0) / len(p)
        elif method == "geometric":
            p = np.log(np.clip(p, EPS, 1 - EPS)) - np.log(np.clip(1 - p, EPS, 1.0))
        out = w * p if out is None else out + w * p
    if method == "geometric":
        out = 1 / (1 + np.exp(-out))
    return out.astype(np.float32)


def climb_columns(members: list[np.ndarray], truth: np.ndarray, metric: Metric, loss, rounds: int = 50,
                  tol: float = 1e-5) -> np.ndarray:
    """Caruana selection with replacement, like hill_climb, scoring whole trial blends (the metric, then the loss
    to break ties); weights are the selection counts, summing to one."""
    def objective(blend):
        score = metric(truth, blend)
        score = -math.inf if not math.isfinite(score) else score
        return (score if metric.greater_is_better else -score, -loss(truth, blend))
    counts, total = np.zeros(len(members)), np.zeros_like(members[0], dtype=np.float64)
    singles = [objective(p) for p in members]
    first = max(range(len(members)), key=lambda i: singles[i])
    counts[first], best, total = 1, singles[first], members[first].astype(np.float64)
    for _ in range(rounds):
        size = counts.sum() + 1
        value, i = max((objective(((total + p) / size).astype(np.float32)), i) for i, p in enumerate(members))
        if not _improves(value, best, tol):
            break
        best, counts[i], total = value, counts[i] + 1, total + members[i]
    return counts / counts.sum()


def stack_columns(members: list[np.ndarray], truth: np.ndarray, folds: np.ndarray, tests: list[np.ndarray],
                  values: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Cross-fitted meta-models on the same folds: ridge on members' values (alpha by inner CV), or per label a
    logistic regression on the members' logits of that label; test = the mean of the K meta-models (the stacker,
    applied by apply_stacker)."""
    from sklearn.linear_model import RidgeCV

    oof = np.zeros_like(members[0], dtype=np.float32)
    truth2 = truth.reshape(len(truth), -1)
    ks = np.unique(folds)
    columns = []
    for j in range(members[0].shape[1]):
        x = np.stack([p[:, j] for p in members], axis=1).astype(np.float64)
        if not values:
            x = np.log(np.clip(x, EPS, 1 - EPS)) - np.log(np.clip(1 - x, EPS, 1.0))
        metas = []
        for k in ks:
            fit, held = folds != k, folds == k
            y = truth2[fit, j] if truth2.shape[1] > 1 else truth2[fit, 0]
            if values:
                meta = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x[fit], y)
                oof[held, j] = meta.predict(x[held])
            elif len(np.unique(y)) < 2:  # a label absent (or everywhere) in these folds: its rate
                oof[held, j] = float(y.mean())
                metas.append({"rate": float(y.mean())})
                continue
            else:
                meta = LogisticRegression(max_iter=2000).fit(x[fit], y)
                oof[held, j] = meta.predict_proba(x[held])[:, 1]
            metas.append(_meta_state(meta))
        columns.append(metas)
    stacker = {"kind": "ridge" if values else "logistic-columns", "columns": columns}
    return oof, apply_stacker(stacker, tests), stacker
