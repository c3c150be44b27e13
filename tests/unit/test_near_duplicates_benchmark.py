"""The content part of benchmarks/near_duplicates: its metrics and its data, on small inputs.

The benchmark's figures (issue 26's acceptance numbers and the recommended thresholds) are only as
true as these: a photo counts as together only when all its variants share one group, as merged when
its group holds another photo, as spanning when its variants land in two splits.
"""

import numpy as np

from benchmarks.near_duplicates_content import (SCALE_COPY_EVERY, _recommend, copy_source, edit_text, score,
                                                synthetic_batch)
from trainwise.components.quality.content_groups import normalise_text


def test_score_counts_together_merged_and_spanning_per_item():
    truth = np.array([0, 0, 1, 1, 2, 2])
    # item 0 split over two groups; items 1 and 2 share one group
    s = score(["a", "b", "c", "c", "c", "c"], truth)
    assert s["together"] == round(2 / 3, 4) and s["merged"] == round(2 / 3, 4)
    assert s["groups"] == 3 and s["largest_group"] == 4
    # one group per item: everything together, nothing merged, and a group never spans splits
    s = score(["x0", "x0", "x1", "x1", "x2", "x2"], truth)
    assert (s["together"], s["merged"], s["spanning"]) == (1.0, 0.0, 0.0)


def test_score_sees_an_item_spanning_splits_when_its_rows_are_in_different_groups():
    truth = np.repeat(np.arange(40), 2)
    s = score([f"row{k}" for k in range(80)], truth)   # every row its own group: most items span splits
    assert s["together"] == 0.0 and s["spanning"] > 0.3


def test_recommend_takes_the_middle_of_the_widest_passing_range_else_the_best_safe_threshold():
    def row(t, together, merged, spanning=0.0):
        return {"min_cosine": t, "together": together, "merged": merged, "spanning": spanning}

    sweep = [row(0.8, 1.0, 0.3), row(0.85, 0.995, 0.01), row(0.9, 0.995, 0.0), row(0.95, 0.992, 0.0),
             row(0.97, 0.5, 0.0, 0.4)]
    rec = _recommend(sweep, "min_cosine")
    assert rec["meets_targets"] and rec["min_cosine"] == 0.9 and rec["range_meeting_targets"] == [0.85, 0.95]
    # nothing passes: the threshold with the fewest items wrong either way (merged + spanning)
    sweep = [row(0.8, 0.99, 0.3, 0.01), row(0.9, 0.7, 0.015, 0.2), row(0.95, 0.4, 0.0, 0.5)]
    rec = _recommend(sweep, "min_cosine")
    assert not rec["meets_targets"] and rec["min_cosine"] == 0.9
    # the text sweep's shape: one more kept together (0.55) is not worth three times the merges
    sweep = [row(0.5, 0.987, 0.048, 0.01), row(0.55, 0.981, 0.014, 0.013), row(0.6, 0.974, 0.005, 0.018),
             row(0.66, 0.951, 0.003, 0.029)]
    assert _recommend(sweep, "min_cosine")["min_cosine"] == 0.6


def test_text_edits_are_seeded_and_change_words_not_only_the_surface():
    vocab = ["alpha", "bravo", "charlie"]
    text = "The food was great and the staff were friendly, 10 out of 10."
    a = edit_text(text, np.random.default_rng(3), vocab)
    assert a == edit_text(text, np.random.default_rng(3), vocab)
    edited = [edit_text(text, np.random.default_rng(s), vocab)[0] for s in range(20)]
    assert all(normalise_text(e) != normalise_text(text) for e in edited)   # a word edit every time


def test_synthetic_copies_are_spread_and_close_to_their_source():
    x = synthetic_batch(0, 3 * SCALE_COPY_EVERY, seed=0)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    copies = [r for r in range(len(x)) if copy_source(r, seed=0) is not None]
    assert copies == [SCALE_COPY_EVERY - 1, 2 * SCALE_COPY_EVERY - 1, 3 * SCALE_COPY_EVERY - 1]
    for r in copies:
        assert unit[r] @ unit[copy_source(r, seed=0)] > 0.92
    others = unit[:10] @ unit[10:20].T
    assert others.max() < 0.9
    # deterministic per row: a batch regenerated alone is the same rows
    assert np.array_equal(synthetic_batch(5, 9, seed=0), x[5:9])
