import dataclasses
import inspect
import typing

import pytest

from pipeline.core import config as config_module
from pipeline.core.config import Config, load_config
from pipeline.core.errors import UserError


def test_defaults_load_without_a_file():
    cfg = load_config()
    assert cfg.task == "classification" and cfg.train.lr_scale == "linear" and cfg.cv.folds == 5


def test_yaml_delta_extends_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ntrain: {epochs: 7, batch_size: 8}\nmodel: {name: resnet34}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\ntrain: {epochs: 3}\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.base_lr=2e-4", "model.weights_file=null", "data.group_col=plant"])
    assert (cfg.name, cfg.train.epochs, cfg.train.batch_size, cfg.model.name) == ("child", 3, 8, "resnet34")
    assert cfg.train.base_lr == pytest.approx(2e-4) and isinstance(cfg.train.base_lr, float)
    assert cfg.model.weights_file is None and cfg.data.group_col == "plant"


@pytest.mark.parametrize("override, message", [
    (["train.epoch=3"], "did you mean train.epochs"),
    (["trian.epochs=3"], "did you mean train"),
    (["train.epochs=three"], "train.epochs='three': expected int"),
    (["train.lr_scale=sqr"], "did you mean 'sqrt'"),
    (["train.ema=maybe"], "expected bool"),
    (["epochs"], "expected key.path=value"),
])
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, override)


def test_every_field_has_a_default_and_a_comment():
    lines = inspect.getsource(config_module).splitlines()
    sections = [Config, *[t for t in typing.get_type_hints(Config).values() if dataclasses.is_dataclass(t)]]
    for section in sections:
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{f.name}:"))
            assert "#" in lines[i] or lines[i - 1].strip().startswith("#"), f"{section.__name__}.{f.name} has no comment"
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
