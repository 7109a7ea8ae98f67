"""Epochs cover each node's verified log prefixes once, total every fee exactly, and serve
payout proofs; closing is safe with several fleet processes on one database."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from attribution.payees import split_ppm
from edged.fleet.epochs import Epochs
from edged.fleet.store import FleetRefused, FleetStore
from sync import merkle
from sync.settlement.payout import PayoutProof, PayoutTree, verify_payout
from tests.edged.fleet.conftest import Clock, enrolled_node

OWNER = "0x" + "11" * 20
DATA = "0x" + "22" * 20


def _push(store: FleetStore, node: object, have: int) -> None:
    store.ingest(node.batch(have).encode())  # type: ignore[attr-defined]


def test_an_epoch_totals_every_fee_exactly(store: FleetStore, epochs: Epochs,
                                           clock: Clock) -> None:
    odd = split_ppm([(OWNER, "owner", 1), (DATA, "data", 1), ("operator-x", "operator", 1)])
    a = enrolled_node(store, clock, "a", fee=1001, payees=odd)
    b = enrolled_node(store, clock, "b", fee=10)
    a.append(9)
    b.append(4)
    _push(store, a, 0)
    _push(store, b, 0)
    closed = epochs.close()
    assert closed["epoch"] == 1 and closed["receipts"] == 13 and closed["malformed"] == 0
    assert closed["total"] == 9 * 1001 + 4 * 10  # no unit created or lost
    assert sum(p["amount"] for p in closed["payees"]) == closed["total"]
    owed = {p["payee"]: p["amount"] for p in closed["payees"]}
    # 1001 split in thirds is 333.67 each: 334 + 334 + 333 per receipt (largest remainder,
    # ties in payee order), and b's 10 split 60/30/10 of its own default payees.
    assert owed["operator-x"] == 9 * 333
    assert owed[OWNER] == 9 * 334 + 4 * 6
    assert owed[DATA] == 9 * 334 + 4 * 3
    assert closed["unresolved"] == ["operator-a", "operator-x"] and closed["root"] is None
    assert {c["origin"]: (c["start"], c["end"]) for c in closed["checkpoints"]} == {
        a.origin.hex(): (0, 9), b.origin.hex(): (0, 4)}


def test_consecutive_epochs_cover_disjoint_ranges(store: FleetStore, epochs: Epochs,
                                                  clock: Clock) -> None:
    node = enrolled_node(store, clock, "a")
    node.append(10)
    _push(store, node, 0)
    assert epochs.close()["receipts"] == 10
    with pytest.raises(FleetRefused) as refused:
        epochs.close()
    assert (refused.value.status, refused.value.code) == (409, "empty_epoch")
    node.append(5)
    _push(store, node, 10)
    second = epochs.close()
    assert second["epoch"] == 2 and second["receipts"] == 5
    assert second["checkpoints"][0]["start"] == 10 and second["checkpoints"][0]["end"] == 15
    assert [e["receipts"] for e in epochs.closed()] == [10, 5]
    with pytest.raises(FleetRefused) as refused:
        epochs.summary(3)
    assert refused.value.status == 404


def test_payout_proofs_need_addresses_and_verify(store: FleetStore, epochs: Epochs,
                                                 clock: Clock) -> None:
    node = enrolled_node(store, clock, "a", fee=100)
    node.append(3)
    _push(store, node, 0)
    epochs.close()
    with pytest.raises(FleetRefused) as refused:
        epochs.proof(1, OWNER)
    assert refused.value.code == "payee_not_address" and "operator-a" in refused.value.message
    with pytest.raises(FleetRefused) as refused:
        epochs.set_address("operator-a", "not-an-address")
    assert refused.value.status == 400
    epochs.set_address("operator-a", "0x" + "3C" * 20)
    summary = epochs.summary(1)
    assert summary["unresolved"] == [] and summary["leaf_count"] == 3
    root = bytes.fromhex(summary["root"])
    for payee, amount in ((OWNER, 180), (DATA, 90), ("operator-a", 30)):
        claim = epochs.proof(1, payee)
        assert int(claim["amount"]) == amount
        verify_payout(PayoutProof(1, bytes.fromhex(claim["payee"][2:]), amount,
                                  claim["index"], claim["leaf_count"],
                                  [bytes.fromhex(h[2:]) for h in claim["proof"]]), root)
    with pytest.raises(FleetRefused) as refused:
        epochs.proof(1, "0x" + "99" * 20)
    assert refused.value.status == 404


def test_a_settled_payout_tree_outlives_address_book_changes(store: FleetStore,
                                                              epochs: Epochs,
                                                              clock: Clock) -> None:
    node = enrolled_node(store, clock, "a", fee=100)
    node.append(2)
    _push(store, node, 0)
    epochs.close()
    epochs.set_address("operator-a", "0x" + "33" * 20)
    tree = epochs.payout_tree(1)
    settled = epochs.mark_settled(1, tree, "local")
    assert (settled.root, settled.size, settled.total) == (tree.root, 3, 200)
    epochs.set_address("operator-a", "0x" + "44" * 20)  # too late for epoch 1
    assert epochs.payout_tree(1).root == tree.root
    assert epochs.summary(1)["root"] == tree.root.hex() and epochs.summary(1)["settled"]
    claim = epochs.proof(1, "0x" + "33" * 20)
    assert int(claim["amount"]) == 20 and claim["root"] == "0x" + tree.root.hex()
    other = epochs.payout_tree(1)
    again = epochs.mark_settled(1, PayoutTree(1, {bytes(20): 5}), "local")  # first call wins
    assert again.root == other.root == tree.root


def test_hostile_fees_and_payee_ids_are_counted_not_paid(store: FleetStore, epochs: Epochs,
                                                         clock: Clock) -> None:
    """A node that signs receipts with unpayable payee ids (a NUL, 300 characters) cannot
    stop epochs from closing (or settling) for everybody: those receipts are malformed."""
    node = enrolled_node(store, clock, "a", fee=10)
    node.append(3)
    node.append(1, payees=split_ppm([("bad\x00id", "owner", 1)]))
    node.append(1, payees=split_ppm([("x" * 300, "owner", 1)]))
    _push(store, node, 0)
    closed = epochs.close()
    assert closed["receipts"] == 5 and closed["total"] == 30 and closed["malformed"] == 2
    assert {p["payee"] for p in closed["payees"]} == {OWNER, DATA, "operator-a"}


def test_totals_beyond_64_bits_are_exact(store: FleetStore, epochs: Epochs,
                                         clock: Clock) -> None:
    biggest = (1 << 64) - 1  # the largest fee a receipt can carry
    node = enrolled_node(store, clock, "a", fee=biggest,
                         payees=split_ppm([(OWNER, "owner", 1)]))
    node.append(4)
    _push(store, node, 0)
    closed = epochs.close()
    assert closed["total"] == 4 * biggest
    assert closed["payees"] == [{"payee": OWNER, "amount": 4 * biggest, "address": OWNER}]
    assert epochs.top_payees(5) == [(OWNER, 4 * biggest)]
    assert epochs.payout_tree(1).total == 4 * biggest


def test_fleet_processes_racing_to_close_never_count_a_receipt_twice(
        open_store: Callable[[], FleetStore], clock: Clock) -> None:
    stores = [open_store() for _ in range(3)]
    node = enrolled_node(stores[0], clock, "a")
    node.append(30)
    _push(stores[0], node, 0)
    outcomes: list[str] = []

    def close(store: FleetStore) -> None:
        try:
            outcomes.append(f"closed {Epochs(store).close()['epoch']}")
        except FleetRefused as exc:
            outcomes.append(exc.code or "")

    threads = [threading.Thread(target=close, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes.count("closed 1") == 1, outcomes
    assert sorted(o for o in outcomes if o != "closed 1") in (
        ["empty_epoch", "empty_epoch"], ["empty_epoch", "epoch_conflict"],
        ["epoch_conflict", "epoch_conflict"]), outcomes
    assert sum(e["receipts"] for e in Epochs(stores[1]).closed()) == 30


def test_epoch_ranges_are_the_checkpoints_anchored(store: FleetStore, epochs: Epochs,
                                                   clock: Clock) -> None:
    node = enrolled_node(store, clock, "a")
    node.append(6)
    _push(store, node, 0)
    epochs.close()
    (cp,) = epochs.checkpoints(1)
    assert (cp.origin, cp.start, cp.end) == (node.origin, 0, 6)
    assert cp.root == merkle.root(6, node._tree)
