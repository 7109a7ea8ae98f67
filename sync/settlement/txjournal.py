"""The settlement account's transaction journal: one SQLite row per action it signed.

A row is written and committed, raw signed bytes included, *before* the transaction is
broadcast, so a crash or an unreachable node never loses one: the transaction lifecycle
(:mod:`sync.settlement.transactions`) rebroadcasts the same bytes until the chain includes
them. Rows are keyed by the logical action they perform (``"deploy"``,
``"checkpoint:<node>:<size>"``, ``"epoch:<n>"``, ``"claim:<epoch>:<payee>"``); that key is
what makes actions idempotent.

A stuck transaction is replaced by one with the same nonce and higher fees, and either may
end up in a block. So every raw transaction signed for a row is also kept, in the
``signed_txs`` table (:class:`SignedTx`, committed before it is broadcast too): the row's
``tx_hash``/``raw`` are the newest signature, or the one a block included, and after a
restart the adapter still recognises whichever of them the chain includes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync.clock import unix_millis

# settlement.py imports the clock from here under this name (sync.clock.unix_millis).
now_ms = unix_millis

STATUSES = ("pending", "included", "final", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS txs (
    key TEXT PRIMARY KEY,
    nonce INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    raw BLOB NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'included', 'final', 'failed')),
    block_number INTEGER,
    block_hash TEXT,
    error TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS txs_nonce ON txs (nonce);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signed_txs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    tx_hash TEXT NOT NULL UNIQUE,
    raw BLOB NOT NULL,
    signed_at_block INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS signed_txs_key ON signed_txs (key);
-- A journal written before replacements existed: each row's one signature, signed at the
-- last head that journal knew (0 when none).
INSERT INTO signed_txs (key, tx_hash, raw, signed_at_block, created_ms)
    SELECT key, tx_hash, raw,
           COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE name = 'head'), 0),
           created_ms
    FROM txs WHERE tx_hash NOT IN (SELECT tx_hash FROM signed_txs);
"""
_COLUMNS = ("key, nonce, tx_hash, raw, status, block_number, block_hash, error, "
            "created_ms, updated_ms")


class JournalError(RuntimeError):
    """The journal belongs to another account or chain, or a key is written twice."""


@dataclass(frozen=True)
class JournalRow:
    """One action's transaction (its newest signature, or the one a block included) and
    what the adapter last learnt about it."""

    key: str
    nonce: int
    tx_hash: str
    raw: bytes
    status: str
    block_number: int | None
    block_hash: str | None
    error: str | None
    created_ms: int
    updated_ms: int


@dataclass(frozen=True)
class SignedTx:
    """One raw transaction signed for a journal row (the first, or a replacement)."""

    key: str
    tx_hash: str
    raw: bytes
    signed_at_block: int  # the chain's head when it was signed: starts its "stuck" clock
    created_ms: int


class TxJournal:
    """A SQLite file (WAL, synchronous=FULL) of every transaction one account signed.

    Safe to share between threads (one connection behind a lock).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                   check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Several statements committed together (or none of them)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __enter__(self) -> TxJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- rows ------------------------------------------------------------------------------

    def get(self, key: str) -> JournalRow | None:
        """The row of ``key``, or None."""
        with self._lock:
            found = self._db.execute(f"SELECT {_COLUMNS} FROM txs WHERE key = ?",
                                     (key,)).fetchone()
        return None if found is None else _row(found)

    def rows(self, statuses: Iterable[str] | None = None) -> list[JournalRow]:
        """Rows in nonce order (then key), optionally only those with one of ``statuses``."""
        query = f"SELECT {_COLUMNS} FROM txs"
        wanted = list(statuses) if statuses is not None else None
        params: list[object] = []
        if wanted is not None:
            query += f" WHERE status IN ({', '.join('?' * len(wanted))})"
            params.extend(wanted)
        with self._lock:
            found = self._db.execute(query + " ORDER BY nonce, key", params).fetchall()
        return [_row(item) for item in found]

    def insert(self, row: JournalRow, *, signed_at_block: int) -> None:
        """Insert (and commit) a new row and its first signed transaction;
        :class:`JournalError` when the key exists."""
        if row.status not in STATUSES:
            raise ValueError(f"unknown status {row.status!r}")
        try:
            with self._transaction() as db:
                db.execute(
                    f"INSERT INTO txs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.key, row.nonce, row.tx_hash, row.raw, row.status, row.block_number,
                     row.block_hash, row.error, row.created_ms, row.updated_ms))
                _insert_signed(db, row.key, row.tx_hash, row.raw, signed_at_block)
        except sqlite3.IntegrityError as exc:
            raise JournalError(f"journal already has a transaction for {row.key!r}") from exc

    def add_replacement(self, key: str, tx_hash: str, raw: bytes, *,
                        signed_at_block: int) -> JournalRow:
        """Record (and commit) a replacement signed for ``key`` (same nonce, higher fees) and
        make it the row's transaction: pending, no error. Returns the updated row."""
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE txs SET tx_hash = ?, raw = ?, status = 'pending', block_number = NULL, "
                "block_hash = NULL, error = NULL, updated_ms = ? WHERE key = ?",
                (tx_hash, raw, unix_millis(), key))
            if updated.rowcount != 1:
                raise JournalError(f"journal has no transaction for {key!r}")
            _insert_signed(db, key, tx_hash, raw, signed_at_block)
        return self._existing(key)

    def use_signed(self, key: str, tx_hash: str) -> JournalRow:
        """Make ``tx_hash``, one of the transactions signed for ``key`` (the one a block
        included), the row's transaction again. Returns the updated row."""
        with self._transaction() as db:
            found = db.execute("SELECT raw FROM signed_txs WHERE key = ? AND tx_hash = ?",
                               (key, tx_hash)).fetchone()
            if found is None:
                raise JournalError(f"journal has no transaction {tx_hash} for {key!r}")
            db.execute("UPDATE txs SET tx_hash = ?, raw = ?, updated_ms = ? WHERE key = ?",
                       (tx_hash, found[0], unix_millis(), key))
        return self._existing(key)

    def signed(self, key: str) -> list[SignedTx]:
        """Every transaction signed for ``key``, newest first."""
        with self._lock:
            found = self._db.execute(
                "SELECT key, tx_hash, raw, signed_at_block, created_ms FROM signed_txs "
                "WHERE key = ? ORDER BY seq DESC", (key,)).fetchall()
        return [SignedTx(str(k), str(h), bytes(r), int(b), int(c)) for k, h, r, b, c in found]

    def update(self, key: str, *, status: str, block_number: int | None,
               block_hash: str | None, error: str | None) -> JournalRow:
        """Set a row's status fields (committed); returns the updated row."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._lock:
            self._db.execute(
                "UPDATE txs SET status = ?, block_number = ?, block_hash = ?, error = ?, "
                "updated_ms = ? WHERE key = ?",
                (status, block_number, block_hash, error, unix_millis(), key))
        return self._existing(key)

    def _existing(self, key: str) -> JournalRow:
        found = self.get(key)
        if found is None:
            raise JournalError(f"journal has no transaction for {key!r}")
        return found

    def archive(self, key: str) -> str:
        """Move a (failed) row and its signed transactions out of the way of a retry: they
        stay, under ``"<key>#<tx hash>"``. Returns the new key."""
        with self._transaction() as db:
            found = db.execute("SELECT tx_hash FROM txs WHERE key = ?", (key,)).fetchone()
            if found is None:
                raise JournalError(f"journal has no transaction for {key!r}")
            new_key = f"{key}#{found[0]}"
            db.execute("DELETE FROM txs WHERE key = ?", (new_key,))
            db.execute("DELETE FROM signed_txs WHERE key = ?", (new_key,))
            db.execute("UPDATE txs SET key = ?, updated_ms = ? WHERE key = ?",
                       (new_key, unix_millis(), key))
            db.execute("UPDATE signed_txs SET key = ? WHERE key = ?", (new_key, key))
        return new_key

    def max_nonce(self) -> int | None:
        """The highest nonce among rows that are not 'failed' (None when there are none)."""
        with self._lock:
            found = self._db.execute(
                "SELECT MAX(nonce) FROM txs WHERE status != 'failed'").fetchone()
        return None if found[0] is None else int(found[0])

    # --- metadata --------------------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        """A stored metadata value (``account``, ``chain_id``, ``head``), or None."""
        with self._lock:
            found = self._db.execute("SELECT value FROM meta WHERE name = ?",
                                     (name,)).fetchone()
        return None if found is None else str(found[0])

    def set_meta(self, name: str, value: str) -> None:
        """Store a metadata value (committed)."""
        with self._lock:
            self._db.execute("INSERT INTO meta (name, value) VALUES (?, ?) "
                             "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                             (name, value))

    def bind(self, name: str, value: str) -> None:
        """Record ``value`` under ``name`` the first time; :class:`JournalError` when the
        journal already holds another value (a journal serves one account on one chain)."""
        known = self.get_meta(name)
        if known is None:
            self.set_meta(name, value)
        elif known != value:
            raise JournalError(f"the transaction journal {self.path.name} belongs to "
                               f"{name} {known}, not {value}")


def _insert_signed(db: sqlite3.Connection, key: str, tx_hash: str, raw: bytes,
                   signed_at_block: int) -> None:
    db.execute("INSERT INTO signed_txs (key, tx_hash, raw, signed_at_block, created_ms) "
               "VALUES (?, ?, ?, ?, ?)", (key, tx_hash, raw, signed_at_block, unix_millis()))


def _row(found: tuple[Any, ...]) -> JournalRow:
    key, nonce, tx_hash, raw, status, block_number, block_hash, error, created, updated = found
    return JournalRow(str(key), int(nonce), str(tx_hash), bytes(raw), str(status),
                      None if block_number is None else int(block_number),
                      None if block_hash is None else str(block_hash),
                      None if error is None else str(error), int(created), int(updated))
