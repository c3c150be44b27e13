"""The search space: params.yaml distributions -> Ray Tune domains -> a trial's LoopConfig."""

from __future__ import annotations

import dataclasses
import typing
from typing import Mapping


def to_tune_space(space: Mapping[str, Mapping]) -> dict:
    """``{"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}}`` -> Ray Tune domains.

    Types: loguniform / uniform (low, high), quniform (low, high, q), randint (integers,
    low <= x < high), choice (values). params.yaml is validated before this (pipelines/config.py);
    this still refuses what it cannot express, naming the key.
    """
    from ray import tune

    out = {}
    for key, d in space.items():
        kind = d.get("type")
        try:
            if kind == "loguniform":
                out[key] = tune.loguniform(d["low"], d["high"])
            elif kind == "uniform":
                out[key] = tune.uniform(d["low"], d["high"])
            elif kind == "quniform":
                out[key] = tune.quniform(d["low"], d["high"], d["q"])
            elif kind == "randint":
                out[key] = tune.randint(int(d["low"]), int(d["high"]))
            elif kind == "choice":
                out[key] = tune.choice(list(d["values"]))
            else:
                raise ValueError(f"tune.search_space.{key}.type: unknown distribution {kind!r}")
        except KeyError as missing:
            raise ValueError(f"tune.search_space.{key}.{missing.args[0]}: required by `{kind}`") from None
    return out


def _coerce(value, hint):
    """Sampled floats onto int fields (quniform / uniform over batch_size): round, not truncate."""
    args = typing.get_args(hint) or (hint,)
    if int in args and float not in args and isinstance(value, float):
        return int(round(value))
    if float in args and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def apply_trial_config(base, config: Mapping):
    """``base`` (a dataclass such as LoopConfig) with the sampled values set, types coerced.

    Generic on purpose: a field added to the training config becomes tunable without a change
    here. A key the dataclass does not have is an error naming it.
    """
    hints = typing.get_type_hints(type(base))
    unknown = sorted(set(config) - set(hints))
    if unknown:
        raise ValueError(f"tune.search_space keys {unknown} are not fields of {type(base).__name__}; "
                         f"tunable here: {sorted(hints)}")
    return dataclasses.replace(base, **{k: _coerce(v, hints[k]) for k, v in config.items()})
