"""The :class:`Ledger` facade: opens the file and composes the writer, the reads and the
checkpoints, each on its own connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web
from nacl.signing import SigningKey

from attribution.chain import ChainReport
from attribution.receipt import ReceiptDraft, SignedReceipt
from edged import log_tree
from edged.ledger import schema
from edged.ledger.checkpoints import LedgerCheckpoints
from edged.ledger.reads import LedgerReader
from edged.ledger.writer import DEFAULT_MAX_BATCH, LedgerWriter
from sync.checkpoint import SignedCheckpoint


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
        self._node = bytes(signing_key.verify_key)
        schema.create_schema(self.path)
        writer_conn = schema.connect(self.path)
        try:
            schema.check_owner(writer_conn, self._node)
            log_tree.backfill(writer_conn, schema.TABLE, schema.stored_size(writer_conn))
            self._reader = LedgerReader(schema.connect(self.path, read_only=True), self._node)
            self._checkpoints = LedgerCheckpoints(schema.connect(self.path), signing_key,
                                                  self._reader)
        except BaseException:
            writer_conn.close()
            raise
        self._writer = LedgerWriter(writer_conn, signing_key, max_batch=max_batch,
                                    on_commit=on_commit)

    @classmethod
    def open(cls, path: Path | str, signing_key: SigningKey, *,
             max_batch: int = DEFAULT_MAX_BATCH) -> Self:
        """Same as the constructor; reads well as ``with Ledger.open(...) as ledger``."""
        return cls(path, signing_key, max_batch=max_batch)

    @property
    def node(self) -> bytes:
        """The 32-byte public key every receipt here is signed by."""
        return self._node

    # --- appending (the writer) -----------------------------------------------------------

    async def append(self, draft: ReceiptDraft, evidence: bytes | None = None) -> SignedReceipt:
        """Sign, chain and durably store ``draft``; return the receipt once committed.

        ``evidence`` (the canonical bytes whose digest is the draft's ``attr.evidence``)
        is stored in the same transaction and served by :meth:`get_evidence`.

        If the awaiting task is cancelled the receipt may still be committed
        (the chain stays whole; only this caller does not learn the id).
        Raises :class:`AppendFailedError` if its transaction failed,
        :class:`~attribution.receipt.InvalidReceipt` if the draft is malformed.
        """
        return await self._writer.append(draft, evidence)

    async def append_group(self, drafts: Sequence[ReceiptDraft],
                           evidence: Sequence[bytes | None] | None = None) -> list[SignedReceipt]:
        """Append several receipts in ONE transaction (a dynamically batched prediction's
        receipts); each caller's id is known only after that commit."""
        return await self._writer.append_group(drafts, evidence)

    def append_sync(self, draft: ReceiptDraft, timeout: float | None = None) -> SignedReceipt:
        """Blocking :meth:`append` for threads without an event loop; same writer, same order."""
        return self._writer.append_sync(draft, timeout)

    # --- the Merkle log (checkpoints) -----------------------------------------------------

    def cut_checkpoint(self, ts: int, size: int | None = None, *,
                       fresh: bool = False) -> SignedCheckpoint:
        """See :meth:`LedgerCheckpoints.cut_checkpoint`. Blocking; never holds up reads."""
        return self._checkpoints.cut_checkpoint(ts, size, fresh=fresh)

    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self._checkpoints.latest_checkpoint()

    def checkpoint_at(self, size: int) -> SignedCheckpoint | None:
        return self._checkpoints.checkpoint_at(size)

    def inclusion_proof(self, seq: int, size: int) -> list[bytes]:
        """RFC 6962 audit path of receipt ``seq`` in the tree of the first ``size`` receipts."""
        return self._checkpoints.inclusion_proof(seq, size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 6962 proof that the tree of ``first`` receipts is a prefix of ``second``'s."""
        return self._checkpoints.consistency_proof(first, second)

    def root(self, size: int) -> bytes:
        return self._checkpoints.root(size)

    # --- reads ------------------------------------------------------------------------------

    def get_evidence(self, leaf: bytes) -> bytes | None:
        """The evidence stored with the receipt ``leaf``, or None."""
        return self._reader.get_evidence(leaf)

    def get(self, leaf: bytes) -> SignedReceipt | None:
        """The receipt whose id (leaf hash) is ``leaf``, or None."""
        return self._reader.get(leaf)

    def page(self, after_seq: int = -1, limit: int = 100) -> list[SignedReceipt]:
        """Up to ``limit`` receipts with seq > ``after_seq``, ascending."""
        return self._reader.page(after_seq, limit)

    def raw_page(self, after_seq: int = -1, limit: int = 100) -> list[bytes]:
        """Like :meth:`page` but the signed bytes only (for sync and verification)."""
        return self._reader.raw_page(after_seq, limit)

    def iter_raw(self, after_seq: int = -1, page_size: int = 1000) -> Iterator[bytes]:
        """Every receipt's bytes with seq > ``after_seq``, ascending, one page in memory."""
        return self._reader.iter_raw(after_seq, page_size)

    def head(self) -> tuple[int, bytes]:
        """(number of receipts, leaf of the last one or 32 zero bytes)."""
        return self._reader.head()

    def count(self) -> int:
        """Number of receipts."""
        return self._reader.count()

    def verify(self) -> ChainReport:
        """Verify the whole stored chain against this node's key, streaming."""
        return self._reader.verify()

    # --- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the connections. Idempotent."""
        self._writer.close()
        self._reader.close()
        self._checkpoints.close()  # waits for a checkpoint being cut

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop while the last batch commits."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


LEDGER = web.AppKey("ledger", Ledger)
"""The node's receipt ledger: ``app[LEDGER]``."""
