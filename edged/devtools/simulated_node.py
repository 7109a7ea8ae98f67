"""A node's receipt log without a daemon: real signed receipts, real Merkle rows, real
checkpoints and batches, for fleet tests and the fleet ingest benchmark."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from nacl.signing import SigningKey

from attribution.payees import Payee, split_ppm
from attribution.receipt import ZERO_HASH, AttributionRef, ModelRef, ReceiptDraft
from sync import merkle
from sync.batch import Batch
from sync.checkpoint import Checkpoint, SignedCheckpoint


def digest(label: str) -> bytes:
    """A 32-byte stand-in for a real digest or commitment."""
    return hashlib.sha256(label.encode()).digest()


class _Rows:
    def __init__(self) -> None:
        self.rows: dict[tuple[int, int], bytes] = {}

    def subtree(self, level: int, index: int) -> bytes:
        return self.rows[(level, index)]


class SimulatedNode:
    """Appends receipts with the given ``fee`` and ``payees`` and serves batches of them."""

    def __init__(self, key: SigningKey, *, clock_ms: Callable[[], int] | None = None,
                 fee: int = 1000, payees: tuple[Payee, ...] | None = None) -> None:
        self.key = key
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.fee = fee
        self.payees = payees or split_ppm([("0x" + "11" * 20, "owner", 60),
                                           ("0x" + "22" * 20, "data", 30),
                                           ("operator-a", "operator", 10)])
        self.raws: list[bytes] = []
        self.commit_ms: list[int] = []
        self._tree = _Rows()
        self._prev = ZERO_HASH

    @property
    def origin(self) -> bytes:
        return bytes(self.key.verify_key)

    @property
    def size(self) -> int:
        return len(self.raws)

    def append(self, count: int, *, fee: int | None = None,
               payees: tuple[Payee, ...] | None = None) -> None:
        leaves = []
        for _ in range(count):
            seq = len(self.raws)
            now = self.clock_ms()
            draft = ReceiptDraft(
                ts=now, model=ModelRef("sim-model", digest("weights"), digest("manifest")),
                kind="chat", input_commitment=digest(f"in-{seq}"),
                output_commitment=digest(f"out-{seq}"), input_units=seq % 50,
                output_units=seq % 70, fee=self.fee if fee is None else fee,
                payees=payees or self.payees,
                attr=AttributionRef("owner/1", digest("params"), digest(f"evidence-{seq}")))
            receipt = draft.finalise(self.key, seq, self._prev)
            self._prev = receipt.leaf
            self.raws.append(receipt.raw)
            self.commit_ms.append(now)
            leaves.append(receipt.leaf)
        for level, index, value in merkle.completed_subtrees(self.size - count, leaves,
                                                             self._tree):
            self._tree.rows[(level, index)] = value

    def checkpoint(self, size: int | None = None, ts: int | None = None) -> SignedCheckpoint:
        size = self.size if size is None else size
        return Checkpoint(self.origin, size, merkle.root(size, self._tree),
                          self.clock_ms() if ts is None else ts).sign(self.key)

    def batch(self, have: int, end: int | None = None, *, ts: int | None = None) -> Batch:
        """Receipts ``[have, end)`` for a receiver whose last checkpoint has size ``have``."""
        end = self.size if end is None else end
        proof = merkle.consistency_proof(have, end, self._tree) if have else []
        return Batch(self.origin, self.raws[have:end], self.checkpoint(end, ts), proof, have)
