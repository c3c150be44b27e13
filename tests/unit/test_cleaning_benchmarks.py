"""The arithmetic of benchmarks/cleaning_policies.py and the per-stage memory sampler of
benchmarks/text_pipeline.py (the figures docs/data-quality.md and the README quote)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.cleaning_policies import POLICIES, choose, summarise
from benchmarks.text_pipeline import StageSampler


def _seed(seed: int, acc: dict[str, float], f1: float = 0.8) -> dict:
    return {"seed": seed, "acc": acc, "detect": {"precision": f1, "recall": f1, "f1": f1, "flagged": 10, "flipped": 10},
            "acted": {"flag": 1, "drop": 1, "relabel": seed % 2}, "changed_train_rows": {"flag": 0, "drop": 10,
                                                                                       "relabel": 10}}


def test_summarise_differences_are_per_seed_and_spread_is_the_sample_sd():
    seeds = [_seed(0, {"none": 0.80, "flag": 0.80, "drop": 0.90, "relabel": 0.70}),
             _seed(1, {"none": 0.90, "flag": 0.90, "drop": 0.90, "relabel": 0.95})]
    r = summarise("x", 0.2, seeds, 1.0)
    assert r["acc"]["none"] == {"mean": 0.85, "sd": pytest.approx(0.0707, abs=1e-4)}
    # drop - none is +10 then 0 points: mean 5, sd 7.07 (not the difference of the means' spreads)
    assert r["acc_minus_none_points"]["drop"] == {"mean": 5.0, "sd": pytest.approx(7.0711, abs=1e-4)}
    assert r["acted_share"]["relabel"] == 0.5
    assert r["detect/f1"]["mean"] == 0.8


def test_no_flips_means_no_detection_scores():
    r = summarise("x", 0.0, [_seed(0, dict.fromkeys(POLICIES, 0.9), f1=0.0) | {"detect": {
        "precision": 0.0, "recall": 1.0, "f1": 0.0, "flagged": 3, "flipped": 0}}], 1.0)
    assert r["detect/f1"] is None and r["flagged_train"]["mean"] == 3


def test_choose_takes_the_best_mean_accuracy_and_on_a_tie_the_policy_that_changes_least():
    a = summarise("a", 0.1, [_seed(0, {"none": 0.8, "flag": 0.8, "drop": 0.85, "relabel": 0.9})], 1.0)
    b = summarise("b", 0.3, [_seed(0, {"none": 0.8, "flag": 0.8, "drop": 0.70, "relabel": 0.85})], 1.0)
    c = choose([a, b])
    assert c["best_policy"] == "relabel"
    assert c["worst_mean_points_vs_none"]["drop"] == -10.0
    tie = summarise("t", 0.0, [_seed(0, dict.fromkeys(POLICIES, 0.9))], 1.0)
    assert choose([tie])["best_policy"] == "flag"
    near = summarise("n", 0.2, [_seed(0, {"none": 0.8, "flag": 0.8, "drop": 0.899, "relabel": 0.9})], 1.0)
    assert choose([near])["best_policy"] == "drop"  # 0.1 points apart: a tie, and drop writes no label


def test_sampler_attributes_a_stage_process_tree_and_its_memory():
    # A parent whose child's command line carries "-m trainwise.pipelines.fake" (as DVC's `python -m trainwise.pipelines.X`)
    # and holds ~200 MB for a moment; the sampler must find it under the parent and see the memory.
    child = "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}, '-m', "
                               "'trainwise.pipelines.fake'])"])
    sampler = StageSampler(parent.pid, every=0.1)
    sampler.start()
    parent.wait(timeout=60)
    sampler.stop.set()
    sampler.join()
    assert set(sampler.peaks) == {"fake"}
    assert sampler.peaks["fake"]["max_process_mb"] >= 200
    assert sampler.peaks["fake"]["tree_pss_mb"] >= 150
