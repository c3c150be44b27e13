import pytest
import torch

from components.models import build_model


@pytest.mark.parametrize("name", ["small_cnn", "mlp"])
def test_models_map_images_to_class_logits(name):
    model = build_model(name, input_shape=(1, 8, 8), n_classes=10, dropout=0.1)
    out = model(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*small_cnn"):
        build_model("resnet", input_shape=(1, 8, 8), n_classes=10)
