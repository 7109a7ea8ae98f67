"""The ledger's SQLite file: its tables, how connections to it are opened, and the checks
made when it is opened (owner-only files, WAL, ``synchronous=FULL``, only this node's
receipts)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import sqlite_utils

from attribution.receipt import InvalidReceipt, verify_receipt
from edged import log_tree
from edged.ledger.errors import ForeignLedgerError, LedgerError

TABLE = "receipts"
_COLUMNS: dict[str, type] = {
    "seq": int, "leaf": bytes, "raw": bytes, "ts": int, "model": str, "kind": str,
}
INSERT = f"INSERT INTO {TABLE} (seq, leaf, raw, ts, model, kind) VALUES (?, ?, ?, ?, ?, ?)"
HEAD = f"SELECT seq, leaf FROM {TABLE} ORDER BY seq DESC LIMIT 1"
# Attribution evidence (matched spans, documents): kept on the node, next to its receipt,
# written in the same transaction, never part of what is signed or synced.
EVIDENCE_TABLE = "evidence"
INSERT_EVIDENCE = f"INSERT INTO {EVIDENCE_TABLE} (leaf, data) VALUES (?, ?)"
_SQLITE_SYNCHRONOUS_FULL = 2
_BUSY_TIMEOUT_MS = 10_000


def create_schema(path: Path) -> None:
    """Create (or check) the ledger's tables in the file at ``path``, in WAL mode,
    readable by the owner only. Raises :class:`LedgerError` for a file that is not a
    ledger or a filesystem without WAL."""
    created = not path.exists()
    _owner_only(path)
    db = sqlite_utils.Database(path, execute_plugins=False)
    try:
        db.enable_wal()
        if db.journal_mode != "wal":
            raise LedgerError("the ledger's filesystem does not support SQLite WAL mode")
        table = db.table(TABLE)
        if not table.exists():
            table.create(_COLUMNS, pk="seq", not_null={"leaf", "raw"}, strict=True)
        elif set(table.columns_dict) != set(_COLUMNS):
            raise LedgerError("the file is not an edged receipt ledger")
        table.create_index(["leaf"], index_name=f"{TABLE}_leaf", unique=True,
                           if_not_exists=True)
        log_tree.create_tables(db)
        evidence = db.table(EVIDENCE_TABLE)
        if not evidence.exists():
            evidence.create({"leaf": bytes, "data": bytes}, pk="leaf", not_null={"data"},
                            strict=True)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"the ledger file cannot be used: {exc}") from exc
    finally:
        db.close()
    if created:
        _fsync_directory(path.parent)


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection with explicit transactions that fsyncs every commit."""
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        # synchronous is per connection; FULL fsyncs the WAL on every commit.
        conn.execute("PRAGMA synchronous = FULL")
        # On macOS only F_FULLFSYNC reaches the platter; a no-op elsewhere.
        conn.execute("PRAGMA fullfsync = ON")
        if conn.execute("PRAGMA synchronous").fetchone()[0] != _SQLITE_SYNCHRONOUS_FULL:
            raise LedgerError("SQLite refused synchronous=FULL")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def check_owner(conn: sqlite3.Connection, node: bytes) -> None:
    """Refuse a ledger whose first or last receipt is not signed by ``node`` (or is
    corrupt, or out of place)."""
    for order in ("ASC", "DESC"):
        row = conn.execute(
            f"SELECT seq, leaf, raw FROM {TABLE} ORDER BY seq {order} LIMIT 1").fetchone()
        if row is None:
            return
        seq, leaf, raw = row
        try:
            receipt = verify_receipt(raw)
        except InvalidReceipt as exc:
            raise LedgerError(f"receipt seq {seq} of the ledger is corrupt: {exc}") from None
        if receipt.seq != seq or receipt.leaf != leaf:
            raise LedgerError(f"receipt seq {seq} of the ledger is stored out of place")
        if order == "ASC" and seq != 0:
            raise LedgerError(f"the ledger starts at seq {seq}, not 0")
        if receipt.node != node:
            raise ForeignLedgerError(
                f"the ledger was signed by node key {receipt.node.hex()[:16]}..., "
                f"not by this node's key {node.hex()[:16]}...; "
                "refusing to mix two nodes' receipts in one chain")


def stored_size(conn: sqlite3.Connection) -> int:
    """How many receipts the ledger holds (seq is contiguous from 0)."""
    row = conn.execute(f"SELECT MAX(seq) FROM {TABLE}").fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def _owner_only(path: Path) -> None:
    """Create ``path`` (if missing) and its SQLite side files readable by the owner only.

    SQLite gives the -wal and -shm files the database file's mode, so a 0600 database
    keeps them 0600 too; existing files from older versions are tightened as well."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            file.chmod(0o600)


def _fsync_directory(directory: Path) -> None:
    """Make a newly created file's directory entry durable (power loss after creation)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
