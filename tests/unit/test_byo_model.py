"""train.model: package.module:factory builds, trains, saves and reloads a user's network."""

import pytest
import torch

from trainwise.components.models import build_model
from trainwise.components.models.custom import CustomModelError
from trainwise.components.training.export import load_model, model_spec, save_model
from trainwise.pipelines.config import ConfigError, parse_params


def test_factory_gets_shape_classes_and_params():
    m = build_model("examples.byo_model:build", input_shape=(1, 8, 8), n_classes=10, dropout=0.3,
                    params={"dropout": 0.3, "lr": 0.01})
    assert m(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    assert any(isinstance(x, torch.nn.Dropout) and x.p == 0.3 for x in m.modules())


def test_saved_byo_model_reloads_with_its_weights(tmp_path):
    m = build_model("examples.byo_model:build", input_shape=(3, 16, 16), n_classes=2)
    cfg = {"model": "examples.byo_model:build", "input_shape": (3, 16, 16), "dropout": 0.0, "modality": "image"}
    save_model(tmp_path / "model", m.state_dict(), model_spec(cfg, classes=["a", "b"]))
    loaded, spec = load_model(tmp_path / "model")
    x = torch.rand(2, 3, 16, 16)
    m.eval()
    torch.testing.assert_close(loaded(x), m(x))
    assert spec["model"] == "examples.byo_model:build"


@pytest.mark.parametrize("name, match", [
    ("nosuch_pkg.mod:build", "cannot import 'nosuch_pkg.mod'"),
    ("examples.byo_model:nothere", "has no callable 'nothere'"),
])
def test_bad_factory_names_train_model(name, match):
    with pytest.raises(CustomModelError, match=rf"train\.model: .*{match}"):
        build_model(name, input_shape=(1, 8, 8), n_classes=2)


def test_config_accepts_import_paths_only():
    assert parse_params({"train": {"model": "examples.byo_model:build"}}).train.model == "examples.byo_model:build"
    with pytest.raises(ConfigError, match="train.model.*package.module:factory"):
        parse_params({"train": {"model": "resnet"}})
