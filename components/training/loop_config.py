"""The training loop's config (:class:`LoopConfig`), and the one place it is built, for tune
trials and the train stage alike.

``train.*`` (params.yaml, validated by the stage) plus what tune found (``best_params.json``'s
``params``) -> a :class:`LoopConfig`. The tune stage builds each trial's base with it (no tune
result yet; the sweep then sets the sampled keys on it) and the train stage builds the final
run with it (the winner's keys on top), so a key a trial varied is the key the final model
uses, whatever that key is (Ray's ``train_tune_interop.py`` hands the trial config whole to
the trainer for the same reason).

Every ``train.*`` key is either a setting of the loop (a LoopConfig field: passed through as
is) or a setting of the run around it (:data:`RUN_KEYS`: workers, failures, checkpoints,
resume), so a new key flows to the loop by adding it to LoopConfig; a key that is neither is
an error here, not silently dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Mapping

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "one_cycle")
PRECISIONS = ("fp32", "bf16", "fp16")
LOADERS = ("memory", "ray_data")


@dataclass
class LoopConfig:
    data_dir: str              # split dataset (absolute path, or a URL pyarrow reads)
    n_classes: int
    input_shape: tuple         # one example's shape; fit() re-derives it from the data
    model: str = "small_cnn"
    epochs: int = 15
    batch_size: int = 64       # global; each rank takes batch_size // world_size
    lr: float = 3e-3           # peak learning rate
    weight_decay: float = 1e-4
    dropout: float = 0.25
    patience: int | None = 5   # None: no early stopping (Tune's scheduler decides)
    seed: int = 0
    cpus_per_worker: int = 1
    use_gpu: bool = False
    optimizer: str = "adamw"   # adamw | sgd (Nesterov, `momentum`)
    momentum: float = 0.9
    lr_schedule: str = "constant"  # constant | cosine (to 0 at `epochs`) | one_cycle
    grad_clip: float | None = None  # max global grad norm; None: no clipping
    grad_accum_steps: int = 1  # micro-batches per optimiser step (effective batch x this)
    label_smoothing: float = 0.0
    augment: float = 0.0       # augmentation strength 0..1 (see trainwise.components.training.data.augment)
    precision: str = "fp32"    # fp32 | bf16 (autocast; CPU or GPU) | fp16 (GPU only, with a grad scaler)
    loader: str = "memory"     # memory | ray_data (see the module docstring)
    backbone: str | None = None    # pretrained backbone (trainwise.components.models); None: the network alone
    pretrained: bool | str = True  # backbone weights: packaged / hub (True), random (False), or a file
    backbone_mode: str = "frozen"  # frozen | finetune
    hflip: bool = False            # images: random horizontal flips (photos yes; digits and text in images no)
    patience_smoothing: float = 0.0  # early stopping on an EMA of val/loss with this weight on the past
    embed_dir: str | None = None   # frozen: the embed stage's output (the head trains on its vectors)
    embed_dim: int | None = None   # frozen: filled by fit() from the embed manifest
    max_tokens: int = 64       # text: tokens kept per example
    vocab_size: int = 20_000   # text: largest vocabulary (incl. padding and unknown)
    modality: str | None = None    # filled by fit() from the manifest
    tokenizer: dict | None = None  # text: fitted on the train split by fit()
    n_train: int | None = None     # filled by fit(): train rows (sizes the LR schedule)

    def __post_init__(self):
        for name, allowed in (("optimizer", OPTIMIZERS), ("lr_schedule", SCHEDULES), ("precision", PRECISIONS),
                              ("loader", LOADERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LoopConfig.{name}={getattr(self, name)!r}; choose from {allowed}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"LoopConfig.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs a GPU (use_gpu); on CPU use bf16")
        self.input_shape = tuple(self.input_shape)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LoopConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# train.* keys that shape the Ray Train run, not the loop: resources, placement, fault tolerance.
RUN_KEYS = frozenset({"num_workers", "gpus_per_worker", "placement_strategy", "max_failures",
                      "checkpoints_to_keep", "collective_timeout_s", "resume"})
LOOP_KEYS = frozenset(f.name for f in fields(LoopConfig))


def merged_train_params(train: Mapping, tuned: Mapping | None = None) -> dict:
    """``train.*`` with the tune result's keys on top: what the final run trains with (and what
    the train stage logs as its ``train.*`` MLflow params). A tuned key that is not a loop
    setting is an error naming it (best_params.json from another version of the code)."""
    tuned = dict(tuned or {})
    unknown = sorted(set(tuned) - LOOP_KEYS)
    if unknown:
        raise ValueError(f"best_params.json: {unknown} are not settings of the training loop "
                         f"(trainwise.components.training.loop_config.LoopConfig); re-run the tune stage")
    return {**dict(train), **tuned}


def build_loop_config(train: Mapping, *, tuned: Mapping | None = None, data_dir: str, n_classes: int,
                      input_shape: tuple, **overrides) -> LoopConfig:
    """The loop config of a run: every loop key of ``train`` (a dict of ``train.*``), the
    ``tuned`` keys on top, then ``overrides`` (what the caller decides itself, e.g. a sweep's
    CPUs per trial worker). ``data_dir``, ``n_classes`` and ``input_shape`` come from the data."""
    merged = merged_train_params(train, tuned)
    stray = sorted(set(merged) - LOOP_KEYS - RUN_KEYS)
    if stray:
        raise ValueError(f"train.{stray[0]} is neither a setting of the training loop "
                         f"(trainwise.components.training.loop_config.LoopConfig) nor of the run "
                         f"(trainwise.components.training.loop_config.RUN_KEYS); add it to one of them")
    bad = sorted(set(overrides) - LOOP_KEYS)
    if bad:
        raise ValueError(f"{bad} are not fields of LoopConfig")
    values = {k: v for k, v in merged.items() if k in LOOP_KEYS}
    return LoopConfig(**{**values, **overrides, "data_dir": str(data_dir), "n_classes": n_classes,
                         "input_shape": tuple(input_shape)})
