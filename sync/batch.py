"""Sync batches: a contiguous run of one origin's receipts, the checkpoint covering it, and
a consistency proof from the receiver's last checkpoint; and their verification.

See DESIGN.md, "Checkpoints, batches, proofs". :func:`verify_batch` checks
everything before the caller stores anything and returns exactly what to store.

Receipt signatures are not verified on the fast path (``check_signatures=False``).
The origin's checkpoint signature covers the RFC 6962 root, and the root commits to
the raw bytes of every receipt below ``size`` (leaf = SHA-256(0x00 || raw)); the
receiver recomputes that root from its own stored leaves plus the batch's leaves.
So a receipt is accepted exactly when its origin has signed a checkpoint covering
it: a tampered byte changes the leaf and the root and is rejected; receipts of
another key carry another ``node`` and are rejected by the field check (and could
not be under the origin's root anyway). What the fast path gives up is only a
check of the origin against itself (an origin that signs a checkpoint over a
receipt whose own signature is broken); pass ``check_signatures=True`` to verify
each receipt with :func:`attribution.receipt.verify_receipt` as well (~17x slower,
see ``bench/bench_ingest.py``).

Equivocation is raised only when it is *proven*, so that a buggy or hostile relay
cannot get an honest origin frozen by sending a garbage proof: either the two
checkpoints have the same size and different roots, or the consistency proof
authenticates against the new signed root (its second root checks out, which fixes
every proof hash by collision resistance) yet yields a first root other than the
known one. Anybody can re-check that evidence from the two checkpoints and the
proof. A proof that fails in any other way is a plain :class:`BatchError`. (When
the known size is a power of two, the RFC proof omits the first root, so an
equivocation there shows as a bad proof: rejected, but not as evidence.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from attribution import canonical
from attribution.receipt import ZERO_HASH, InvalidReceipt, leaf_hash, verify_receipt
from sync.checkpoint import CheckpointError, SignedCheckpoint
from sync.merkle import (
    HASH_SIZE,
    ProofError,
    SubtreeReader,
    completed_subtrees,
    root,
    verify_consistency,
)
from sync.merkle import (
    consistency_roots as merkle_consistency_roots,
)

BATCH_VERSION = 1
MAX_BATCH_BYTES = 8 * 1024 * 1024
MAX_BATCH_RECEIPTS = 4096
MAX_RECEIPT_BYTES = 64 * 1024
MAX_PROOF_HASHES = 128
MAX_DEPTH = 4  # batch map -> receipts list -> receipt bytes; anything deeper is hostile
_FIELDS = frozenset({"v", "origin", "from", "receipts", "checkpoint", "proof"})


class BatchError(ValueError):
    """A batch is malformed, or does not verify; nothing of it may be stored."""


class Equivocation(BatchError):
    """Two validly signed checkpoints of one origin that are provably inconsistent.

    ``known`` and ``new`` are the evidence to keep; ``proof`` is the consistency
    proof that (authenticated by ``new``'s root) shows ``known`` is not its prefix,
    empty when the sizes are equal and the roots differ.
    """

    def __init__(self, known: SignedCheckpoint, new: SignedCheckpoint,
                 proof: Sequence[bytes] = ()) -> None:
        super().__init__(f"equivocation: checkpoints of size {known.checkpoint.size} and "
                         f"{new.checkpoint.size} of one origin are inconsistent")
        self.known = known
        self.new = new
        self.proof = list(proof)


@dataclass(frozen=True)
class Batch:
    """Receipts ``[first seq, checkpoint.size)`` of ``origin`` with their checkpoint.

    ``proof`` is the consistency proof from ``from_size`` (the receiver's last known
    checkpoint size of this origin, 0 for none) to ``checkpoint.size``.
    """

    origin: bytes
    receipts: list[bytes]  # raw signed receipts, contiguous seqs, ending at checkpoint.size
    checkpoint: SignedCheckpoint
    proof: list[bytes] = field(default_factory=list)
    from_size: int = 0

    def encode(self) -> bytes:
        """Canonical msgpack map ``{v, origin, from, receipts, checkpoint, proof}``."""
        return canonical.encode({
            "v": BATCH_VERSION, "origin": self.origin, "from": self.from_size,
            "receipts": list(self.receipts), "checkpoint": self.checkpoint.encode(),
            "proof": list(self.proof),
        })

    @classmethod
    def decode(cls, data: bytes, *, max_bytes: int = MAX_BATCH_BYTES,
               max_receipts: int = MAX_BATCH_RECEIPTS) -> Batch:
        """Strictly decode :meth:`encode`'s output; raise :class:`BatchError` otherwise.

        The size is checked before parsing; msgpack's own limits bound every
        container and string, nesting deeper than :data:`MAX_DEPTH` is refused, and
        the bytes must be the canonical encoding of what they decode to.
        Signatures are not checked here (see :func:`verify_batch`).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BatchError("a batch is bytes")
        if len(data) > max_bytes:
            raise BatchError(f"batch of {len(data)} bytes exceeds {max_bytes}")
        try:
            value = msgpack.unpackb(
                data, raw=False, strict_map_key=True, use_list=True,
                max_str_len=64, max_bin_len=max(MAX_RECEIPT_BYTES, 1024),
                max_array_len=max(max_receipts, MAX_PROOF_HASHES), max_map_len=len(_FIELDS),
                max_ext_len=0,
            )
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError) as exc:
            raise BatchError(f"not valid msgpack: {type(exc).__name__}") from None
        _check_depth(value)
        if not isinstance(value, dict) or set(value) != _FIELDS:
            raise BatchError("not a batch: wrong set of fields")
        if value["v"] != BATCH_VERSION or isinstance(value["v"], bool):
            raise BatchError("unsupported batch version")
        origin, from_size = value["origin"], value["from"]
        receipts, proof = value["receipts"], value["proof"]
        if not isinstance(origin, bytes) or len(origin) != 32:
            raise BatchError("origin must be a 32-byte key")
        if not isinstance(from_size, int) or isinstance(from_size, bool) or from_size < 0:
            raise BatchError("from must be a non-negative integer")
        if not isinstance(receipts, list) or len(receipts) > max_receipts:
            raise BatchError(f"receipts must be a list of at most {max_receipts}")
        if not all(isinstance(raw, bytes) and 0 < len(raw) <= MAX_RECEIPT_BYTES
                   for raw in receipts):
            raise BatchError("receipts must be non-empty byte strings")
        if not isinstance(proof, list) or len(proof) > MAX_PROOF_HASHES or not all(
                isinstance(item, bytes) and len(item) == HASH_SIZE for item in proof):
            raise BatchError("proof must be a short list of 32-byte hashes")
        if not isinstance(value["checkpoint"], bytes):
            raise BatchError("checkpoint must be bytes")
        try:
            checkpoint = SignedCheckpoint.decode(value["checkpoint"])
        except CheckpointError as exc:
            raise BatchError(f"bad checkpoint: {exc}") from None
        batch = cls(origin, receipts, checkpoint, proof, from_size)
        if batch.encode() != bytes(data):
            raise BatchError("not the canonical encoding")
        return batch


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | dict):
            if depth >= MAX_DEPTH:
                raise BatchError(f"nested deeper than {MAX_DEPTH} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


@dataclass(frozen=True)
class VerifiedBatch:
    """What to store, in one transaction, after :func:`verify_batch` accepted a batch.

    ``new_receipts`` are ``(seq, leaf, raw)`` for seqs at or above the receiver's
    ``have_through`` (overlap already held is dropped); ``subtree_rows`` are the
    ``(level, index, hash)`` rows of :func:`sync.merkle.completed_subtrees` for
    appending their leaves (level 0 included); ``checkpoint`` is the new last
    checkpoint of ``origin``.
    """

    origin: bytes
    new_receipts: list[tuple[int, bytes, bytes]]
    checkpoint: SignedCheckpoint
    subtree_rows: list[tuple[int, int, bytes]]


class _Overlay:
    """Stored subtrees plus the rows an append would add, as one :class:`SubtreeReader`."""

    def __init__(self, rows: Mapping[tuple[int, int], bytes], stored: SubtreeReader) -> None:
        self._rows = rows
        self._stored = stored

    def subtree(self, level: int, index: int) -> bytes:
        found = self._rows.get((level, index))
        return found if found is not None else self._stored.subtree(level, index)


def _receipt_fields(raw: bytes, check_signature: bool) -> tuple[Any, Any, Any]:
    """``(node, seq, prev)`` of a raw receipt; fast path decodes without re-encoding."""
    if check_signature:
        try:
            receipt = verify_receipt(raw)
        except (InvalidReceipt, ValueError) as exc:
            raise BatchError(f"invalid receipt: {exc}") from None
        return receipt.node, receipt.seq, receipt.prev
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError):
        raise BatchError("a receipt is not valid msgpack") from None
    if not isinstance(fields, dict) or fields.get("v") != 1:
        raise BatchError("a receipt is not a v1 receipt")
    return fields.get("node"), fields.get("seq"), fields.get("prev")


def consistency_roots(first: int, second: int, first_root: bytes,
                      proof: Sequence[bytes]) -> tuple[bytes, bytes] | None:
    """The (first, second) roots a consistency proof implies, or None if malformed
    (:func:`sync.merkle.consistency_roots` without the exception)."""
    try:
        return merkle_consistency_roots(first, second, first_root, proof)
    except ProofError:
        return None


def _check_consistency(known: SignedCheckpoint, new: SignedCheckpoint,
                       proof: Sequence[bytes]) -> None:
    old, cur = known.checkpoint, new.checkpoint
    if cur.size < old.size:
        raise BatchError(f"checkpoint shrinks from {old.size} to {cur.size}")
    if cur.size == old.size:
        if cur.root != old.root:
            raise Equivocation(known, new)
        if proof:
            raise BatchError("equal sizes need an empty consistency proof")
        return
    if old.size == 0:  # the empty log is a prefix of every log
        if proof:
            raise BatchError("a proof from the empty log must be empty")
        return
    try:
        verify_consistency(old.size, cur.size, old.root, cur.root, proof)
    except ProofError as exc:
        roots = consistency_roots(old.size, cur.size, old.root, proof)
        if roots is not None and roots[1] == cur.root and roots[0] != old.root:
            raise Equivocation(known, new, proof) from None
        raise BatchError(f"bad consistency proof: {exc}") from None


def verify_batch(batch: Batch, *, known: SignedCheckpoint | None, have_through: int,
                 stored: SubtreeReader, check_signatures: bool = False) -> VerifiedBatch:
    """Verify ``batch`` against what the receiver holds of its origin; store nothing.

    The receiver holds receipts ``[0, have_through)`` of ``batch.origin`` and their
    Merkle rows, readable through ``stored`` (a :class:`sync.merkle.SubtreeReader`;
    level 0 holds the leaves, so ``stored.subtree(0, seq)`` is the stored leaf of
    ``seq``); ``known`` is its last checkpoint of this origin, or None.

    Checks, in order: the checkpoint's signature and origin; ``from_size`` equals
    ``known``'s size (0 without one); consistency with ``known`` (a shrinking
    checkpoint or a bad proof is a :class:`BatchError`, a provable fork an
    :class:`Equivocation`); every receipt decodes with ``node`` == origin (full
    signature check with ``check_signatures``); seqs contiguous from at most
    ``have_through`` up to exactly ``checkpoint.size``; receipts already held are
    byte-identical to the stored ones (their leaves equal); each ``prev`` is the
    previous leaf (``ZERO_HASH`` before seq 0); and the root of the stored leaves
    plus the new ones, computed incrementally from the stored frontier, equals the
    checkpoint's root. Raises :class:`BatchError` on the first failure.
    """
    checkpoint = batch.checkpoint
    cp = checkpoint.checkpoint
    if cp.origin != batch.origin:
        raise BatchError("the checkpoint is not of the batch's origin")
    try:
        checkpoint.verify()
    except CheckpointError as exc:
        raise BatchError(str(exc)) from None
    if have_through < 0:
        raise ValueError("have_through must be >= 0")
    if known is not None:
        if known.checkpoint.origin != batch.origin:
            raise ValueError("known checkpoint is of another origin")
        if batch.from_size != known.checkpoint.size:
            raise BatchError(f"proof is from size {batch.from_size}, "
                             f"the receiver knows size {known.checkpoint.size}")
        _check_consistency(known, checkpoint, batch.proof)
    elif batch.from_size != 0 or batch.proof:
        raise BatchError("the receiver knows no checkpoint: from must be 0, proof empty")

    count = len(batch.receipts)
    first_seq = cp.size - count
    if first_seq < 0:
        raise BatchError("more receipts than the checkpoint covers")
    if first_seq > have_through:
        raise BatchError(f"gap: receiver holds seqs below {have_through}, "
                         f"batch starts at {first_seq}")
    try:
        prev = ZERO_HASH if first_seq == 0 else stored.subtree(0, first_seq - 1)
    except LookupError:
        raise BatchError(f"the receiver does not hold seq {first_seq - 1}") from None
    new_receipts: list[tuple[int, bytes, bytes]] = []
    for offset, raw in enumerate(batch.receipts):
        expected = first_seq + offset
        node, seq, receipt_prev = _receipt_fields(raw, check_signatures)
        if node != batch.origin:
            raise BatchError(f"seq {expected}: receipt is not signed by the batch's origin")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq != expected:
            raise BatchError(f"seq {expected}: found seq {seq!r} (gap or reordering, or "
                             "receipts do not end at the checkpoint size)")
        if receipt_prev != prev:
            raise BatchError(f"seq {seq}: prev is not the leaf of seq {seq - 1}")
        leaf = leaf_hash(raw)
        if seq < have_through:
            if stored.subtree(0, seq) != leaf:
                raise BatchError(f"seq {seq}: differs from the stored receipt")
        else:
            new_receipts.append((seq, leaf, raw))
        prev = leaf

    rows = completed_subtrees(have_through, [leaf for _, leaf, _ in new_receipts], stored) \
        if new_receipts else []
    reader = _Overlay({(level, index): value for level, index, value in rows}, stored)
    try:
        computed = root(cp.size, reader)
    except LookupError:
        raise BatchError("the receiver lacks stored subtrees for the checkpoint") from None
    if computed != cp.root:
        raise BatchError("the receipts do not hash to the checkpoint's root")
    return VerifiedBatch(batch.origin, new_receipts, checkpoint, rows)
