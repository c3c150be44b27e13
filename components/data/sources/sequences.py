"""The ``sequences`` source: generated 1-D sequence classification data in the manner of
MNIST-1D (Greydanus, 2020): ten fixed 12-point templates, one per class, each sample padded,
stretched, scaled, shifted, sheared and given correlated and i.i.d. noise, then resampled to
``length`` points. Hard for a linear model, easy for a small convolutional one.

``generator: builtin`` is this module's own numpy implementation, seeded with its own
``numpy.random.Generator`` (no global state) and produced batch by batch.
``generator: mnist1d`` calls the ``mnist1d`` package (optional extra ``trainwise[mnist1d]``);
its ``make_dataset`` generates offline from its built-in templates (its ``get_dataset``
would download a pickle, so it is not used). mnist1d seeds NumPy's global random state;
that state is saved and restored around the call.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from trainwise.components.data.contract import content_id
from trainwise.components.data.sources.base import RowBuffer, Source, SourceError, Tally

# The ten MNIST-1D templates (digit-like 1-D strokes), as published with the mnist1d package.
TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])
UNIT_SCALE = 6.5  # measured: the std of the unscaled builtin output is ~0.154
CLASSES = [str(k) for k in range(len(TEMPLATES))]


def _templates() -> np.ndarray:
    x = TEMPLATES - TEMPLATES.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    return (x - x[:, :1]) / 6.0


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(x)), x)


def _smooth(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    r = int(4 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return np.convolve(np.pad(x, r, mode="reflect"), k / k.sum(), mode="valid")


def make_sequence(template: np.ndarray, rng: np.random.Generator, *, length: int) -> np.ndarray:
    """One sample: MNIST-1D's transform chain (pad 36..60, dilate, scale, translate, noise, shear)."""
    pad_max, max_shift = 60, 48
    x = np.concatenate([template + 1e-8, np.zeros(rng.integers(36, pad_max + 1))])
    x = _resample(x, len(template) + pad_max)
    x = x * (1 + 0.4 * (rng.random() - 0.5))
    k = int(rng.integers(max_shift))
    x = np.concatenate([x[-k:], x[:-k]]) if k else x
    mask = x != 0
    x = np.where(mask, x, _smooth(0.25 * rng.standard_normal(len(x))))
    x = x + 2e-2 * rng.standard_normal(len(x))
    x = x - 0.75 * (rng.random() - 0.5) * np.linspace(-0.5, 0.5, len(x))
    # mnist1d standardises the finished dataset (mean 0, std 1); a stream cannot, so a fixed
    # factor brings these values to about the same scale.
    return (UNIT_SCALE * _resample(x, length)).astype(np.float32)


def _builtin(n_samples: int, length: int, seed: int, batch_rows: int) -> Iterator[tuple[list, list]]:
    templates = _templates()
    rng = np.random.default_rng(seed)
    for start in range(0, n_samples, batch_rows):
        labels = [(start + i) % len(templates) for i in range(min(batch_rows, n_samples - start))]
        yield [make_sequence(templates[k], rng, length=length) for k in labels], labels


def _mnist1d(n_samples: int, length: int, seed: int, batch_rows: int) -> Iterator[tuple[list, list]]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise SourceError("ingest.generator: mnist1d needs the optional package: "
                          "pip install 'trainwise[mnist1d]' (or use generator: builtin)") from None
    args = get_dataset_args()
    args.num_samples, args.final_seq_length, args.seed, args.train_split = n_samples, length, seed, 1.0
    state = np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    xs = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    ys = np.concatenate([data["y"], data["y_test"]]).astype(int)
    for start in range(0, len(ys), batch_rows):
        yield list(xs[start:start + batch_rows]), ys[start:start + batch_rows].tolist()


GENERATORS = {"builtin": _builtin, "mnist1d": _mnist1d}


def sequences_source(*, n_samples: int, length: int, seed: int, generator: str = "builtin",
                     batch_rows: int = 1024) -> Source:
    if generator not in GENERATORS:
        raise SourceError(f"ingest.generator: unknown {generator!r}; choose from {sorted(GENERATORS)}")
    tally = Tally()

    def gen() -> Iterator[pa.Table]:
        buf = RowBuffer("sequence", batch_rows=batch_rows)
        i = 0
        for xs, ys in GENERATORS[generator](n_samples, length, seed, batch_rows):
            for x, y in zip(xs, ys):
                src = f"generated:{generator}/seed={seed}/{i}"
                x = np.asarray(x, np.float32)
                table = buf.add(content_id(x.tobytes(), src), int(y), x, src, x.nbytes)
                i += 1
                tally.seen += 1
                if table is not None:
                    yield table
        last = buf.take()
        if last is not None:
            yield last

    return Source(classes=list(CLASSES), batches=gen(), payload="sequence", tally=tally,
                  extra={"sequence_length": length, "generator": generator, "seed": seed})
