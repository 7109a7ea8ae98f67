"""The serving side of the sync protocol: this node's heads, batches cut for pullers and
the fleet, and verified ingestion of the batches peers push or serve.

Every node serves batches of its own log (checkpoints of any prefix, signed on demand)
and of the other trusted origins it holds (store and forward: only at sizes that origin
signed). A received batch is verified completely (sync.batch.verify_batch) before
anything is stored; an origin caught equivocating is frozen, its two checkpoints kept
as evidence, and the event logged once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from edged.http.sync_endpoint import SyncEquivocation, SyncForbidden, SyncRefused
from edged.ledger import Ledger
from edged.peers import PeerStore
from edged.replicas import ReplicaStore
from sync import merkle
from sync.batch import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECEIPTS,
    Batch,
    BatchError,
    Equivocation,
    verify_batch,
)

logger = logging.getLogger(__name__)
BATCH_OVERHEAD_BYTES = 64 * 1024


def fitting_prefix(receipts: list[bytes]) -> list[bytes]:
    """The longest prefix of ``receipts`` that fits in one batch (with room for the
    checkpoint, the proof and framing); at least one receipt."""
    budget = MAX_BATCH_BYTES - BATCH_OVERHEAD_BYTES
    for count, raw in enumerate(receipts):
        budget -= len(raw) + 5  # msgpack bin header
        if budget < 0:
            return receipts[:max(1, count)]
    return receipts


class ExchangeServer:
    """Cuts and ingests batches; blocking (run it in threads)."""

    def __init__(self, *, ledger: Ledger, replicas: ReplicaStore, peers: PeerStore,
                 signing_key: Any, clock_ms: Callable[[], int]) -> None:
        self.ledger = ledger
        self.replicas = replicas
        self.peers = peers
        self.signing_key = signing_key  # nacl SigningKey
        self.clock_ms = clock_ms
        # One replica connection: serving and ingesting take turns (both run in threads).
        self.lock = threading.Lock()

    @property
    def origin(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def heads(self) -> list[dict[str, Any]]:
        """What this node can serve: its own log and every unfrozen replica."""
        own = self.ledger.cut_checkpoint(self.clock_ms())
        heads = [{"origin": self.origin.hex(), "size": own.checkpoint.size}]
        heads += [{"origin": h.origin.hex(), "size": h.checkpoint.checkpoint.size}
                  for h in self.replicas.heads() if h.checkpoint and not h.frozen]
        return heads

    def sizes_held(self) -> list[tuple[bytes, int]]:
        """``(origin, size)`` of this node's log (all of it) and of every unfrozen replica
        (up to its latest checkpoint): what can be pushed."""
        return [(self.origin, self.ledger.count())] + [
            (h.origin, h.checkpoint.checkpoint.size) for h in self.replicas.heads()
            if h.checkpoint and not h.frozen]

    def make_batch(self, origin: bytes, have: int, known: int, limit: int, *,
                   fresh: bool = False) -> Batch:
        """Receipts ``[have, end)`` of ``origin`` with a checkpoint of ``end`` and the
        consistency proof from the puller's checkpoint size ``known``; ``fresh`` signs this
        node's checkpoint at the current time even when one of that size exists (a fleet
        refuses checkpoints signed before the node's enrollment). Blocking."""
        with self.lock:
            return self._make_batch(origin, have, known, limit, fresh)

    def _make_batch(self, origin: bytes, have: int, known: int, limit: int,
                    fresh: bool = False) -> Batch:
        limit = max(1, min(limit, MAX_BATCH_RECEIPTS))
        if origin == self.origin:
            end = min(self.ledger.count(), have + limit)
            if end < have or known > end:
                raise SyncRefused("nothing to serve from there")
            receipts = fitting_prefix([r.raw for r in self.ledger.page(have - 1, end - have)])
            end = have + len(receipts)
            checkpoint = self.ledger.cut_checkpoint(self.clock_ms(), end, fresh=fresh)
            proof = self.ledger.consistency_proof(known, end) if known else []
            return Batch(origin, receipts, checkpoint, proof, known)
        if self.replicas.is_frozen(origin):
            raise SyncForbidden("that origin is frozen for equivocation")
        held = [cp for cp in self.replicas.checkpoints(origin) if cp.checkpoint.size > have]
        if not held:
            raise SyncRefused("no newer checkpoint of that origin held here")
        fitting = [cp for cp in held if cp.checkpoint.size <= have + limit] or held[:1]
        for checkpoint in reversed(fitting):  # the largest range that fits in a batch
            end = checkpoint.checkpoint.size
            receipts = self.replicas.raw_range(origin, have, end)
            if len(fitting_prefix(receipts)) == len(receipts):
                break
        else:
            raise SyncRefused("the receipts up to the next checkpoint held of that "
                              "origin do not fit in one batch")
        proof = (merkle.consistency_proof(known, end, self.replicas.subtrees(origin))
                 if known else [])
        return Batch(origin, receipts, checkpoint, proof, known)

    def ingest(self, data: bytes) -> int:
        """Verify and store one batch; returns how many receipts were new. Blocking."""
        with self.lock:
            return self._ingest(data)

    def _ingest(self, data: bytes) -> int:
        try:
            batch = Batch.decode(data)
        except BatchError as exc:
            raise SyncRefused(str(exc)) from None
        origin = batch.origin
        if origin == self.origin:
            return 0  # our own log is authoritative here
        if not self.peers.is_trusted(origin):
            raise SyncForbidden("receipts of an untrusted origin")
        if self.replicas.is_frozen(origin):
            raise SyncForbidden("that origin is frozen for equivocation")
        known = self.replicas.latest_checkpoint(origin)
        try:
            verified = verify_batch(batch, known=known, have_through=self.replicas.size(origin),
                                    stored=self.replicas.subtrees(origin))
        except Equivocation as exc:
            if self.replicas.record_equivocation(origin, exc.known, exc.new):
                logger.warning("origin %s signed two inconsistent checkpoints; frozen",
                               origin.hex()[:16])
            raise SyncEquivocation("equivocation: the origin is now frozen") from None
        except BatchError as exc:
            raise SyncRefused(str(exc)) from None
        return self.replicas.store(origin, verified.new_receipts, verified.subtree_rows,
                                   verified.checkpoint)
