"""Verify a node's receipt chain: signatures, one node key, contiguous seq, prev links.

Verification streams: :class:`ChainVerifier` keeps only the position it expects
next (seq, prev, node), so a ledger of millions of receipts is checked page by
page in constant memory. It reports rather than raises, so a CLI or a sync
peer can show every problem found, one line per faulty receipt.

After a fault the verifier resynchronises on the receipt that showed it, so
one missing, duplicated or altered receipt is reported once rather than as a
cascade over everything that follows it:

- a receipt that fails :func:`~attribution.receipt.verify_receipt`, or is signed
  by another node key, is taken to occupy the expected position; the next
  receipt's ``prev`` cannot be checked against it and is accepted as is;
- a seq above the expected one is a gap; the chain resumes after it;
- a seq below the expected one (duplicate, or out of order) is reported and
  otherwise ignored;
- a ``prev`` that is not the leaf of the receipt before is reported; the
  chain resumes after the receipt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from attribution.receipt import ZERO_HASH, leaf_hash, verify_receipt

DEFAULT_MAX_PROBLEMS = 1000


@dataclass
class ChainReport:
    """The outcome of verifying a chain.

    ``head_leaf`` is the leaf the next receipt's ``prev`` must equal (the leaf
    of the last receipt, or ``start_prev`` for an empty chain); with
    ``next_seq`` it lets verification resume where this report ends.
    ``problems`` holds the first problem of each faulty receipt, each naming
    its seq, up to ``max_problems``; ``problem_count`` counts them all.
    """

    ok: bool
    count: int
    head_leaf: bytes
    next_seq: int
    node: bytes | None
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0


class ChainVerifier:
    """Streaming chain verifier: :meth:`feed` receipts in order, then :meth:`report`."""

    def __init__(self, *, node: bytes | None = None, start_seq: int = 0,
                 start_prev: bytes = ZERO_HASH,
                 max_problems: int = DEFAULT_MAX_PROBLEMS) -> None:
        """Expect the chain to start at ``start_seq`` linked to ``start_prev``.

        With ``node`` every receipt must be signed by that key; without it, by
        the key of the first valid receipt.
        """
        if node is not None and len(node) != 32:
            raise ValueError("node must be a 32-byte Ed25519 public key")
        if start_seq < 0 or len(start_prev) != 32:
            raise ValueError("start_seq must be >= 0 and start_prev 32 bytes")
        self._node = node
        self._expected_seq = start_seq
        # None once the link to the previous receipt is unknowable (it was invalid).
        self._prev: bytes | None = start_prev
        self._head_leaf = start_prev
        self._count = 0
        self._max_problems = max_problems
        self._problems: list[str] = []
        self._problem_count = 0

    def feed(self, raw: bytes) -> bool:
        """Check the next receipt; return whether it extends the chain without a problem."""
        self._count += 1
        expected = self._expected_seq
        try:
            receipt = verify_receipt(raw)
        except ValueError as exc:  # InvalidReceipt, or anything else malformed
            self._problem(f"seq {expected}: invalid receipt: {exc}")
            self._occupy(raw)
            return False
        seq = receipt.seq
        if self._node is None:
            self._node = receipt.node
        elif receipt.node != self._node:
            self._problem(f"seq {seq}: signed by node key {receipt.node.hex()[:16]}..., "
                          f"not by {self._node.hex()[:16]}...")
            if seq == expected:
                self._occupy(raw)
            return False
        if seq < expected:
            self._problem(f"seq {seq}: duplicate or out of order (expected seq {expected})")
            return False
        leaf = receipt.leaf
        if seq > expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected}..{seq - 1}"
            self._problem(f"seq {seq}: gap, {missing} missing")
        elif self._prev is not None and receipt.prev != self._prev:
            self._problem(f"seq {seq}: prev is not the leaf of seq {seq - 1}")
        else:
            self._advance(seq, leaf)
            return True
        self._advance(seq, leaf)
        return False

    def feed_all(self, raws: Iterable[bytes]) -> None:
        """Feed every receipt of ``raws`` in order."""
        for raw in raws:
            self.feed(raw)

    def report(self) -> ChainReport:
        """The state so far; feeding may continue afterwards."""
        return ChainReport(
            ok=self._problem_count == 0,
            count=self._count,
            head_leaf=self._head_leaf,
            next_seq=self._expected_seq,
            node=self._node,
            problems=list(self._problems),
            problem_count=self._problem_count,
        )

    def _advance(self, seq: int, leaf: bytes) -> None:
        self._expected_seq = seq + 1
        self._prev = leaf
        self._head_leaf = leaf

    def _occupy(self, raw: bytes) -> None:
        # An unusable receipt stands in the expected position; its successor's
        # prev cannot be judged, so the link check is skipped once.
        self._expected_seq += 1
        self._prev = None
        self._head_leaf = leaf_hash(raw)

    def _problem(self, message: str) -> None:
        self._problem_count += 1
        if len(self._problems) < self._max_problems:
            self._problems.append(message)


def verify_chain(raws: Iterable[bytes], *, node: bytes | None = None, start_seq: int = 0,
                 start_prev: bytes = ZERO_HASH,
                 max_problems: int = DEFAULT_MAX_PROBLEMS) -> ChainReport:
    """Verify ``raws`` (signed receipt bytes in chain order) as one node's chain.

    Checks each receipt's encoding and signature, one node key throughout
    (``node`` if given), seq contiguous from ``start_seq`` and each ``prev``
    equal to the previous receipt's leaf (``start_prev`` for the first).
    Consumes ``raws`` lazily: pass a generator over pages for constant memory.
    """
    verifier = ChainVerifier(node=node, start_seq=start_seq, start_prev=start_prev,
                             max_problems=max_problems)
    verifier.feed_all(raws)
    return verifier.report()
