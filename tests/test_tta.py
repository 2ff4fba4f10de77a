import pytest
import torch

from pipeline.config import AugmentConfig
from pipeline.errors import UserError
from pipeline.tta import SETS, VIEWS, build_views, stack_views


@pytest.mark.parametrize("name", list(VIEWS))
def test_every_view_is_exactly_undone_by_its_inverse(name):
    x = torch.randn(2, 3, 5, 5)
    view = VIEWS[name]
    assert torch.equal(view.invert(view.apply(x)), x)


def test_flip_of_a_flip_is_identity_and_d4_views_are_distinct():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    for name in ("hflip", "vflip", "rot180", "transpose", "antitranspose"):
        assert torch.equal(VIEWS[name].apply(VIEWS[name].apply(x)), x)
    images = {tuple(v.apply(x).flatten().tolist()) for v in build_views("d4")}
    assert len(images) == 8  # the eight symmetries of a square are all different
    assert torch.equal(VIEWS["shift_right"].apply(VIEWS["shift_left"].apply(x)), x)


def test_view_sets_start_with_identity_and_stack_batched():
    assert [v.name for v in build_views("none")] == ["identity"]
    assert [v.name for v in build_views("rot90,hflip")] == ["identity", "rot90", "hflip"]
    assert all(build_views(s)[0].name == "identity" for s in SETS)
    x = torch.randn(3, 3, 8, 8)
    stacked = stack_views(x, build_views("flips"))
    assert stacked.shape == (12, 3, 8, 8) and torch.equal(stacked[3:6], x.flip(-1))
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
