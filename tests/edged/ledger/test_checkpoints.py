"""The ledger as a Merkle log: checkpoints, roots and proofs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from attribution.receipt import SignedReceipt
from edged import log_tree
from edged.ledger import (
    Ledger,
    LedgerClosedError,
)
from sync import merkle
from tests.support.receipt_factory import make_draft


async def test_merkle_tree_and_checkpoints_follow_the_log(ledger: Ledger,
                                                          ledger_path: Path) -> None:
    leaves: list[bytes] = []
    sizes = []
    for batch in (1, 2, 5, 8, 1, 13):
        receipts = await asyncio.gather(*(ledger.append(make_draft()) for _ in range(batch)))
        leaves += [r.leaf for r in sorted(receipts, key=lambda r: r.seq)]
        checkpoint = ledger.cut_checkpoint(ts=1_700_000_000_000 + len(leaves))
        checkpoint.verify()
        assert checkpoint.checkpoint.size == len(leaves)
        assert checkpoint.checkpoint.root == merkle.reference_root(leaves)
        sizes.append(len(leaves))
    assert ledger.cut_checkpoint(ts=1) == ledger.latest_checkpoint()  # no growth, no new one
    size = len(leaves)
    for seq in (0, 7, size - 1):
        proof = ledger.inclusion_proof(seq, size)
        merkle.verify_inclusion(leaves[seq], seq, size, proof, merkle.reference_root(leaves))
    for first in sizes:
        proof = ledger.consistency_proof(first, size)
        merkle.verify_consistency(first, size, merkle.reference_root(leaves[:first]),
                                  merkle.reference_root(leaves), proof)
    with pytest.raises(ValueError):
        ledger.inclusion_proof(size, size)


def gate_checkpoint(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold the next checkpoint inside its write transaction (it has the write lock and
    has read the size; the root, signature, insert, commit and fsync are still to come).

    Returns (entered, release) like :func:`gate_writer`."""
    entered, release = threading.Event(), threading.Event()
    original_root = log_tree.root

    def gated_root(size: int, subtrees: log_tree.SqlSubtrees) -> bytes:
        assert subtrees.conn.in_transaction
        entered.set()
        release.wait(60)
        return original_root(size, subtrees)

    monkeypatch.setattr(log_tree, "root", gated_root)
    return entered, release


READ_BOUND_S = 5.0  # reads take milliseconds; the margin is for a loaded machine


def test_reads_do_not_wait_for_a_checkpoint(ledger: Ledger,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    receipts = [ledger.append_sync(make_draft(i)) for i in range(5)]
    entered, release = gate_checkpoint(monkeypatch)

    def read_everything() -> tuple[tuple[int, bytes], SignedReceipt | None, list[SignedReceipt]]:
        return ledger.head(), ledger.get(receipts[2].leaf), ledger.page(limit=10)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        checkpoint = pool.submit(ledger.cut_checkpoint, 1_700_000_000_000)
        try:
            assert entered.wait(30), "the checkpoint never reached its transaction"
            try:
                head, found, page = pool.submit(read_everything).result(timeout=READ_BOUND_S)
            except concurrent.futures.TimeoutError:
                pytest.fail(f"reads waited over {READ_BOUND_S} s for a checkpoint's transaction")
        finally:
            release.set()
        signed = checkpoint.result(timeout=30)
    assert head == (5, receipts[-1].leaf)
    assert found is not None and found.raw == receipts[2].raw
    assert [r.raw for r in page] == [r.raw for r in receipts]
    signed.verify()
    assert signed.checkpoint.size == 5
    assert signed.checkpoint.root == merkle.reference_root([r.leaf for r in receipts])


def test_concurrent_checkpoints_are_cut_one_at_a_time(ledger_path: Path,
                                                      node_key: SigningKey) -> None:
    ledger = Ledger(ledger_path, node_key)
    receipts = [ledger.append_sync(make_draft(i)) for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        signed = list(pool.map(lambda _: ledger.cut_checkpoint(1_700_000_000_000), range(16)))
    assert {s.encode() for s in signed} == {signed[0].encode()}
    assert signed[0].checkpoint.root == merkle.reference_root([r.leaf for r in receipts])
    ledger.close()
    with pytest.raises(LedgerClosedError):
        ledger.cut_checkpoint(1_700_000_000_001)
