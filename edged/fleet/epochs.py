"""Royalty epochs: which receipts an epoch covers, what each payee is owed, the payout tree.

An epoch is closed over, per enrolled node, the receipts from the end of that node's
previous epoch up to the last checkpoint the fleet has verified (receipts are assigned to
epochs by their checkpoint, so every epoch is a set of signed, anchorable log prefixes).
Each receipt's ``fee`` is split among its ``payees`` by
:func:`sync.settlement.payout.split_fee` (exact integer arithmetic, rounding rule documented
there) and summed per payee id.

The epoch number is the epochs' primary key, so two fleet processes racing to close the
same epoch cannot both succeed, and the per-node ranges of consecutive epochs never
overlap. Amounts are stored as decimal text: a total owed in wei can exceed 64 bits.

Settling an epoch fixes its payout tree: the (address, amount) leaves are stored with the
root, and the epoch's proofs come from them from then on, whatever later happens to the
address book, so they always match what was posted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from edged.fleet.db import Transaction
from edged.fleet.store import FleetConflict, FleetNotFound, FleetRefused, FleetStore
from sync.settlement.payout import (
    ADDRESS_RE,
    PPM,
    PayoutError,
    PayoutTree,
    normalise_address,
    split_fee,
)

FETCH_ROWS = 10_000
MAX_FEE = 1 << 64  # canonical receipts cannot carry more; anything else is malformed
MAX_PAYEE_ID = 256


@dataclass
class EpochTotals:
    receipts: int = 0
    malformed: int = 0
    amounts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> int:
        return sum(self.amounts.values())


def valid_payee_id(payee: Any) -> bool:
    """1-256 characters, none of them a control character."""
    return (isinstance(payee, str) and 0 < len(payee) <= MAX_PAYEE_ID
            and all(" " <= char != "\x7f" for char in payee))


def _valid_split(fee: Any, payees: Any) -> bool:
    if not isinstance(fee, int) or isinstance(fee, bool) or not 0 <= fee < MAX_FEE:
        return False
    if not isinstance(payees, list) or not payees:
        return False
    for payee in payees:
        if not (isinstance(payee, list) and len(payee) == 3 and valid_payee_id(payee[0])
                and isinstance(payee[1], str) and isinstance(payee[2], int)
                and not isinstance(payee[2], bool) and payee[2] >= 0):
            return False
    return sum(payee[2] for payee in payees) == PPM


def add_receipts(totals: EpochTotals, raws: Iterable[bytes]) -> None:
    """Add each receipt's split to ``totals``; receipts whose fee/payees are malformed (an
    origin that signed over a broken receipt) are counted, not paid."""
    splits: dict[tuple[int, bytes], list[tuple[str, int]]] = {}
    amounts = totals.amounts
    for raw in raws:
        fields = msgpack.unpackb(raw, raw=False)
        fee, payees = fields.get("fee"), fields.get("payees")
        totals.receipts += 1
        if not _valid_split(fee, payees):
            totals.malformed += 1
            continue
        key = (fee, msgpack.packb(payees))
        split = splits.get(key)
        if split is None:
            split = splits[key] = split_fee(fee, payees)
        for payee, units in split:
            amounts[payee] += units


@dataclass(frozen=True)
class EpochRange:
    origin: bytes
    start: int
    end: int
    root: bytes


class Epochs:
    def __init__(self, store: FleetStore) -> None:
        self.store = store

    def close(self) -> dict[str, Any]:
        """Close the next epoch over everything verified since the last one.

        The totals are computed in a read snapshot, so ingest goes on meanwhile (a 1M
        receipt epoch takes seconds); the short write transaction then inserts the epoch
        under its number, the primary key: if another fleet process closed that epoch in
        the meantime, this one fails with ``epoch_conflict`` and nothing is written."""
        db = self.store.db
        with db.reading() as tx:
            epoch = (tx.one("SELECT MAX(epoch) FROM fleet_epochs")[0] or 0) + 1
            ranges = self._open_ranges(tx)
            if not ranges:
                raise FleetConflict("nothing new since the last epoch", "empty_epoch")
            totals = EpochTotals()
            for item in ranges:
                add_receipts(totals, self._raws(tx, item))
        try:
            with db.transaction() as tx:
                tx.execute("INSERT INTO fleet_epochs (epoch, closed_ms, receipts, malformed, "
                           "total) VALUES (?, ?, ?, ?, ?)",
                           (epoch, self.store.clock_ms(), totals.receipts, totals.malformed,
                            str(totals.total)))
                tx.insert_rows("fleet_epoch_checkpoints",
                               ("epoch", "origin", "start_seq", "end_seq", "root"),
                               [(epoch, r.origin, r.start, r.end, r.root) for r in ranges])
                tx.insert_rows("fleet_epoch_totals", ("epoch", "payee", "amount"),
                               [(epoch, payee, str(amount))
                                for payee, amount in sorted(totals.amounts.items()) if amount])
        except Exception as exc:
            if db.is_unique_violation(exc):
                raise FleetConflict("another fleet process closed this epoch; try again",
                                   "epoch_conflict") from None
            raise
        return self.summary(epoch)

    @staticmethod
    def _open_ranges(tx: Transaction) -> list[EpochRange]:
        rows = tx.all(
            "SELECT n.node, n.size, c.root, "
            "(SELECT MAX(e.end_seq) FROM fleet_epoch_checkpoints e WHERE e.origin = n.node) "
            "FROM fleet_nodes n JOIN fleet_checkpoints c ON c.origin = n.node "
            "AND c.size = n.size ORDER BY n.node")
        return [EpochRange(bytes(node), start or 0, size, bytes(root))
                for node, size, root, start in rows if size > (start or 0)]

    @staticmethod
    def _raws(tx: Transaction, item: EpochRange) -> Iterable[bytes]:
        for first in range(item.start, item.end, FETCH_ROWS):
            last = min(item.end, first + FETCH_ROWS)
            for (raw,) in tx.all("SELECT raw FROM fleet_receipts WHERE origin = ? AND seq >= ? "
                                 "AND seq < ? ORDER BY seq", (item.origin, first, last)):
                yield bytes(raw)

    # --- reading -------------------------------------------------------------------------

    def closed(self) -> list[dict[str, Any]]:
        with self.store.db.reading() as tx:
            rows = tx.all("SELECT epoch, closed_ms, receipts, total FROM fleet_epochs "
                          "ORDER BY epoch")
        return [{"epoch": e, "closed_ms": c, "receipts": r, "total": int(t)}
                for e, c, r, t in rows]

    def top_payees(self, limit: int) -> list[tuple[str, int]]:
        """The payees owed most over every closed epoch."""
        owed: dict[str, int] = defaultdict(int)
        with self.store.db.reading() as tx:
            for payee, amount in tx.all("SELECT payee, amount FROM fleet_epoch_totals"):
                owed[payee] += int(amount)
        return sorted(owed.items(), key=lambda item: (-item[1], item[0]))[:limit]

    @staticmethod
    def _totals(tx: Transaction, epoch: int) -> list[tuple[str, int]]:
        """``(payee id, amount)`` of ``epoch``, largest first."""
        rows = tx.all("SELECT payee, amount FROM fleet_epoch_totals WHERE epoch = ?", (epoch,))
        return sorted(((payee, int(amount)) for payee, amount in rows),
                      key=lambda item: (-item[1], item[0]))

    @staticmethod
    def _settled_tree(tx: Transaction, epoch: int) -> PayoutTree | None:
        """The payout tree fixed when ``epoch`` was settled, if it was."""
        if tx.one("SELECT 1 FROM fleet_settled_epochs WHERE epoch = ?", (epoch,)) is None:
            return None
        leaves = tx.all("SELECT address, amount FROM fleet_settled_payouts WHERE epoch = ?",
                        (epoch,))
        return PayoutTree(epoch, {normalise_address(a): int(n) for a, n in leaves})

    def summary(self, epoch: int) -> dict[str, Any]:
        with self.store.db.reading() as tx:
            row = tx.one("SELECT closed_ms, receipts, total, malformed FROM fleet_epochs "
                         "WHERE epoch = ?", (epoch,))
            if row is None:
                raise FleetNotFound(f"no epoch {epoch}", "unknown_epoch")
            totals = self._totals(tx, epoch)
            ranges = tx.all("SELECT origin, start_seq, end_seq, root FROM "
                            "fleet_epoch_checkpoints WHERE epoch = ? ORDER BY origin", (epoch,))
            book = self._address_book(tx)
            settled = self._settled_tree(tx, epoch)
        addresses = {payee: _resolve(payee, book) for payee, _ in totals}
        unresolved = sorted(payee for payee, address in addresses.items() if address is None)
        result: dict[str, Any] = {
            "epoch": epoch, "closed_ms": row[0], "receipts": row[1], "total": int(row[2]),
            "malformed": row[3],
            "payees": [{"payee": payee, "amount": amount, "address": addresses[payee]}
                       for payee, amount in totals],
            "checkpoints": [{"origin": bytes(o).hex(), "start": s, "end": e,
                             "root": bytes(r).hex()} for o, s, e, r in ranges],
            "unresolved": unresolved, "root": None, "leaf_count": None,
            "settled": settled is not None}
        tree = settled or (self._tree(epoch, totals, addresses) if not unresolved else None)
        if tree is not None:
            result["root"], result["leaf_count"] = tree.root.hex(), tree.size
        return result

    def checkpoints(self, epoch: int) -> list[EpochRange]:
        with self.store.db.reading() as tx:
            rows = tx.all("SELECT origin, start_seq, end_seq, root FROM fleet_epoch_checkpoints "
                          "WHERE epoch = ? ORDER BY origin", (epoch,))
        return [EpochRange(bytes(o), s, e, bytes(r)) for o, s, e, r in rows]

    def payout_tree(self, epoch: int) -> PayoutTree:
        """The epoch's payout tree: the settled one, else one over the payees' current
        addresses (409 naming the payees that have none yet)."""
        with self.store.db.reading() as tx:
            if tx.one("SELECT 1 FROM fleet_epochs WHERE epoch = ?", (epoch,)) is None:
                raise FleetNotFound(f"no epoch {epoch}", "unknown_epoch")
            settled = self._settled_tree(tx, epoch)
            if settled is not None:
                return settled
            totals = self._totals(tx, epoch)
            book = self._address_book(tx)
        addresses = {payee: _resolve(payee, book) for payee, _ in totals}
        missing = sorted(payee for payee, address in addresses.items() if address is None)
        if missing:
            raise FleetConflict("these payees have no address to be paid at: "
                               + ", ".join(missing) + " (set one with `edged fleet payees set "
                               "PAYEE 0xADDRESS`)", "payee_not_address")
        return self._tree(epoch, totals, addresses)

    @staticmethod
    def _tree(epoch: int, totals: list[tuple[str, int]],
              addresses: dict[str, str | None]) -> PayoutTree:
        amounts: dict[bytes, int] = defaultdict(int)
        for payee, amount in totals:
            amounts[normalise_address(addresses[payee] or "")] += amount
        return PayoutTree(epoch, amounts)

    def proof(self, epoch: int, payee: str) -> dict[str, Any]:
        """A payee's claim: ``payee`` is a payee id or an address."""
        tree = self.payout_tree(epoch)
        with self.store.db.reading() as tx:
            address = _resolve(payee, self._address_book(tx))
        if address is None:
            raise FleetNotFound(f"{payee!r} is neither an address nor a known payee",
                               "unknown_payee")
        try:
            proof = tree.proof(normalise_address(address))
        except KeyError:
            raise FleetNotFound(f"{payee} is owed nothing in epoch {epoch}",
                               "unknown_payee") from None
        return {**proof.to_json(), "root": "0x" + tree.root.hex()}

    def mark_settled(self, epoch: int, tree: PayoutTree, mode: str) -> PayoutTree:
        """Fix the epoch's payout tree (the first call wins: its leaves are stored with
        the root); returns the tree that is settled, to be posted exactly."""
        with self.store.db.transaction() as tx:
            tx.execute("INSERT INTO fleet_settled_epochs (epoch, root, leaf_count, total, mode, "
                       "settled_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (epoch) DO NOTHING",
                       (epoch, tree.root, tree.size, str(tree.total), mode,
                        self.store.clock_ms()))
            if tx.rowcount == 1:
                tx.insert_rows("fleet_settled_payouts", ("epoch", "address", "amount"),
                               [(epoch, "0x" + payee.hex(), str(amount))
                                for payee, amount in tree.entries])
            settled = self._settled_tree(tx, epoch)
        assert settled is not None
        return settled

    def settled(self) -> dict[int, dict[str, Any]]:
        with self.store.db.reading() as tx:
            rows = tx.all("SELECT epoch, root, leaf_count, total, mode, settled_ms "
                          "FROM fleet_settled_epochs")
        return {e: {"root": bytes(r).hex(), "leaf_count": n, "total": int(t), "mode": m,
                    "settled_ms": at} for e, r, n, t, m, at in rows}

    # --- payee addresses ------------------------------------------------------------------

    @staticmethod
    def _address_book(tx: Transaction) -> dict[str, str]:
        return dict(tx.all("SELECT payee, address FROM fleet_payee_addresses"))

    def set_address(self, payee: str, address: str) -> None:
        try:
            normalise_address(address)
        except PayoutError as exc:
            raise FleetRefused(str(exc), "payee_not_address") from None
        if not valid_payee_id(payee):
            raise FleetRefused("a payee id is 1-256 characters, none of them a control "
                               "character", "invalid_payee")
        with self.store.db.transaction() as tx:
            tx.execute("INSERT INTO fleet_payee_addresses (payee, address) VALUES (?, ?) "
                       "ON CONFLICT (payee) DO UPDATE SET address = excluded.address",
                       (payee, address.lower()))

    def addresses(self) -> dict[str, str]:
        with self.store.db.reading() as tx:
            return self._address_book(tx)


def _resolve(payee: str, book: dict[str, str]) -> str | None:
    if ADDRESS_RE.fullmatch(payee):
        return payee.lower()
    return book.get(payee)
