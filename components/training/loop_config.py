"""The one place a training loop config is built, for tune trials and the train stage alike.

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

from dataclasses import fields
from typing import Mapping

from components.training.loop import LoopConfig

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
                         f"(components.training.loop.LoopConfig); re-run the tune stage")
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
                         f"(components.training.loop.LoopConfig) nor of the run "
                         f"(components.training.loop_config.RUN_KEYS); add it to one of them")
    bad = sorted(set(overrides) - LOOP_KEYS)
    if bad:
        raise ValueError(f"{bad} are not fields of LoopConfig")
    values = {k: v for k, v in merged.items() if k in LOOP_KEYS}
    return LoopConfig(**{**values, **overrides, "data_dir": str(data_dir), "n_classes": n_classes,
                         "input_shape": tuple(input_shape)})
