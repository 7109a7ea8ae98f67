"""The ledger as a Merkle log: signed checkpoints, roots and RFC 6962 proofs.

Cutting a checkpoint is a write transaction of its own, on its own connection under its
own lock, so its wait for the write lock, its signature and its fsync never hold up the
reads the HTTP handlers make (WAL: they see the last commit). Roots, proofs and stored
checkpoints are read on the reader's connection from the stored subtrees, O(log n) rows.
"""

from __future__ import annotations

import sqlite3
import threading

from nacl.signing import SigningKey

from edged import log_tree
from edged.ledger.errors import LedgerClosedError
from edged.ledger.reads import LedgerReader
from edged.ledger.schema import TABLE
from sync import merkle
from sync.checkpoint import SignedCheckpoint


class LedgerCheckpoints:
    """Checkpoints and proofs of the ledger; cuts on ``conn`` (closed by :meth:`close`),
    reads through ``reader``."""

    def __init__(self, conn: sqlite3.Connection, signing_key: SigningKey,
                 reader: LedgerReader) -> None:
        self._conn = conn
        self._key = signing_key
        self._reader = reader
        self._lock = threading.Lock()
        self._closed = False

    def cut_checkpoint(self, ts: int, size: int | None = None, *,
                       fresh: bool = False) -> SignedCheckpoint:
        """Sign and store a checkpoint of everything committed, or of the first ``size``
        receipts (the stored one when that size has one already, unless ``fresh``: then
        the same root signed again at ``ts``). Blocking; checkpoints are cut one at a
        time."""
        with self._lock:
            if self._closed:
                raise LedgerClosedError("the ledger is closed")
            return log_tree.cut_checkpoint(self._conn, TABLE, self._key, ts, size,
                                           fresh=fresh)

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        with self._reader.connection() as conn:
            return log_tree.latest_checkpoint(conn)

    def checkpoint_at(self, size: int) -> SignedCheckpoint | None:
        with self._reader.connection() as conn:
            return log_tree.checkpoint_at(conn, size)

    def inclusion_proof(self, seq: int, size: int) -> list[bytes]:
        """RFC 6962 audit path of receipt ``seq`` in the tree of the first ``size`` receipts."""
        if not 0 <= seq < size <= self._reader.count():
            raise ValueError("need 0 <= seq < size <= number of receipts")
        with self._reader.connection() as conn:
            return merkle.inclusion_proof(seq, size, log_tree.SqlSubtrees(conn, TABLE))

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 6962 proof that the tree of ``first`` receipts is a prefix of ``second``'s."""
        if not 0 <= first <= second <= self._reader.count():
            raise ValueError("need 0 <= first <= second <= number of receipts")
        with self._reader.connection() as conn:
            return merkle.consistency_proof(first, second, log_tree.SqlSubtrees(conn, TABLE))

    def root(self, size: int) -> bytes:
        """The Merkle root of the first ``size`` receipts."""
        with self._reader.connection() as conn:
            return merkle.root(size, log_tree.SqlSubtrees(conn, TABLE))

    def close(self) -> None:
        """Close the connection, after a checkpoint being cut. Idempotent."""
        with self._lock:
            self._closed = True
            self._conn.close()
