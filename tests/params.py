"""Configs for tests and benchmarks, built from params.yaml's defaults (the schema in
pipelines/config.py, whose defaults a test keeps equal to params.yaml's), changed only where a test
says so: the tests shrink the real config instead of keeping a second one (lightning-hydra's
habit). A component's own dataclass defaults are not used here.
"""

from __future__ import annotations

from trainwise.components.training.driver import Scaling
from trainwise.components.training.loop_config import LoopConfig, build_loop_config
from trainwise.components.tuning.sweep import SweepOptions
from trainwise.pipelines.config import Params, TrainParams, TuneParams


def params(**sections: dict) -> Params:
    """The schema's params (= params.yaml's defaults), with ``sections`` ({"train": {...}}) merged in
    and validated as a stage would."""
    base = Params().model_dump()
    for name, values in sections.items():
        base[name] = {**base[name], **values}
    return Params.model_validate(base)


def train_section(**changes) -> dict:
    """``train.*`` as the schema defaults them, with ``changes`` (validated)."""
    return TrainParams.model_validate({**TrainParams().model_dump(), **changes}).model_dump()


def loop_config(*, data_dir: str = "", n_classes: int = 10, input_shape: tuple = (1, 8, 8),
                **changes) -> LoopConfig:
    """The loop config the train stage would build from ``train.*`` (params defaults + ``changes``),
    through the same function (``build_loop_config``). ``changes`` that are not ``train.*`` keys
    (the fields fit() fills, e.g. ``modality``) go straight onto the LoopConfig."""
    train_keys = set(TrainParams.model_fields)
    train = train_section(**{k: v for k, v in changes.items() if k in train_keys})
    return build_loop_config(train, data_dir=data_dir, n_classes=n_classes, input_shape=input_shape,
                             **{k: v for k, v in changes.items() if k not in train_keys})


def sweep_options(**changes) -> SweepOptions:
    """SweepOptions from ``tune.*`` (params defaults), with ``changes`` on top."""
    return SweepOptions.from_params(TuneParams(), **changes)


def scaling(**changes) -> Scaling:
    """Scaling from ``train.*`` (params defaults), with ``changes`` on top."""
    return Scaling.from_train({**TrainParams().model_dump(), **changes})
