"""The fleet's store of enrolled nodes and their verified receipts.

A batch is verified exactly as peers verify it (:func:`sync.batch.verify_batch`) and
stored in the same transaction that read the state it was verified against, with the
origin's node row locked; ``(origin, seq)`` is the receipts' primary key, so two fleet
processes sharing one PostgreSQL can never store (or count) a receipt twice.

Which keys may call the sync endpoints is answered from memory (:meth:`FleetStore.is_enrolled`
runs on the event loop for every sync request): the enrolled, unrevoked keys are loaded
when the store opens and kept current by this store's own enroll and revoke. Another fleet
process sharing the database is seen through :meth:`FleetStore.reload_enrolled` (the fleet
app runs it periodically, off the loop) and :meth:`FleetStore.recheck_enrolled` (the fleet
app runs it in a thread when a key it does not know calls, before the request is checked).
Ingest does not depend on that memory: it reads the node's row in its own transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edged.errors import EdgedError
from edged.fleet.db import Database, Transaction
from sync import merkle
from sync.batch import Batch, BatchError, Equivocation, verify_batch
from sync.checkpoint import SignedCheckpoint


class FleetRefused(EdgedError):
    """A request the fleet will not act on (400 unless a subclass says otherwise); the
    status and type are the class's, the error code names the reason."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class FleetPaymentRequired(FleetRefused):
    """The fleet's account cannot pay for a settlement transaction (402)."""

    status = 402


class FleetForbidden(FleetRefused):
    """A node that is not enrolled, revoked, frozen, or pushing from before its
    enrollment (403)."""

    status = 403
    type = "permission_error"


class FleetNotFound(FleetRefused):
    """No such epoch, node, receipt or payee (404)."""

    status = 404


class FleetConflict(FleetRefused):
    """The fleet's state forbids it now: nothing new, a concurrent close, no chain,
    payees without addresses, an equivocation (409)."""

    status = 409


class FleetSettlementFailed(FleetRefused):
    """Settlement failed for a reason the fleet's log names (500)."""

    status = 500


class FleetChainRefused(FleetRefused):
    """The chain refused a transaction, or settlement failed there (502)."""

    status = 502


class FleetChainUnavailable(FleetRefused):
    """The chain cannot be reached; retried with backoff (503)."""

    status = 503


@dataclass(frozen=True)
class NodeRecord:
    node: bytes
    label: str
    enrolled_ms: int
    revoked_ms: int | None
    frozen: bool
    size: int
    checkpoint_ts: int | None
    last_ingest_ms: int | None

    def to_json(self, now_ms: int) -> dict[str, Any]:
        return {"node": self.node.hex(), "label": self.label, "enrolled_ms": self.enrolled_ms,
                "revoked_ms": self.revoked_ms, "frozen": self.frozen, "size": self.size,
                "checkpoint_ts": self.checkpoint_ts, "last_ingest_ms": self.last_ingest_ms,
                "lag_ms": None if self.checkpoint_ts is None else max(0, now_ms
                                                                      - self.checkpoint_ts)}


_NODE_COLUMNS = ("node, label, enrolled_ms, revoked_ms, frozen, size, checkpoint_ts, "
                 "last_ingest_ms")


def _node(row: Any) -> NodeRecord:
    return NodeRecord(bytes(row[0]), row[1], row[2], row[3], bool(row[4]), row[5], row[6],
                      row[7])


def _subtrees(tx: Transaction, origin: bytes) -> merkle.StoredSubtrees:
    """One origin's stored Merkle rows (level 0: the receipts' leaves), read in ``tx``."""
    return merkle.StoredSubtrees(
        tx.one, "SELECT leaf FROM fleet_receipts WHERE origin = ? AND seq = ?",
        "SELECT hash FROM fleet_merkle WHERE origin = ? AND level = ? AND idx = ?", (origin,))


class FleetStore:
    def __init__(self, db: Database, clock_ms: Callable[[], int]) -> None:
        self.db = db
        self.clock_ms = clock_ms
        # Enrolled, unrevoked keys. Read without a lock (on the event loop); replaced or
        # changed only under _enrollment_lock, together with the database read or write
        # it reflects, so a slow reload cannot undo a newer enroll or revoke of this store.
        self._enrolled_keys: set[bytes] = set()
        self._enrollment_lock = threading.Lock()
        self.reload_enrolled()

    # --- enrollment ----------------------------------------------------------------------

    def enroll(self, node: bytes, label: str = "") -> NodeRecord:
        """Enroll ``node`` (again, after a revocation: from now on)."""
        now = self.clock_ms()
        with self._enrollment_lock:
            with self.db.transaction() as tx:
                tx.execute("INSERT INTO fleet_nodes (node, label, enrolled_ms) "
                           "VALUES (?, ?, ?) ON CONFLICT (node) DO NOTHING", (node, label, now))
                tx.execute("UPDATE fleet_nodes SET revoked_ms = NULL, enrolled_ms = ?, "
                           "label = ? WHERE node = ? AND revoked_ms IS NOT NULL",
                           (now, label, node))
                record = _node(tx.one(f"SELECT {_NODE_COLUMNS} FROM fleet_nodes "
                                      "WHERE node = ?", (node,)))
            self._enrolled_keys.add(node)
        return record

    def revoke(self, node: bytes) -> NodeRecord:
        with self._enrollment_lock:
            with self.db.transaction() as tx:
                tx.execute("UPDATE fleet_nodes SET revoked_ms = ? WHERE node = ? AND "
                           "revoked_ms IS NULL", (self.clock_ms(), node))
                row = tx.one(f"SELECT {_NODE_COLUMNS} FROM fleet_nodes WHERE node = ?",
                             (node,))
            self._enrolled_keys.discard(node)
        if row is None:
            raise FleetNotFound("no such node is enrolled", "unknown_node")
        return _node(row)

    def is_enrolled(self, node: bytes) -> bool:
        """Enrolled and not revoked: may call the sync endpoints. From memory only (it
        runs on the event loop): see the module's docstring for how it stays current."""
        return node in self._enrolled_keys

    def reload_enrolled(self) -> None:
        """Read every enrolled, unrevoked key again (enrollments and revocations of other
        fleet processes sharing the database). Blocking."""
        with self._enrollment_lock:
            with self.db.reading() as tx:
                rows = tx.all("SELECT node FROM fleet_nodes WHERE revoked_ms IS NULL")
            self._enrolled_keys = {bytes(row[0]) for row in rows}

    def recheck_enrolled(self, node: bytes) -> bool:
        """Read whether ``node`` is enrolled and unrevoked now (maybe by another fleet
        process) and remember the answer; returns it. Blocking."""
        with self._enrollment_lock:
            with self.db.reading() as tx:
                row = tx.one("SELECT 1 FROM fleet_nodes WHERE node = ? AND revoked_ms IS NULL",
                             (node,))
            if row is None:
                self._enrolled_keys.discard(node)
            else:
                self._enrolled_keys.add(node)
        return row is not None

    def nodes(self) -> list[NodeRecord]:
        with self.db.reading() as tx:
            return [_node(row) for row in tx.all(
                f"SELECT {_NODE_COLUMNS} FROM fleet_nodes ORDER BY enrolled_ms, node")]

    def node(self, node: bytes) -> NodeRecord | None:
        with self.db.reading() as tx:
            row = tx.one(f"SELECT {_NODE_COLUMNS} FROM fleet_nodes WHERE node = ?", (node,))
        return None if row is None else _node(row)

    # --- ingest --------------------------------------------------------------------------

    def heads(self) -> list[dict[str, Any]]:
        """What the fleet holds of each origin it accepts (enrolled, not revoked, not
        frozen); receipts held = the size of the last checkpoint."""
        with self.db.reading() as tx:
            rows = tx.all("SELECT node, size FROM fleet_nodes WHERE revoked_ms IS NULL "
                          "AND frozen = 0 ORDER BY node")
        return [{"origin": bytes(node).hex(), "size": size} for node, size in rows]

    def ingest(self, data: bytes) -> int:
        """Verify and store one batch; returns how many receipts were new. Blocking."""
        try:
            batch = Batch.decode(data)
        except BatchError as exc:
            raise FleetRefused(str(exc), "invalid_batch") from None
        origin = batch.origin
        with self.db.transaction() as tx:
            row = tx.lock_node(origin, _NODE_COLUMNS + ", checkpoint")
            if row is None:
                raise FleetForbidden("receipts of a node that is not enrolled",
                                   "unknown_node")
            record = _node(row)
            self._check_admissible(record, batch)
            known = None if row[8] is None else SignedCheckpoint.decode(bytes(row[8]))
            try:
                verified = verify_batch(batch, known=known, have_through=record.size,
                                        stored=_subtrees(tx, origin))
            except Equivocation as exc:
                equivocation = exc
            except BatchError as exc:
                raise FleetRefused(str(exc), "invalid_batch") from None
            else:
                return self._store(tx, origin, verified.new_receipts, verified.subtree_rows,
                                   verified.checkpoint)
        self._record_equivocation(origin, equivocation.known, equivocation.new)
        raise FleetConflict("equivocation: the node signed two inconsistent checkpoints "
                           "and is now frozen", "equivocation")

    def _check_admissible(self, record: NodeRecord, batch: Batch) -> None:
        if record.revoked_ms is not None:
            raise FleetForbidden("the node's enrollment was revoked", "revoked_node")
        if record.frozen:
            raise FleetForbidden("the node is frozen for equivocation", "frozen_node")
        if batch.checkpoint.checkpoint.ts < record.enrolled_ms:
            raise FleetForbidden("the batch's checkpoint predates the node's enrollment",
                               "before_enrollment")

    @staticmethod
    def _latest_checkpoint(tx: Transaction, origin: bytes) -> SignedCheckpoint | None:
        row = tx.one("SELECT checkpoint FROM fleet_nodes WHERE node = ?", (origin,))
        return None if row is None or row[0] is None else SignedCheckpoint.decode(bytes(row[0]))

    def _store(self, tx: Transaction, origin: bytes, receipts: list[tuple[int, bytes, bytes]],
               rows: list[tuple[int, int, bytes]], checkpoint: SignedCheckpoint) -> int:
        now = self.clock_ms()
        cp = checkpoint.checkpoint
        tx.insert_rows("fleet_receipts", ("origin", "seq", "leaf", "raw", "received_ms"),
                       [(origin, seq, leaf, raw, now) for seq, leaf, raw in receipts])
        tx.insert_rows("fleet_merkle", ("origin", "level", "idx", "hash"),
                       [(origin, level, index, value) for level, index, value in rows if level])
        encoded = checkpoint.encode()
        tx.execute("INSERT INTO fleet_checkpoints (origin, size, root, ts, encoded) "
                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin, size) DO NOTHING",
                   (origin, cp.size, cp.root, cp.ts, encoded))
        tx.execute("UPDATE fleet_nodes SET size = ?, checkpoint = ?, checkpoint_ts = ?, "
                   "last_ingest_ms = ? WHERE node = ?",
                   (cp.size, encoded, cp.ts, now, origin))
        return len(receipts)

    def _record_equivocation(self, origin: bytes, first: SignedCheckpoint,
                             second: SignedCheckpoint) -> None:
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO fleet_equivocations (origin, first, second, at_ms) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       (origin, first.encode(), second.encode(), self.clock_ms()))
            tx.execute("UPDATE fleet_nodes SET frozen = 1 WHERE node = ?", (origin,))

    def equivocations(self) -> list[dict[str, Any]]:
        with self.db.reading() as tx:
            rows = tx.all("SELECT origin, first, second, at_ms FROM fleet_equivocations")
        return [{"origin": bytes(origin).hex(),
                 "first": SignedCheckpoint.decode(bytes(first)).to_json(),
                 "second": SignedCheckpoint.decode(bytes(second)).to_json(), "at_ms": at}
                for origin, first, second, at in rows]

    # --- proofs --------------------------------------------------------------------------

    def inclusion_proof(self, origin: bytes, seq: int) -> dict[str, Any]:
        """Inclusion of receipt ``seq`` in the latest checkpoint the fleet holds of ``origin``."""
        with self.db.reading() as tx:
            checkpoint = self._latest_checkpoint(tx, origin)
            if checkpoint is None or not 0 <= seq < checkpoint.checkpoint.size:
                raise FleetNotFound("no such receipt held here", "unknown_receipt")
            size = checkpoint.checkpoint.size
            reader = _subtrees(tx, origin)
            leaf = reader.subtree(0, seq)
            proof = merkle.inclusion_proof(seq, size, reader)
        return {"origin": origin.hex(), "seq": seq, "leaf": leaf.hex(),
                "proof": [item.hex() for item in proof], "checkpoint": checkpoint.to_json()}
