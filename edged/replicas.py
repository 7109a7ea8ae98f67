"""Receipts of other nodes, held for store and forward.

``<data_dir>/replicas.sqlite3`` keeps, per trusted origin: its receipts (deduped on
``(origin, seq)``), the Merkle subtrees over them (so new batches are checked against
the root incrementally), the checkpoints it signed, and equivocation evidence. An
origin caught signing two inconsistent checkpoints is frozen: nothing more of it is
accepted or forwarded.

One connection serves worker threads and the event loop alike, under one rule: every use
of it goes through :meth:`ReplicaStore._connection`, which holds the store's lock for the
whole use (a statement, or a transaction with its statements). Nothing else touches it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from sync.checkpoint import SignedCheckpoint
from sync.clock import unix_millis
from sync.merkle import StoredSubtrees

_BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class OriginHead:
    origin: bytes
    size: int  # receipts held, contiguous from 0
    checkpoint: SignedCheckpoint | None
    frozen: bool


class ReplicaStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        db = sqlite_utils.Database(path)
        db.enable_wal()
        tables = {
            "receipts": ({"origin": bytes, "seq": int, "leaf": bytes, "raw": bytes},
                         ("origin", "seq")),
            "merkle": ({"origin": bytes, "level": int, "idx": int, "hash": bytes},
                       ("origin", "level", "idx")),
            "checkpoints": ({"origin": bytes, "size": int, "raw": bytes}, ("origin", "size")),
            "equivocations": ({"origin": bytes, "first": bytes, "second": bytes, "ts": int},
                              None),
        }
        for name, (columns, pk) in tables.items():
            if not db.table(name).exists():
                db.table(name).create(columns, pk=pk)
        db.close()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._lock = threading.Lock()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, for this thread alone until the block ends: the only way to it."""
        with self._lock:
            yield self._conn

    def close(self) -> None:
        with self._connection() as conn:
            conn.close()

    # --- reads --------------------------------------------------------------------------

    def size(self, origin: bytes) -> int:
        with self._connection() as conn:
            return self._size(conn, origin)

    @staticmethod
    def _size(conn: sqlite3.Connection, origin: bytes) -> int:
        row = conn.execute("SELECT MAX(seq) FROM receipts WHERE origin = ?",
                           (origin,)).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def leaf(self, origin: bytes, seq: int) -> bytes | None:
        with self._connection() as conn:
            row = conn.execute("SELECT leaf FROM receipts WHERE origin = ? AND seq = ?",
                               (origin, seq)).fetchone()
        return bytes(row[0]) if row else None

    def raw_range(self, origin: bytes, start: int, end: int) -> list[bytes]:
        with self._connection() as conn:
            rows = conn.execute("SELECT raw FROM receipts WHERE origin = ? AND seq >= ? "
                                "AND seq < ? ORDER BY seq", (origin, start, end)).fetchall()
        return [bytes(row[0]) for row in rows]

    def latest_checkpoint(self, origin: bytes) -> SignedCheckpoint | None:
        with self._connection() as conn:
            return self._latest_checkpoint(conn, origin)

    @staticmethod
    def _latest_checkpoint(conn: sqlite3.Connection, origin: bytes) -> SignedCheckpoint | None:
        row = conn.execute("SELECT raw FROM checkpoints WHERE origin = ? ORDER BY size DESC "
                           "LIMIT 1", (origin,)).fetchone()
        return SignedCheckpoint.decode(bytes(row[0])) if row else None

    def checkpoints(self, origin: bytes) -> list[SignedCheckpoint]:
        with self._connection() as conn:
            rows = conn.execute("SELECT raw FROM checkpoints WHERE origin = ? ORDER BY size",
                                (origin,)).fetchall()
        return [SignedCheckpoint.decode(bytes(row[0])) for row in rows]

    def is_frozen(self, origin: bytes) -> bool:
        with self._connection() as conn:
            return self._is_frozen(conn, origin)

    @staticmethod
    def _is_frozen(conn: sqlite3.Connection, origin: bytes) -> bool:
        row = conn.execute("SELECT 1 FROM equivocations WHERE origin = ? LIMIT 1",
                           (origin,)).fetchone()
        return row is not None

    def heads(self) -> list[OriginHead]:
        """Every origin held, each read whole (never half of a store in progress)."""
        with self._connection() as conn:
            origins = [bytes(row[0]) for row in conn.execute(
                "SELECT DISTINCT origin FROM checkpoints ORDER BY origin")]
            return [OriginHead(origin, self._size(conn, origin),
                               self._latest_checkpoint(conn, origin),
                               self._is_frozen(conn, origin)) for origin in origins]

    def evidence(self) -> list[tuple[bytes, SignedCheckpoint, SignedCheckpoint, int]]:
        with self._connection() as conn:
            rows = conn.execute("SELECT origin, first, second, ts FROM equivocations "
                                "ORDER BY ts").fetchall()
        return [(bytes(o), SignedCheckpoint.decode(bytes(a)), SignedCheckpoint.decode(bytes(b)),
                 int(ts)) for o, a, b, ts in rows]

    def subtrees(self, origin: bytes) -> StoredSubtrees:
        """A reader of ``origin``'s stored tree for verification and proofs."""
        return StoredSubtrees(self._fetch_one,
                              "SELECT leaf FROM receipts WHERE origin = ? AND seq = ?",
                              "SELECT hash FROM merkle WHERE origin = ? AND level = ? AND idx = ?",
                              (origin,))

    def _fetch_one(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first row of one query, under the store's lock."""
        with self._connection() as conn:
            return conn.execute(sql, params).fetchone()

    # --- writes -------------------------------------------------------------------------

    def store(self, origin: bytes, receipts: Sequence[tuple[int, bytes, bytes]],
              subtree_rows: Sequence[tuple[int, int, bytes]],
              checkpoint: SignedCheckpoint) -> int:
        """Store verified receipts, their subtrees and the checkpoint in one transaction;
        returns how many receipts were new."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany(
                    "INSERT OR IGNORE INTO receipts (origin, seq, leaf, raw) VALUES (?, ?, ?, ?)",
                    [(origin, seq, leaf, raw) for seq, leaf, raw in receipts])
                added = conn.total_changes - before
                conn.executemany(
                    "INSERT OR IGNORE INTO merkle (origin, level, idx, hash) VALUES (?, ?, ?, ?)",
                    [(origin, level, idx, value) for level, idx, value in subtree_rows
                     if level > 0])
                conn.execute(
                    "INSERT OR IGNORE INTO checkpoints (origin, size, raw) VALUES (?, ?, ?)",
                    (origin, checkpoint.checkpoint.size, checkpoint.encode()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return added

    def record_equivocation(self, origin: bytes, first: SignedCheckpoint,
                            second: SignedCheckpoint) -> bool:
        """Keep both checkpoints as evidence and freeze the origin; True the first time."""
        with self._connection() as conn:
            frozen = self._is_frozen(conn, origin)
            conn.execute("INSERT INTO equivocations (origin, first, second, ts) VALUES "
                         "(?, ?, ?, ?)", (origin, first.encode(), second.encode(),
                                          unix_millis()))
        return not frozen
