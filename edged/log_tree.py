"""The ledger's Merkle tree (RFC 6962) and its signed checkpoints, in SQLite.

The hash of every perfect aligned subtree above the leaves is stored in
``merkle(level, idx, hash)`` (level 0 is the receipts' own ``leaf`` column), written
in the same transaction as the receipts it covers. Appending n receipts adds about n
rows; any root or proof reads O(log n) rows, so a proof in a log of ten million
receipts takes milliseconds. Checkpoints ``(origin, size, root, ts)`` are signed and
stored in one transaction; since the tree only ever grows, every checkpoint this node
signs is consistent with every other, across restarts and crashes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import sqlite_utils
from nacl.signing import SigningKey

from sync.checkpoint import Checkpoint, SignedCheckpoint
from sync.merkle import StoredSubtrees, completed_subtrees, root

MERKLE_TABLE = "merkle"
CHECKPOINT_TABLE = "checkpoints"
_INSERT_NODE = f"INSERT OR REPLACE INTO {MERKLE_TABLE} (level, idx, hash) VALUES (?, ?, ?)"


class SqlSubtrees(StoredSubtrees):
    """The ledger's tree over one connection (inside its transaction)."""

    def __init__(self, conn: sqlite3.Connection, receipts_table: str) -> None:
        self.conn = conn
        super().__init__(lambda sql, params: conn.execute(sql, params).fetchone(),
                         f"SELECT leaf FROM {receipts_table} WHERE seq = ?",
                         f"SELECT hash FROM {MERKLE_TABLE} WHERE level = ? AND idx = ?")


def create_tables(db: sqlite_utils.Database) -> None:
    merkle = db.table(MERKLE_TABLE)
    if not merkle.exists():
        merkle.create({"level": int, "idx": int, "hash": bytes}, pk=("level", "idx"),
                      not_null={"hash"}, strict=True)
    checkpoints = db.table(CHECKPOINT_TABLE)
    if not checkpoints.exists():
        checkpoints.create({"size": int, "root": bytes, "ts": int, "raw": bytes}, pk="size",
                           not_null={"root", "raw"}, strict=True)


def store_subtrees(conn: sqlite3.Connection, receipts_table: str, size_before: int,
                   leaves: Sequence[bytes]) -> None:
    """Insert the subtrees that appending ``leaves`` completes (call inside the transaction
    that inserts those receipts)."""
    if not leaves:
        return
    rows = completed_subtrees(size_before, leaves, SqlSubtrees(conn, receipts_table))
    conn.executemany(_INSERT_NODE, [row for row in rows if row[0] > 0])


def backfill(conn: sqlite3.Connection, receipts_table: str, size: int, chunk: int = 4096) -> None:
    """Build the tree of a ledger written before the tree existed (one transaction)."""
    stored = conn.execute(f"SELECT COUNT(*) FROM {MERKLE_TABLE}").fetchone()[0]
    if stored or size < 2:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for start in range(0, size, chunk):
            leaves = [bytes(r[0]) for r in conn.execute(
                f"SELECT leaf FROM {receipts_table} WHERE seq >= ? AND seq < ? ORDER BY seq",
                (start, min(start + chunk, size)))]
            store_subtrees(conn, receipts_table, start, leaves)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def latest_checkpoint(conn: sqlite3.Connection) -> SignedCheckpoint | None:
    row = conn.execute(f"SELECT raw FROM {CHECKPOINT_TABLE} ORDER BY size DESC LIMIT 1"
                       ).fetchone()
    return SignedCheckpoint.decode(bytes(row[0])) if row else None


def checkpoint_at(conn: sqlite3.Connection, size: int) -> SignedCheckpoint | None:
    row = conn.execute(f"SELECT raw FROM {CHECKPOINT_TABLE} WHERE size = ?", (size,)).fetchone()
    return SignedCheckpoint.decode(bytes(row[0])) if row else None


def cut_checkpoint(conn: sqlite3.Connection, receipts_table: str, key: SigningKey,
                   ts: int, size: int | None = None, *, fresh: bool = False) -> SignedCheckpoint:
    """Sign a checkpoint of the whole committed log (or of its first ``size`` receipts: a
    prefix, so consistent with every other), unless one of that size exists. With
    ``fresh``, a size that has one already is signed again at ``ts`` (same root, so it
    agrees with the stored one, which stays as it is).

    One ``BEGIN IMMEDIATE`` transaction reads the size, computes the root from stored
    subtrees, signs and stores, so no append can slip in between."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(f"SELECT MAX(seq) FROM {receipts_table}").fetchone()
        log_size = 0 if row[0] is None else row[0] + 1
        if size is None:
            size = log_size
        elif not 0 <= size <= log_size:
            raise ValueError("a checkpoint cannot cover receipts that do not exist")
        existing = checkpoint_at(conn, size)
        if existing is not None:
            conn.execute("COMMIT")
            if fresh and existing.checkpoint.ts != ts:
                return Checkpoint(bytes(key.verify_key), size, existing.checkpoint.root,
                                  ts).sign(key)
            return existing
        tree_root = root(size, SqlSubtrees(conn, receipts_table))
        signed = Checkpoint(bytes(key.verify_key), size, tree_root, ts).sign(key)
        conn.execute(f"INSERT INTO {CHECKPOINT_TABLE} (size, root, ts, raw) VALUES (?, ?, ?, ?)",
                     (size, tree_root, ts, signed.encode()))
        conn.execute("COMMIT")
        return signed
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
