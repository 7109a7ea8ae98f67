"""The node's receipt ledger: an append-only SQLite log of signed, chained receipts.

Every receipt is signed inside the transaction that stores it, because only
that transaction knows its ``seq`` and ``prev``. One dedicated writer thread
owns the only write connection and does group commit: it takes every draft
waiting in its queue, and in ONE transaction reads the head, assigns each
draft the next ``seq`` and ``prev``, signs, inserts and commits. The fsync of
that commit (``synchronous=FULL``, WAL) is shared by the whole batch, which
is what makes durable receipts cheap under concurrency. Callers learn their
receipt only after the commit returned, so a receipt id that was handed out
survives SIGKILL and power loss.

The head is read from the database inside each write transaction (one index
lookup per batch, under the write lock) instead of being cached, so a failed
transaction can never leave a stale head behind to cause a gap or a fork.

Only receipts are stored: commitments and digests, never prompts or outputs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias

import sqlite_utils
from aiohttp import web
from nacl.signing import SigningKey

from attribution import canonical
from attribution.chain import ChainReport, ChainVerifier
from attribution.receipt import (
    ZERO_HASH,
    InvalidReceipt,
    ReceiptDraft,
    SignedReceipt,
    verify_receipt,
)
from edged import log_tree
from edged.errors import InternalError
from sync import merkle
from sync.checkpoint import SignedCheckpoint

logger = logging.getLogger(__name__)

TABLE = "receipts"
DEFAULT_MAX_BATCH = 1024
_COLUMNS: dict[str, type] = {
    "seq": int, "leaf": bytes, "raw": bytes, "ts": int, "model": str, "kind": str,
}
_INSERT = f"INSERT INTO {TABLE} (seq, leaf, raw, ts, model, kind) VALUES (?, ?, ?, ?, ?, ?)"
_HEAD = f"SELECT seq, leaf FROM {TABLE} ORDER BY seq DESC LIMIT 1"
# Attribution evidence (matched spans, documents): kept on the node, next to its receipt,
# written in the same transaction, never part of what is signed or synced.
EVIDENCE_TABLE = "evidence"
_INSERT_EVIDENCE = f"INSERT INTO {EVIDENCE_TABLE} (leaf, data) VALUES (?, ?)"
_SQLITE_SYNCHRONOUS_FULL = 2
_BUSY_TIMEOUT_MS = 10_000

_Outcome: TypeAlias = SignedReceipt | BaseException


def _owner_only(path: Path) -> None:
    """Create ``path`` (if missing) and its SQLite side files readable by the owner only.

    SQLite gives the -wal and -shm files the database file's mode, so a 0600 database
    keeps them 0600 too; existing files from older versions are tightened as well."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            file.chmod(0o600)


class LedgerError(InternalError):
    """The ledger cannot be opened or written. Messages never name paths."""


class ForeignLedgerError(LedgerError):
    """The ledger holds receipts signed by another node key."""


class LedgerClosedError(LedgerError):
    """The ledger was closed; nothing more can be appended."""


class AppendFailedError(LedgerError):
    """The transaction holding this receipt failed; nothing of it was stored."""


@dataclass(slots=True)
class _Pending:
    """A draft waiting for the writer, and whom to tell once it is committed."""

    draft: ReceiptDraft
    evidence: bytes | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[SignedReceipt] | None = None
    sync_future: concurrent.futures.Future[SignedReceipt] | None = None


class Ledger:
    """The node's receipt store. Usable as a (sync) context manager."""

    def __init__(self, path: Path | str, signing_key: SigningKey, *,
                 max_batch: int = DEFAULT_MAX_BATCH,
                 on_commit: Callable[[list[ReceiptDraft], float], None] | None = None) -> None:
        """Open (creating if needed) the ledger at ``path`` for the node ``signing_key``.

        ``max_batch`` bounds how many receipts share one transaction; 1 turns
        group commit off (one transaction and fsync per receipt). ``on_commit`` is told,
        on the writer thread, the drafts each transaction committed and its seconds.
        Raises :class:`ForeignLedgerError` if the ledger was written by another key.
        """
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.path = Path(path)
        self._key = signing_key
        self._node = bytes(signing_key.verify_key)
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._create_schema()
        self._writer_conn = self._connect()
        try:
            self._check_owner(self._writer_conn)
            log_tree.backfill(self._writer_conn, TABLE, self._stored_size(self._writer_conn))
            self._read_conn = self._connect(read_only=True)
            self._checkpoint_conn = self._connect()
        except BaseException:
            self._writer_conn.close()
            raise
        self._read_lock = threading.Lock()
        self._read_closed = False
        # The checkpoint connection has its own lock: a checkpoint's write transaction
        # and its fsync never hold up the reads the HTTP handlers make on the event loop.
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_closed = False
        self._queue: queue.SimpleQueue[_Pending | list[_Pending] | None] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()
        self._closed = False
        self._writer = threading.Thread(target=self._run_writer, name="edged-ledger-writer",
                                        daemon=True)
        self._writer.start()

    @classmethod
    def open(cls, path: Path | str, signing_key: SigningKey, *,
             max_batch: int = DEFAULT_MAX_BATCH) -> Self:
        """Same as the constructor; reads well as ``with Ledger.open(...) as ledger``."""
        return cls(path, signing_key, max_batch=max_batch)

    @property
    def node(self) -> bytes:
        """The 32-byte public key every receipt here is signed by."""
        return self._node

    async def append(self, draft: ReceiptDraft, evidence: bytes | None = None) -> SignedReceipt:
        """Sign, chain and durably store ``draft``; return the receipt once committed.

        ``evidence`` (the canonical bytes whose digest is the draft's ``attr.evidence``)
        is stored in the same transaction and served by :meth:`get_evidence`.

        If the awaiting task is cancelled the receipt may still be committed
        (the chain stays whole; only this caller does not learn the id).
        Raises :class:`AppendFailedError` if its transaction failed,
        :class:`~attribution.receipt.InvalidReceipt` if the draft is malformed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SignedReceipt] = loop.create_future()
        self._submit(_Pending(draft, evidence, loop=loop, future=future))
        return await future

    async def append_group(self, drafts: Sequence[ReceiptDraft],
                           evidence: Sequence[bytes | None] | None = None) -> list[SignedReceipt]:
        """Append several receipts in ONE transaction (a dynamically batched prediction's
        receipts); each caller's id is known only after that commit."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[SignedReceipt]] = [loop.create_future() for _ in drafts]
        evidence = evidence or [None] * len(drafts)
        group = [_Pending(draft, item, loop=loop, future=future)
                 for draft, item, future in zip(drafts, evidence, futures, strict=True)]
        self._submit(group)
        return list(await asyncio.gather(*futures))

    def append_sync(self, draft: ReceiptDraft, timeout: float | None = None) -> SignedReceipt:
        """Blocking :meth:`append` for threads without an event loop; same writer, same order."""
        future: concurrent.futures.Future[SignedReceipt] = concurrent.futures.Future()
        self._submit(_Pending(draft, sync_future=future))
        return future.result(timeout)

    def _submit(self, pending: _Pending | list[_Pending]) -> None:
        # The lock orders every put before close()'s stop marker, so no draft
        # can land behind it and wait forever.
        with self._submit_lock:
            if self._closed:
                raise LedgerClosedError("the ledger is closed")
            self._queue.put(pending)

    def _run_writer(self) -> None:
        stopping = False
        batch: list[_Pending] = []
        try:
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                batch = _flatten(first)
                # Everything that queued up during the previous commit goes in this one
                # (a group, queued as one item, always lands whole in one transaction).
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch += _flatten(item)
                self._commit_batch(batch)
                batch = []
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            logger.exception("ledger writer stopped unexpectedly")
            with self._submit_lock:
                self._closed = True
            leftovers = batch + self._drain()
            self._settle(leftovers, [_failure(exc) for _ in leftovers])
        finally:
            self._writer_conn.close()

    def _drain(self) -> list[_Pending]:
        items: list[_Pending] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items += _flatten(item)

    def _commit_batch(self, batch: list[_Pending]) -> None:
        conn = self._writer_conn
        outcomes: list[_Outcome] = []
        started = time.perf_counter()
        try:
            # IMMEDIATE takes the write lock before the head is read.
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(_HEAD).fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (0, ZERO_HASH)
            rows: list[tuple[int, bytes, bytes, int, str, str]] = []
            evidence_rows: list[tuple[bytes, bytes]] = []
            for pending in batch:
                draft = pending.draft
                try:
                    receipt = draft.finalise(self._key, seq, prev)
                except Exception as exc:  # a malformed draft fails alone, not its batch
                    outcomes.append(exc)
                    continue
                leaf = receipt.leaf
                rows.append((seq, leaf, receipt.raw, draft.ts, draft.model.name, draft.kind))
                if pending.evidence is not None:
                    evidence_rows.append((leaf, pending.evidence))
                outcomes.append(receipt)
                seq, prev = seq + 1, leaf
            conn.executemany(_INSERT, rows)
            conn.executemany(_INSERT_EVIDENCE, evidence_rows)
            if rows:
                log_tree.store_subtrees(conn, TABLE, rows[0][0], [row[1] for row in rows])
            conn.execute("COMMIT")
        except Exception as exc:
            logger.error("ledger transaction of %d receipts failed: %s", len(batch), exc)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as rollback_exc:
                logger.error("ledger rollback failed: %s", rollback_exc)
            outcomes = [_failure(exc) for _ in batch]
        else:
            self._report_commit(batch, outcomes, time.perf_counter() - started)
        self._settle(batch, outcomes)

    def _report_commit(self, batch: list[_Pending], outcomes: list[_Outcome],
                       seconds: float) -> None:
        if self._on_commit is None:
            return
        committed = [pending.draft for pending, outcome in zip(batch, outcomes, strict=True)
                     if not isinstance(outcome, BaseException)]
        try:
            self._on_commit(committed, seconds)
        except Exception:  # metrics must never fail a committed batch
            logger.exception("the ledger's on_commit hook failed")

    def _settle(self, batch: list[_Pending], outcomes: list[_Outcome]) -> None:
        # One wake-up per event loop per batch, not one per receipt.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[SignedReceipt],
                                                             _Outcome]]] = {}
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.sync_future is not None:
                try:
                    if isinstance(outcome, BaseException):
                        pending.sync_future.set_exception(outcome)
                    else:
                        pending.sync_future.set_result(outcome)
                except concurrent.futures.InvalidStateError:  # the caller cancelled it
                    pass
            elif pending.loop is not None and pending.future is not None:
                by_loop.setdefault(pending.loop, []).append((pending.future, outcome))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, results)
            except RuntimeError:  # the loop was closed while its appends were in flight
                logger.warning("event loop closed before %d receipts were handed back",
                               len(results))

    # --- the Merkle log -----------------------------------------------------------------

    @staticmethod
    def _stored_size(conn: sqlite3.Connection) -> int:
        row = conn.execute(f"SELECT MAX(seq) FROM {TABLE}").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def cut_checkpoint(self, ts: int, size: int | None = None, *,
                       fresh: bool = False) -> SignedCheckpoint:
        """Sign and store a checkpoint of everything committed, or of the first ``size``
        receipts (the stored one when that size has one already, unless ``fresh``: then
        the same root signed again at ``ts``). Blocking.

        Its write transaction runs on the checkpoint's own connection under the checkpoint
        lock only, so reads (WAL: they see the last commit) go on while it waits for the
        write lock, signs and fsyncs. Checkpoints are cut one at a time."""
        with self._checkpoint_lock:
            if self._checkpoint_closed:
                raise LedgerClosedError("the ledger is closed")
            return log_tree.cut_checkpoint(self._checkpoint_conn, TABLE, self._key, ts, size,
                                           fresh=fresh)

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        with self._read_lock:
            return log_tree.latest_checkpoint(self._read_conn)

    def checkpoint_at(self, size: int) -> SignedCheckpoint | None:
        with self._read_lock:
            return log_tree.checkpoint_at(self._read_conn, size)

    def inclusion_proof(self, seq: int, size: int) -> list[bytes]:
        """RFC 6962 audit path of receipt ``seq`` in the tree of the first ``size`` receipts."""
        if not 0 <= seq < size <= self.count():
            raise ValueError("need 0 <= seq < size <= number of receipts")
        with self._read_lock:
            return merkle.inclusion_proof(seq, size, log_tree.SqlSubtrees(self._read_conn,
                                                                          TABLE))

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 6962 proof that the tree of ``first`` receipts is a prefix of ``second``'s."""
        if not 0 <= first <= second <= self.count():
            raise ValueError("need 0 <= first <= second <= number of receipts")
        with self._read_lock:
            return merkle.consistency_proof(first, second,
                                            log_tree.SqlSubtrees(self._read_conn, TABLE))

    def root(self, size: int) -> bytes:
        with self._read_lock:
            return merkle.root(size, log_tree.SqlSubtrees(self._read_conn, TABLE))

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

    def _rows_after(self, after_seq: int, limit: int) -> list[Any]:
        if limit < 0:
            raise ValueError("limit must be non-negative")
        return self._read(f"SELECT seq, raw FROM {TABLE} WHERE seq > ? ORDER BY seq LIMIT ?",
                          (after_seq, limit))

    def head(self) -> tuple[int, bytes]:
        """(number of receipts, leaf of the last one or 32 zero bytes)."""
        rows = self._read(_HEAD, ())
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

    def _read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        with self._read_lock:
            if self._read_closed:
                raise LedgerClosedError("the ledger is closed")
            rows: list[Any] = self._read_conn.execute(sql, params).fetchall()
        return rows

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the connections. Idempotent."""
        with self._submit_lock:
            already = self._closed
            self._closed = True
            if not already:
                self._queue.put(None)
        self._writer.join()
        with self._read_lock:
            self._read_closed = True
            self._read_conn.close()
        with self._checkpoint_lock:  # waits for a checkpoint being cut
            self._checkpoint_closed = True
            self._checkpoint_conn.close()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop while the last batch commits."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _create_schema(self) -> None:
        created = not self.path.exists()
        _owner_only(self.path)
        db = sqlite_utils.Database(self.path, execute_plugins=False)
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
            _fsync_directory(self.path.parent)

    def _connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
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

    def _check_owner(self, conn: sqlite3.Connection) -> None:
        """Refuse a ledger whose first or last receipt is not ours (or is corrupt)."""
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
            if receipt.node != self._node:
                raise ForeignLedgerError(
                    f"the ledger was signed by node key {receipt.node.hex()[:16]}..., "
                    f"not by this node's key {self._node.hex()[:16]}...; "
                    "refusing to mix two nodes' receipts in one chain")


def _flatten(item: _Pending | list[_Pending]) -> list[_Pending]:
    return list(item) if isinstance(item, list) else [item]


def _resolve(results: list[tuple[asyncio.Future[SignedReceipt], _Outcome]]) -> None:
    """Runs on the event loop: hand each caller its receipt or its error."""
    for future, outcome in results:
        if future.done():  # the caller was cancelled
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _failure(cause: BaseException) -> AppendFailedError:
    # One instance per caller: a shared exception would collect every
    # awaiting task's traceback.
    error = AppendFailedError("the receipt could not be committed to the ledger")
    error.__cause__ = cause
    return error


def _decode(raw: bytes) -> SignedReceipt:
    # Stored bytes were produced by this node's writer; verify_chain is the
    # integrity check, so reads stay cheap enough for the event loop.
    return SignedReceipt(raw=raw, fields=canonical.decode(raw))


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


LEDGER = web.AppKey("ledger", Ledger)
"""The node's receipt ledger: ``app[LEDGER]``."""
