"""Reading the ledger: receipts by id or in pages, the head, evidence, chain checks.

Reads share one read-only connection under a lock; in WAL mode they see the last commit
and never wait for the writer or for a checkpoint being cut."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from attribution import canonical
from attribution.chain import ChainReport, ChainVerifier
from attribution.receipt import ZERO_HASH, SignedReceipt
from edged.ledger.errors import LedgerClosedError
from edged.ledger.schema import EVIDENCE_TABLE, HEAD, TABLE


class LedgerReader:
    """The ledger's reads, on the read-only connection ``conn`` (closed by :meth:`close`)."""

    def __init__(self, conn: sqlite3.Connection, node: bytes) -> None:
        self._conn = conn
        self._node = node
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The read connection, held alone for the ``with`` block (for the Merkle reads).
        Raises :class:`LedgerClosedError` once closed."""
        with self._lock:
            if self._closed:
                raise LedgerClosedError("the ledger is closed")
            yield self._conn

    def get_evidence(self, leaf: bytes) -> bytes | None:
        """The evidence stored with the receipt ``leaf``, or None."""
        rows = self._read(f"SELECT data FROM {EVIDENCE_TABLE} WHERE leaf = ?", (leaf,))
        return bytes(rows[0][0]) if rows else None

    def get(self, leaf: bytes) -> SignedReceipt | None:
        """The receipt whose id (leaf hash) is ``leaf``, or None."""
        rows = self._read(f"SELECT raw FROM {TABLE} WHERE leaf = ?", (leaf,))
        return _decode(rows[0][0]) if rows else None

    def page(self, after_seq: int = -1, limit: int = 100) -> list[SignedReceipt]:
        """Up to ``limit`` receipts with seq > ``after_seq``, ascending."""
        return [_decode(raw) for raw in self.raw_page(after_seq, limit)]

    def raw_page(self, after_seq: int = -1, limit: int = 100) -> list[bytes]:
        """Like :meth:`page` but the signed bytes only (for sync and verification)."""
        return [raw for _, raw in self._rows_after(after_seq, limit)]

    def iter_raw(self, after_seq: int = -1, page_size: int = 1000) -> Iterator[bytes]:
        """Every receipt's bytes with seq > ``after_seq``, ascending, one page in memory."""
        while rows := self._rows_after(after_seq, page_size):
            yield from (raw for _, raw in rows)
            after_seq = rows[-1][0]

    def head(self) -> tuple[int, bytes]:
        """(number of receipts, leaf of the last one or 32 zero bytes)."""
        rows = self._read(HEAD, ())
        if not rows:
            return 0, ZERO_HASH
        # seq is contiguous from 0 (the writer guarantees it), so last seq + 1 is the count.
        return rows[0][0] + 1, rows[0][1]

    def count(self) -> int:
        """Number of receipts."""
        return self.head()[0]

    def verify(self) -> ChainReport:
        """Verify the whole stored chain against this node's key, streaming."""
        verifier = ChainVerifier(node=self._node)
        verifier.feed_all(self.iter_raw())
        return verifier.report()

    def close(self) -> None:
        """Close the read connection (after any read in progress). Idempotent."""
        with self._lock:
            self._closed = True
            self._conn.close()

    def _rows_after(self, after_seq: int, limit: int) -> list[Any]:
        if limit < 0:
            raise ValueError("limit must be non-negative")
        return self._read(f"SELECT seq, raw FROM {TABLE} WHERE seq > ? ORDER BY seq LIMIT ?",
                          (after_seq, limit))

    def _read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        with self.connection() as conn:
            rows: list[Any] = conn.execute(sql, params).fetchall()
        return rows


def _decode(raw: bytes) -> SignedReceipt:
    # Stored bytes were produced by this node's writer; verify_chain is the
    # integrity check, so reads stay cheap enough for the event loop.
    return SignedReceipt(raw=raw, fields=canonical.decode(raw))
