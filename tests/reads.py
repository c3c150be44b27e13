"""Which columns a stage asks the data contract for: a spy on every Parquet read."""

from __future__ import annotations

import trainwise.components.data.contract as contract


def spy_reads(monkeypatch) -> list:
    """Record the ``columns`` of every ``contract.iter_file_batches`` call (None: every column)."""
    reads = []
    real = contract.iter_file_batches

    def spy(parquet_file, **kw):
        reads.append(kw.get("columns"))
        return real(parquet_file, **kw)

    monkeypatch.setattr(contract, "iter_file_batches", spy)
    return reads
