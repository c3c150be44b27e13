"""The synthetic split fixture follows the data contract other stages rely on."""

import pytest

from trainwise.components.data.contract import read_manifest, read_table
from tests.demo_data import write_synthetic_split


@pytest.mark.parametrize("modality,extra", [("text", None), ("sequence", "sequence_length"),
                                            ("features", "feature_names")])
def test_synthetic_split_contract(tmp_path, modality, extra):
    d = write_synthetic_split(tmp_path, modality, n_per_class=20, n_classes=3)
    man = read_manifest(d)
    table = read_table(d)
    assert man["payload"] == modality and man["rows"] == 60 == table.num_rows
    assert set(table.column("split").to_pylist()) <= {"train", "val", "test"}
    assert sorted(set(table.column("label").to_pylist())) == [0, 1, 2]
    if extra:
        assert extra in man
    # same seed -> same ids and rows (the fixture is reproducible)
    again = read_table(write_synthetic_split(tmp_path / "b", modality, n_per_class=20, n_classes=3))
    assert again.column("id").to_pylist() == table.column("id").to_pylist()
