"""Serving the sync protocol: cutting batches to the protocol's limits."""

from __future__ import annotations

from edged.exchange.server import BATCH_OVERHEAD_BYTES, fitting_prefix
from sync.batch import MAX_BATCH_BYTES


def test_batches_are_cut_to_fit_the_byte_limit() -> None:
    """Receipts with long payee lists can be kilobytes each: a batch of the most receipts
    allowed must still fit in MAX_BATCH_BYTES, or push and pull would stall there."""
    big = [bytes([i % 256]) * 60_000 for i in range(200)]  # 12 MB
    kept = fitting_prefix(big)
    assert 0 < len(kept) < len(big) and kept == big[:len(kept)]
    assert sum(len(raw) + 5 for raw in kept) <= MAX_BATCH_BYTES - BATCH_OVERHEAD_BYTES
    assert sum(len(raw) + 5 for raw in big[:len(kept) + 1]) > MAX_BATCH_BYTES - BATCH_OVERHEAD_BYTES
    small = [b"r" * 600] * 4096
    assert fitting_prefix(small) == small
