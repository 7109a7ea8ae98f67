"""The ledger's single writer: one thread, one write connection, group commit.

It takes every draft waiting in its queue and, in ONE transaction, reads the head,
assigns each draft the next ``seq`` and ``prev``, signs, inserts receipts, their evidence
and the Merkle rows they complete, and commits. The fsync of that commit
(``synchronous=FULL``, WAL) is shared by the whole batch, which is what makes durable
receipts cheap under concurrency. Callers learn their receipt only after the commit
returned, so a receipt id that was handed out survives SIGKILL and power loss.

The head is read inside each write transaction (one index lookup per batch, under the
write lock) instead of being cached, so a failed transaction can never leave a stale
head behind to cause a gap or a fork.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from nacl.signing import SigningKey

from attribution.receipt import ZERO_HASH, ReceiptDraft, SignedReceipt
from edged import log_tree
from edged.ledger.errors import AppendFailedError, LedgerClosedError
from edged.ledger.schema import HEAD, INSERT, INSERT_EVIDENCE, TABLE

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1024

_Outcome: TypeAlias = SignedReceipt | BaseException
CommitHook: TypeAlias = Callable[[list[ReceiptDraft], float], None]


@dataclass(slots=True)
class _Pending:
    """A draft waiting for the writer, and whom to tell once it is committed."""

    draft: ReceiptDraft
    evidence: bytes | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[SignedReceipt] | None = None
    sync_future: concurrent.futures.Future[SignedReceipt] | None = None


class LedgerWriter:
    """Appends receipts through one writer thread that owns ``conn`` (and closes it when
    it stops). The thread starts with the writer."""

    def __init__(self, conn: sqlite3.Connection, signing_key: SigningKey, *,
                 max_batch: int = DEFAULT_MAX_BATCH,
                 on_commit: CommitHook | None = None) -> None:
        """``max_batch`` bounds how many receipts share one transaction; 1 turns group
        commit off. ``on_commit`` is told, on the writer thread, the drafts each
        transaction committed and its seconds."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._conn = conn
        self._key = signing_key
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Pending | list[_Pending] | None] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edged-ledger-writer",
                                        daemon=True)
        self._thread.start()

    async def append(self, draft: ReceiptDraft, evidence: bytes | None = None) -> SignedReceipt:
        """Sign, chain and durably store ``draft`` (and its ``evidence``, in the same
        transaction); return the receipt once committed. See :meth:`Ledger.append`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SignedReceipt] = loop.create_future()
        self._submit(_Pending(draft, evidence, loop=loop, future=future))
        return await future

    async def append_group(self, drafts: Sequence[ReceiptDraft],
                           evidence: Sequence[bytes | None] | None = None) -> list[SignedReceipt]:
        """Append several receipts in ONE transaction."""
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

    def close(self) -> None:
        """Commit what is queued, then stop the thread (which closes the connection).
        Idempotent; later appends raise :class:`LedgerClosedError`."""
        with self._submit_lock:
            already = self._closed
            self._closed = True
            if not already:
                self._queue.put(None)
        self._thread.join()

    def _submit(self, pending: _Pending | list[_Pending]) -> None:
        # The lock orders every put before close()'s stop marker, so no draft
        # can land behind it and wait forever.
        with self._submit_lock:
            if self._closed:
                raise LedgerClosedError("the ledger is closed")
            self._queue.put(pending)

    def _run(self) -> None:
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
            self._conn.close()

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
        conn = self._conn
        outcomes: list[_Outcome] = []
        started = time.perf_counter()
        try:
            # IMMEDIATE takes the write lock before the head is read.
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(HEAD).fetchone()
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
            conn.executemany(INSERT, rows)
            conn.executemany(INSERT_EVIDENCE, evidence_rows)
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
