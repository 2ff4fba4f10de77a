import pytest
import timm
import torch

from pipeline.core.config import ModelConfig
from pipeline.core.errors import UserError
from pipeline.engine.models import build_classifier, normalisation

from .conftest import SHARED

LITE0 = SHARED / "weights" / "efficientnet_lite0_imagenet_timm.pth"


def test_weights_file_fills_the_backbone_and_reinitialises_the_head(tmp_path):
    source = timm.create_model("test_efficientnet", num_classes=1000)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    model = build_classifier(ModelConfig(name="test_efficientnet", weights_file=str(tmp_path / "w.pth")), num_classes=7)
    own, src = model.state_dict(), source.state_dict()
    assert own["classifier.weight"].shape == (7, src["classifier.weight"].shape[1])
    for key, value in own.items():
        if not key.startswith("classifier."):
            assert torch.equal(value, src[key]), key


def test_weights_from_another_architecture_are_refused(tmp_path):
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(UserError, match="does not fit model"):
        build_classifier(ModelConfig(name="test_efficientnet", weights_file=str(tmp_path / "resnet.pth")), num_classes=3)
    with pytest.raises(UserError, match="not found"):
        build_classifier(ModelConfig(name="test_efficientnet", weights_file=str(tmp_path / "missing.pth")), num_classes=3)


def test_unknown_model_name_suggests_similar():
    with pytest.raises(UserError, match="not a timm model.*resnet18"):
        build_classifier(ModelConfig(name="resnet18x"), num_classes=3)


@pytest.mark.skipif(not LITE0.is_file(), reason="needs ../shared/weights")
def test_shared_imagenet_weights_load_with_their_own_normalisation():
    model = build_classifier(ModelConfig(name="tf_efficientnet_lite0", weights_file=str(LITE0)), num_classes=176)
    state = torch.load(LITE0, map_location="cpu", weights_only=True)
    assert torch.equal(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert model.get_classifier().out_features == 176
    assert normalisation(model, None, None) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
