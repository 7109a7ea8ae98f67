"""The ledger's reads: pages, receipts by id, the head."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from attribution.receipt import ZERO_HASH
from edged.ledger import Ledger, LedgerClosedError
from tests.support.receipt_factory import make_draft


async def test_page_get_head(ledger: Ledger) -> None:
    assert ledger.head() == (0, ZERO_HASH) and ledger.count() == 0
    assert ledger.page() == [] and ledger.get(bytes(32)) is None
    receipts = [await ledger.append(make_draft(i)) for i in range(10)]
    assert [r.seq for r in ledger.page(limit=3)] == [0, 1, 2]
    assert [r.seq for r in ledger.page(after_seq=2, limit=3)] == [3, 4, 5]
    assert [r.seq for r in ledger.page(after_seq=8)] == [9]
    assert ledger.page(after_seq=9) == [] and ledger.page(limit=0) == []
    assert [r.raw for r in ledger.page(limit=100)] == [r.raw for r in receipts]
    assert ledger.raw_page(after_seq=4, limit=2) == [receipts[5].raw, receipts[6].raw]
    for receipt in receipts:
        found = ledger.get(receipt.leaf)
        assert found is not None
        assert found.raw == receipt.raw and found.fields == receipt.fields
    assert ledger.get(receipts[0].raw[:32]) is None
    assert ledger.head() == (10, receipts[-1].leaf)


async def test_evidence_is_read_by_its_receipt_id(ledger: Ledger) -> None:
    first = await ledger.append(make_draft(0), evidence=b"one")
    second = await ledger.append(make_draft(1), evidence=b"two")
    assert ledger.get_evidence(first.leaf) == b"one"
    assert ledger.get_evidence(second.leaf) == b"two"
    assert ledger.get_evidence(bytes(32)) is None


def test_every_read_refuses_once_closed(ledger_path: Path, node_key: SigningKey) -> None:
    ledger = Ledger(ledger_path, node_key)
    receipt = ledger.append_sync(make_draft())
    ledger.cut_checkpoint(1_700_000_000_000)
    ledger.close()
    reads: list[Callable[[], object]] = [
        ledger.head, ledger.count, ledger.verify, ledger.latest_checkpoint,
        lambda: ledger.get(receipt.leaf), lambda: ledger.get_evidence(receipt.leaf),
        lambda: ledger.page(), lambda: ledger.checkpoint_at(1), lambda: ledger.root(1)]
    for read in reads:
        with pytest.raises(LedgerClosedError):
            read()
