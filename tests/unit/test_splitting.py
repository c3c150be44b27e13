"""Split assignment: id-derived and stable, groups kept whole, stratified within tolerance."""

import numpy as np
import pyarrow as pa

from trainwise.components.data.contract import read_manifest, read_table
from trainwise.components.data.splitting import assign_splits, class_fraction_gap, split_counts, split_keys

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_adding_rows_never_moves_existing_rows():
    ids = [f"row-{i}" for i in range(2000)]
    before = assign_splits(ids, fractions=FRACTIONS, seed=3)
    grown = ids[:1000] + [f"new-{i}" for i in range(500)] + ids[1000:]  # new rows interleaved
    after = dict(zip(grown, assign_splits(grown, fractions=FRACTIONS, seed=3)))
    assert [after[i] for i in ids] == before
    assert set(before) == {"train", "val", "test"}
    assert assign_splits(ids, fractions=FRACTIONS, seed=4) != before  # the seed is the salt


def test_a_group_goes_wholly_to_one_split():
    rows = [(f"id-{i}", f"g-{i // 4}") for i in range(400)]  # 100 groups of 4 rows
    table = pa.table({"id": [r for r, _ in rows], "group": [g for _, g in rows]})
    splits = assign_splits(split_keys(table), fractions=FRACTIONS, seed=0)
    per_group: dict = {}
    for (_, g), s in zip(rows, splits):
        per_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in per_group.values())
    assert len({next(iter(s)) for s in per_group.values()}) == 3  # groups do spread over the splits
    # without a group column the id decides
    assert split_keys(table.drop_columns(["group"])) == table.column("id").to_pylist()


def test_digits_split_is_stratified_within_tolerance(digits_split):
    man = read_manifest(digits_split)
    t = read_table(digits_split, columns=["label", "split"])
    per = split_counts(t.column("split").to_pylist(), t.column("label").to_pylist(), man["classes"])
    # ~180 rows a class: the binomial spread of a 15% share is ~2.7 points; 8 points is a broken split
    assert class_fraction_gap(per, FRACTIONS) < 0.08
    shares = {s: sum(c.values()) / man["rows"] for s, c in per.items()}
    assert all(abs(shares[s] - f) < 0.03 for s, f in FRACTIONS.items())


def test_class_fraction_gap_sees_an_unstratified_split():
    per = {"train": {"a": 70, "b": 100}, "val": {"a": 15, "b": 0}, "test": {"a": 15, "b": 0}}
    assert np.isclose(class_fraction_gap(per, FRACTIONS), 0.3)


def test_a_given_test_set_is_kept_and_val_is_drawn_from_train_by_group():
    from trainwise.components.data.splitting import assign_splits_given, contamination

    keys = [f"g{k // 2}" for k in range(400)]            # groups of two rows
    given = ["test" if k % 10 == 0 else "train" for k in range(400)]
    splits = assign_splits_given(keys, given, fractions={"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    assert all(s == "test" for s, g in zip(splits, given) if g == "test")          # never redrawn
    drawn = [s for s, g in zip(splits, given) if g == "train"]
    assert set(drawn) == {"train", "val"}                                         # val carved from train only
    assert 0.1 < drawn.count("val") / len(drawn) < 0.3                            # 0.15 / 0.85 renormalised
    for k in range(0, 400, 2):                                                    # a group's drawn rows stay together
        if given[k] == given[k + 1] == "train":
            assert splits[k] == splits[k + 1]
    # a test row whose group partner the data put in train: contamination, counted, not moved
    c = contamination(keys, splits)
    partners = sum(1 for k in range(0, 400, 2) if "test" in (given[k], given[k + 1])
                   and "train" in (splits[k], splits[k + 1]))
    assert c["test"] == partners > 0
    # a row with no given split follows the given rows of its group (test over train)
    assert assign_splits_given(["a", "a", "b"], ["test", None, None], fractions={"train": 0.7, "val": 0.15,
                                                                               "test": 0.15}, seed=0)[1] == "test"
