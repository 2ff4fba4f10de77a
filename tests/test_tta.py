import pytest
import torch

from pipeline.core.config import AugmentConfig
from pipeline.core.errors import UserError
from pipeline.scoring.tta import SETS, VIEWS, build_views, run_views


@pytest.mark.parametrize("name", SETS["d4"])
def test_every_symmetry_is_exactly_undone_by_its_inverse(name):
    x = torch.randn(2, 3, 5, 5)
    view = VIEWS[name]
    assert torch.equal(view.invert(view.apply(x)), x)


def test_flip_of_a_flip_is_identity_and_d4_views_are_distinct():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    for name in ("hflip", "vflip", "rot180", "transpose", "antitranspose"):
        assert torch.equal(VIEWS[name].apply(VIEWS[name].apply(x)), x)
    images = {tuple(v.apply(x).flatten().tolist()) for v in build_views("d4")}
    assert len(images) == 8  # the eight symmetries of a square are all different


def test_shifts_translate_with_reflected_edges_instead_of_wrapping_around():
    x = torch.arange(32.0 * 32).view(1, 1, 32, 32)
    left = VIEWS["shift_left"].apply(x)  # 1/16 of 32 px: two columns
    assert torch.equal(left[..., :, :30], x[..., :, 2:])  # the image moved left
    assert torch.equal(left[..., :, 30:], x[..., :, [30, 29]])  # the edge reflected, not the first columns
    assert not torch.equal(left[..., :, 30:], x[..., :, :2])
    down = VIEWS["shift_down"].apply(x)
    assert torch.equal(down[..., 2:, :], x[..., :30, :]) and torch.equal(down[..., :2, :], x[..., [2, 1], :])
    up = VIEWS["scale115"].apply(torch.ones(2, 3, 20, 20))
    assert up.shape == (2, 3, 23, 23) and torch.allclose(up, torch.ones_like(up))


def test_view_sets_start_with_identity_and_stack_batched():
    assert [v.name for v in build_views("none")] == ["identity"]
    assert [v.name for v in build_views("rot90,hflip")] == ["identity", "rot90", "hflip"]
    assert all(build_views(s)[0].name == "identity" for s in SETS)
    x = torch.randn(3, 3, 8, 8)
    passes = []
    outputs = run_views(lambda t: passes.append(t.shape) or t, x, build_views("flips"))
    assert passes == [(12, 3, 8, 8)] and torch.equal(outputs[1], x.flip(-1))  # four views, one forward pass
    outputs = run_views(lambda t: passes.append(t.shape) or t.mean((1, 2, 3)), x, build_views("identity,scale115,hflip"))
    assert passes[1:] == [(6, 3, 8, 8), (3, 3, 9, 9)]  # the rescaled view runs alone; outputs stay in view order
    assert torch.allclose(outputs[2], x.flip(-1).mean((1, 2, 3))) and outputs[1].shape == (3,)
    with pytest.raises(UserError, match="unknown view"):
        build_views("hflip,spin")


@pytest.mark.parametrize("flips,expected", [
    ((0.5, 0.0, 0.0), ["identity", "hflip"]),
    ((0.0, 0.0, 0.0), ["identity"]),  # digits: training never mirrored, so prediction doesn't either
    ((0.5, 0.5, 0.0), ["identity", "hflip", "vflip", "rot180"]),
    ((0.5, 0.5, 0.5), ["identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose"]),
    ((0.0, 0.0, 0.5), ["identity", "rot90", "rot180", "rot270"]),
])
def test_auto_tta_uses_the_symmetries_training_used(flips, expected):
    augment = AugmentConfig(hflip=flips[0], vflip=flips[1], rotate90=flips[2])
    assert [v.name for v in build_views("auto", augment)] == expected
