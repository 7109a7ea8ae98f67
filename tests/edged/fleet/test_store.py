"""The fleet store verifies before it stores, on SQLite and on a real PostgreSQL, and the
database (not memory) keeps fleet processes sharing it from storing a receipt twice."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from edged.devtools.simulated_node import SimulatedNode
from edged.fleet.store import FleetRefused, FleetStore
from sync import merkle
from sync.batch import Batch
from sync.checkpoint import SignedCheckpoint
from tests.edged.fleet.conftest import Clock, enrolled_node
from tests.support.receipt_factory import key_from


def _count(store: FleetStore) -> int:
    with store.db.reading() as tx:
        return int(tx.one("SELECT COUNT(*) FROM fleet_receipts")[0])


def test_batches_are_verified_stored_and_deduplicated(store: FleetStore, clock: Clock) -> None:
    node = enrolled_node(store, clock, "a")
    node.append(10)
    assert store.ingest(node.batch(0).encode()) == 10
    node.append(7)
    overlapping = Batch(node.origin, node.raws[5:17], node.checkpoint(17),
                        merkle.consistency_proof(10, 17, node._tree), 10)
    assert store.ingest(overlapping.encode()) == 7
    assert _count(store) == 17
    assert store.heads() == [{"origin": node.origin.hex(), "size": 17}]
    record = store.node(node.origin)
    assert record is not None and record.size == 17 and record.checkpoint_ts == clock.now


def test_a_replayed_batch_is_refused_and_stores_nothing(store: FleetStore, clock: Clock) -> None:
    node = enrolled_node(store, clock, "a")
    node.append(4)
    first = node.batch(0).encode()
    assert store.ingest(first) == 4
    with pytest.raises(FleetRefused) as refused:  # its proof is from 0, the fleet knows 4
        store.ingest(first)
    assert refused.value.status == 400
    assert _count(store) == 4


def test_a_tampered_receipt_is_refused(store: FleetStore, clock: Clock) -> None:
    node = enrolled_node(store, clock, "a")
    node.append(5)
    batch = node.batch(0)
    raw = bytearray(batch.receipts[2])
    raw[-40] ^= 1
    tampered = Batch(batch.origin, [*batch.receipts[:2], bytes(raw), *batch.receipts[3:]],
                     batch.checkpoint)
    with pytest.raises(FleetRefused) as refused:
        store.ingest(tampered.encode())
    assert (refused.value.status, refused.value.code) == (400, "invalid_batch")
    assert _count(store) == 0
    assert store.ingest(batch.encode()) == 5


def test_unknown_revoked_and_pre_enrollment_batches_are_refused(store: FleetStore,
                                                                clock: Clock) -> None:
    stranger = SimulatedNode(key_from("stranger"), clock_ms=clock)
    stranger.append(2)
    with pytest.raises(FleetRefused) as refused:
        store.ingest(stranger.batch(0).encode())
    assert (refused.value.status, refused.value.code) == (403, "unknown_node")

    node = enrolled_node(store, clock, "a")
    node.append(3)
    old = node.batch(0, ts=clock.now - 1)  # signed before the node was enrolled
    with pytest.raises(FleetRefused) as refused:
        store.ingest(old.encode())
    assert refused.value.code == "before_enrollment"

    store.revoke(node.origin)
    assert not store.is_enrolled(node.origin)
    with pytest.raises(FleetRefused) as refused:
        store.ingest(node.batch(0).encode())
    assert refused.value.code == "revoked_node"
    assert _count(store) == 0
    with pytest.raises(FleetRefused) as refused:
        store.revoke(stranger.origin)
    assert refused.value.status == 404

    clock.now += 10
    store.enroll(node.origin, "a")  # enrolled again: from now on
    with pytest.raises(FleetRefused) as refused:
        store.ingest(old.encode())
    assert refused.value.code == "before_enrollment"
    assert store.ingest(node.batch(0).encode()) == 3


def test_an_equivocating_node_is_frozen_with_evidence(store: FleetStore, clock: Clock) -> None:
    honest = enrolled_node(store, clock, "a")
    honest.append(4)
    assert store.ingest(honest.batch(0).encode()) == 4
    fork = SimulatedNode(honest.key, clock_ms=clock, fee=7)  # same key, another history
    fork.append(4)
    with pytest.raises(FleetRefused) as refused:
        store.ingest(fork.batch(4).encode())
    assert (refused.value.status, refused.value.code) == (409, "equivocation")
    record = store.node(honest.origin)
    assert record is not None and record.frozen
    evidence = store.equivocations()
    assert len(evidence) == 1 and evidence[0]["origin"] == honest.origin.hex()
    assert store.heads() == []  # relays stop offering it
    honest.append(2)
    with pytest.raises(FleetRefused) as refused:
        store.ingest(honest.batch(4).encode())
    assert refused.value.code == "frozen_node"


def test_inclusion_proofs_verify_against_the_signed_checkpoint(store: FleetStore,
                                                               clock: Clock) -> None:
    node = enrolled_node(store, clock, "a")
    node.append(13)
    store.ingest(node.batch(0).encode())
    for seq in (0, 6, 12):
        proof = store.inclusion_proof(node.origin, seq)
        checkpoint = SignedCheckpoint.from_json(proof["checkpoint"])
        checkpoint.verify()
        merkle.verify_inclusion(bytes.fromhex(proof["leaf"]), seq, checkpoint.checkpoint.size,
                                [bytes.fromhex(h) for h in proof["proof"]],
                                checkpoint.checkpoint.root)
    with pytest.raises(FleetRefused):
        store.inclusion_proof(node.origin, 13)


def test_fleet_processes_sharing_a_database_never_store_a_receipt_twice(
        open_store: Callable[[], FleetStore], clock: Clock) -> None:
    """Four stores (four connections, as four fleet processes) ingest the same stream of
    batches concurrently; every receipt is stored exactly once."""
    stores = [open_store() for _ in range(4)]
    node = enrolled_node(stores[0], clock, "a")
    node.append(40)
    batches = [node.batch(0, 10).encode()] + [
        Batch(node.origin, node.raws[start:start + 10], node.checkpoint(start + 10),
              merkle.consistency_proof(start, start + 10, node._tree), start).encode()
        for start in range(10, 40, 10)]
    stored = [0] * len(stores)

    def push_all(index: int) -> None:
        for body in batches:
            try:
                stored[index] += stores[index].ingest(body)
            except FleetRefused as exc:
                assert exc.status == 400  # already stored by another process: stale proof

    threads = [threading.Thread(target=push_all, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(stored) == 40
    assert _count(stores[0]) == 40
    with stores[0].db.reading() as tx:
        seqs = [row[0] for row in tx.all("SELECT seq FROM fleet_receipts ORDER BY seq")]
    assert seqs == list(range(40))


def test_enrollment_is_checked_without_the_database(store: FleetStore, clock: Clock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """is_enrolled runs on the event loop for every sync request: memory only."""
    node = enrolled_node(store, clock, "a")
    revoked = enrolled_node(store, clock, "b")
    store.revoke(revoked.origin)

    def no_database() -> None:
        raise AssertionError("is_enrolled used the database")

    monkeypatch.setattr(store.db, "reading", no_database)
    monkeypatch.setattr(store.db, "transaction", no_database)
    assert store.is_enrolled(node.origin)
    assert not store.is_enrolled(revoked.origin)
    assert not store.is_enrolled(key_from("stranger").verify_key.encode())


def test_enrollments_by_another_fleet_process_are_read_again(
        open_store: Callable[[], FleetStore], clock: Clock) -> None:
    here, elsewhere = open_store(), open_store()  # two fleet processes, one database
    node = enrolled_node(elsewhere, clock, "a")
    assert not here.is_enrolled(node.origin)  # not read yet
    assert here.recheck_enrolled(node.origin) and here.is_enrolled(node.origin)
    assert open_store().is_enrolled(node.origin)  # loaded when a store opens

    elsewhere.revoke(node.origin)
    assert here.is_enrolled(node.origin)  # until read again
    here.reload_enrolled()
    assert not here.is_enrolled(node.origin)
    elsewhere.enroll(node.origin)
    here.reload_enrolled()
    assert here.is_enrolled(node.origin)
    elsewhere.revoke(node.origin)
    assert not here.recheck_enrolled(node.origin) and not here.is_enrolled(node.origin)
