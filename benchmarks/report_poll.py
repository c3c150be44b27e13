"""How much Ray Train's report polling costs short epochs, and what `ray.train_poll_s` buys.

Ray Train v2's controller collects each worker's `ray.train.report` every
RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default: 2 s), and a worker can hold one report, so
every epoch waits up to one poll. Same run (digits, 2 DDP workers on CPU, 15 epochs, seed 0)
under Ray's default and under trainwise's `ray.train_poll_s` (0.25 s), in one process.

    python -m benchmarks.report_poll [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks._results import write_results
from tests.demo_data import write_digits_split
from trainwise.components.ray_start import init_ray
from trainwise.components.training.data import input_shape
from trainwise.components.training.driver import Scaling, fit, run_history
from tests.params import loop_config

REPO = Path(__file__).resolve().parents[1]


def one_run(split: Path, storage: Path, *, poll_s: float, epochs: int) -> dict:
    import ray

    init_ray(num_cpus=2, train_poll_s=poll_s)
    loop = replace(loop_config(data_dir=str(split), input_shape=input_shape(split), epochs=epochs, seed=0),
                   patience=None)
    t0 = time.perf_counter()
    result = fit(loop, scaling=Scaling(num_workers=2), storage_path=str(storage), name=f"poll-{poll_s}")
    wall = time.perf_counter() - t0
    history = run_history(result)
    ray.shutdown()
    return {"poll_s": poll_s, "fit_wall_s": round(wall, 2), "epochs": len(history),
            "compute_s": round(sum(r["epoch_s"] for r in history), 2),
            "val/acc": history[-1]["val/acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split = write_digits_split(Path(tmp) / "data")
        base = one_run(split, Path(tmp) / "ray", poll_s=2.0, epochs=args.epochs)   # Ray's default
        ours = one_run(split, Path(tmp) / "ray", poll_s=0.25, epochs=args.epochs)  # params.yaml default
    print(f"TorchTrainer.fit, digits, 2 workers, {args.epochs} epochs (includes worker-group start-up)")
    print(f"{'poll s':>7}{'fit wall s':>12}{'in epochs s':>13}{'val/acc':>9}")
    for r in (base, ours):
        print(f"{r['poll_s']:>7}{r['fit_wall_s']:>12.1f}{r['compute_s']:>13.1f}{r['val/acc']:>9.4f}")
    ratio = base["fit_wall_s"] / ours["fit_wall_s"]
    print(f"speed-up of fit with train_poll_s=0.25 over Ray's default: {ratio:.2f}x "
          f"({base['fit_wall_s'] - ours['fit_wall_s']:.1f}s saved, "
          f"{(base['fit_wall_s'] - ours['fit_wall_s']) / args.epochs:.2f}s per epoch); same val/acc: "
          f"{base['val/acc'] == ours['val/acc']}")
    out = REPO / "benchmarks" / "results" / "report_poll.json"
    write_results(out, {"benchmark": "report_poll", "epochs": args.epochs, "ray_default": base,
                               "trainwise": ours, "speedup": round(ratio, 2)})
    print(f"-> {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
