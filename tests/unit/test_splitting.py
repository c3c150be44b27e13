from collections import Counter

import pytest

from components.data.splitting import assign_splits, split_counts

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_split_is_a_function_of_the_id_only():
    ids = [f"row-{i}" for i in range(5000)]
    first = dict(zip(ids, assign_splits(ids, fractions=FRACTIONS, seed=0)))
    more = ids + [f"new-{i}" for i in range(2000)]
    again = dict(zip(more, assign_splits(list(reversed(more)), fractions=FRACTIONS, seed=0)[::-1]))
    assert all(first[i] == again[i] for i in ids)  # adding rows moves no existing row


def test_fractions_are_respected_and_seed_matters():
    ids = [f"row-{i}" for i in range(20000)]
    counts = Counter(assign_splits(ids, fractions=FRACTIONS, seed=0))
    for name, frac in FRACTIONS.items():
        assert counts[name] / len(ids) == pytest.approx(frac, abs=0.01)
    other = assign_splits(ids, fractions=FRACTIONS, seed=1)
    assert other != assign_splits(ids, fractions=FRACTIONS, seed=0)


def test_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(["a"], fractions={"train": 0.5, "test": 0.2}, seed=0)


def test_split_counts_per_class():
    assert split_counts(["train", "test", "train"], [0, 1, 1], ["x", "y"]) == {
        "train": {"x": 1, "y": 1}, "test": {"x": 0, "y": 1}}
