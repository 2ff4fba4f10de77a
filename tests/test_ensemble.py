import json

import numpy as np
import pytest
import torch

from pipeline.engine.averaging import average_state_dicts
from pipeline.scoring.blend import (
    apply_blend,
    combine,
    fit_weights,
    held_out_weights_score,
    hill_climb,
    stack,
    stack_columns,
)
from pipeline.scoring.metrics import CLASS_METRICS as METRICS

ACC = METRICS["accuracy"]


def noisy_members(rng, target, n_classes, strengths):
    """Probabilities that lean toward the truth by `strength` each, with independent noise."""
    out = []
    for s in strengths:
        logits = rng.normal(size=(len(target), n_classes))
        logits[np.arange(len(target)), target] += s
        p = np.exp(logits)
        out.append((p / p.sum(1, keepdims=True)).astype(np.float32))
    return out


@pytest.mark.parametrize("method", ["mean", "weighted", "rank", "geometric"])
def test_blends_are_distributions(method):
    rng = np.random.default_rng(0)
    members = noisy_members(rng, rng.integers(0, 4, 50), 4, [1.0, 2.0])
    out = combine(method, members, np.array([0.3, 0.7]))
    assert out.shape == (50, 4) and np.allclose(out.sum(1), 1, atol=1e-5) and (out >= 0).all()


def test_weights_sum_to_one_beat_the_best_member_and_ignore_test_predictions():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 5, 600)
    members = noisy_members(rng, target, 5, [1.5, 1.2, 0.2])
    w = hill_climb("weighted", members, target, ACC)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    blended = ACC(target, combine("weighted", members, w))
    assert blended >= max(ACC(target, p) for p in members)
    assert w[2] < w[0]  # the weak member gets less weight
    # Weights are a function of OOF rows only: the fit takes no test argument, and refitting is deterministic.
    assert np.array_equal(w, hill_climb("weighted", members, target, ACC))
    folds = np.arange(600) % 5
    honest, _ = held_out_weights_score("weighted", members, target, folds, ACC)
    assert 0.2 < honest <= 1.0


def test_saturated_members_fall_back_to_uniform_weights():
    # Every member is right on every row (accuracy 1.0), as on BasicMotions: log-loss alone would pick one.
    rng = np.random.default_rng(4)
    target = rng.integers(0, 4, 40)
    members = noisy_members(rng, target, 4, [8.0, 9.0, 12.0])
    assert all(ACC(target, p) == 1.0 for p in members)
    assert hill_climb("weighted", members, target, ACC).max() > 0.5  # the climb alone does concentrate
    w, held_out, params = fit_weights(members, target, np.arange(40) % 5, ACC)
    assert np.allclose(w, 1 / 3) and held_out is None and params["weights_from"] == "uniform"


def test_weights_that_beat_the_mean_out_of_fold_are_kept():
    rng = np.random.default_rng(5)
    target = rng.integers(0, 5, 1000)
    members = noisy_members(rng, target, 5, [2.5, 0.0, 0.0])  # two members are pure noise
    folds = np.arange(1000) % 5
    w, held_out, params = fit_weights(members, target, folds, ACC)
    assert params["weights_from"] == "hill climbing" and w[0] > 0.5
    assert ACC(target, held_out) > ACC(target, combine("mean", members, np.full(3, 1 / 3)))
    # the held-out OOF is each fold blended by the weights fitted without it, not by the final weights
    assert ACC(target, held_out) == held_out_weights_score("weighted", members, target, folds, ACC)[0]
    assert params["cv_in_sample"] == ACC(target, combine("weighted", members, w))


def test_stacking_on_noise_reports_chance_not_more():
    rng = np.random.default_rng(2)
    n, c = 900, 3
    target = rng.integers(0, c, n)
    members = [rng.dirichlet(np.ones(c), n).astype(np.float32) for _ in range(3)]
    folds = np.arange(n) % 5
    oof, test, _ = stack(members, target, folds, [m[:10] for m in members], c)
    assert ACC(target, oof) < 1 / c + 0.06  # honest: pure noise cannot beat chance out of fold
    assert test.shape == (10, c) and np.allclose(test.sum(1), 1, atol=1e-5)


def test_stacking_learns_from_informative_members():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 4, 800)
    members = noisy_members(rng, target, 4, [1.0, 1.0])
    oof, _, _ = stack(members, target, np.arange(800) % 4, members, 4)
    assert ACC(target, oof) > ACC(target, members[0])


@pytest.mark.parametrize("kind", ["multiclass", "multilabel", "regression"])
def test_a_saved_stacker_reproduces_the_ensembles_test_outputs_on_new_rows(kind):
    """pipeline infer applies an ensemble's meta-models from weights.json (JSON) to a test set it never saw: the
    result must be the stage's own, bit for bit, so an exported stack submits what `pipeline submit` would."""
    rng = np.random.default_rng(4)
    n = 400
    folds = np.arange(n) % 4
    if kind == "multiclass":
        target = rng.integers(0, 3, n)
        members = noisy_members(rng, target, 3, [1.0, 2.0])
        new = [rng.dirichlet(np.ones(3), 50).astype(np.float32) for _ in members]
        _, test, stacker = stack(members, target, folds, new, 3)
    else:
        values = kind == "regression"
        target = rng.normal(size=(n, 1)) if values else (rng.random((n, 3)) < 0.3).astype(np.float32)
        target[:, -1:] = target[:, -1:] if values else 0  # a label never present: its rate, not a model
        width = target.shape[1]
        members = [(target + rng.normal(scale=s, size=target.shape)).astype(np.float32) if values else
                   np.clip(target * 0.6 + rng.random(target.shape) * 0.4, 0, 1).astype(np.float32) for s in (0.5, 1.0)]
        new = [rng.random((50, width)).astype(np.float32) for _ in members]
        _, test, stacker = stack_columns(members, target, folds, new, values)
    again = apply_blend("stack", new, None, json.loads(json.dumps(stacker)), columns=kind != "multiclass")
    assert again.dtype == test.dtype and np.array_equal(again, test)


def test_averaging_identical_checkpoints_returns_them():
    state = {"w": torch.randn(4, 3), "b": torch.randn(3).half(), "bn.num_batches_tracked": torch.tensor(7)}
    avg = average_state_dicts([state, {k: v.clone() for k, v in state.items()}, state])
    for k, v in state.items():
        assert torch.equal(avg[k], v) and avg[k].dtype == v.dtype
    two = average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.ones(2)}])
    assert torch.equal(two["w"], torch.full((2,), 0.5))


def brute_force_climb(members, target, metric, rounds=50, tol=1e-5):
    """The textbook climb: re-blend every member for every trial."""
    from pipeline.scoring.blend import _improves, _objective

    counts = np.zeros(len(members))
    singles = [_objective(metric, target, p) for p in members]
    first = max(range(len(members)), key=lambda i: singles[i])
    counts[first], best = 1, singles[first]
    for _ in range(rounds):
        trials = []
        for i in range(len(members)):
            trial = counts.copy()
            trial[i] += 1
            trials.append((_objective(metric, target, combine("weighted", members, trial / trial.sum())), i))
        score, i = max(trials)
        if not _improves(score, best, tol):
            break
        best, counts[i] = score, counts[i] + 1
    return counts / counts.sum()


@pytest.mark.parametrize("metric", ["accuracy", "f1_macro", "logloss"])
def test_incremental_climb_chooses_what_re_blending_would(metric):
    rng = np.random.default_rng(6)
    for _ in range(3):
        target = rng.integers(0, 7, 400)
        members = noisy_members(rng, target, 7, list(rng.uniform(0.5, 3.0, 5)))
        assert np.allclose(hill_climb("weighted", members, target, METRICS[metric]),
                           brute_force_climb(members, target, METRICS[metric]))
