"""RFC 6962 / RFC 9162 Merkle tree over receipt leaf hashes, backed by stored subtrees.

Why one module of ~440 lines: appending, roots, proofs and their verification are one
tree whose split and range arithmetic they share, kept beside the naive reference
definitions they are tested against.

Leaves are already hashed: a receipt's id is ``SHA-256(0x00 || signed bytes)``
(:func:`attribution.receipt.leaf_hash`). Interior nodes are
``SHA-256(0x01 || left || right)``, a tree of ``n > 1`` leaves splits at the
largest power of two below ``n``, and the empty tree's root is ``SHA-256(b"")``.

The log stores the hash of every *perfect aligned subtree*: ``(level, index)``
covers leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0 holds the
leaf hashes themselves. Every range that the RFC recursion visits starts at a
multiple of a power of two at least as large as the range, so its hash is the
right fold of at most ``log2(n)`` stored subtrees (one per set bit of its
length). Roots therefore cost O(log n) reads and hashes, and inclusion and
consistency proofs O(log n) as well; nothing is ever rehashed.

:func:`completed_subtrees` produces the rows to store on append;
:func:`subtrees_for_root`, :func:`subtrees_for_inclusion` and
:func:`subtrees_for_consistency` name the rows an operation will read, so a
storage layer can fetch them in one query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""Root of the tree with no leaves (RFC 6962 2.1)."""


class ProofError(ValueError):
    """A Merkle proof does not verify (or its parameters are out of range)."""


class SubtreeReader(Protocol):
    """Read access to the stored perfect aligned subtrees of one log."""

    def subtree(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree over leaves ``[index << level, (index + 1) << level)``.

        Must exist for every complete aligned subtree within the log; a missing one
        raises :class:`LookupError` (``KeyError``/``IndexError``).
        """
        ...


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash ``SHA-256(0x00 || data)`` (same as ``attribution.receipt.leaf_hash``)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


# --- naive reference implementations (RFC 9162 2.1.1, 2.1.3.1, 2.1.4.1) ----------------------


def reference_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) by the RFC's recursive definition; O(n) hashing, for tests and benches."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return bytes(leaves[0])
    k = _split(n)
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


def reference_inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) by the RFC's recursive definition, for tests and benches."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"index {index} outside a tree of {n} leaves")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return reference_inclusion_proof(index, leaves[:k]) + [reference_root(leaves[k:])]
    return reference_inclusion_proof(index - k, leaves[k:]) + [reference_root(leaves[:k])]


def reference_consistency_proof(first: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) by the RFC's recursive definition; empty for ``m`` 0 or ``n``."""
    n = len(leaves)
    if not 0 <= first <= n:
        raise ValueError(f"first size {first} outside 0..{n}")
    if first == 0:
        return []

    def subproof(m: int, tree: Sequence[bytes], complete: bool) -> list[bytes]:
        if m == len(tree):
            return [] if complete else [reference_root(tree)]
        k = _split(len(tree))
        if m <= k:
            return subproof(m, tree[:k], complete) + [reference_root(tree[k:])]
        return subproof(m - k, tree[k:], False) + [reference_root(tree[:k])]

    return subproof(first, leaves, True)


# --- appending -------------------------------------------------------------------------------


def _range_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """The perfect subtrees whose right fold is MTH(D[start:end]), largest first.

    Valid for every range the RFC recursion visits: ``start`` is a multiple of a
    power of two ``>= end - start``, so each piece is aligned.
    """
    pieces: list[tuple[int, int]] = []
    position = start
    remaining = end - start
    while remaining:
        level = remaining.bit_length() - 1
        pieces.append((level, position >> level))
        position += 1 << level
        remaining -= 1 << level
    return pieces


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Right fold: ``node(h0, node(h1, ... node(h[-2], h[-1])))``."""
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


class StoredSubtrees:
    """A :class:`SubtreeReader` over a SQL store of one log: level 0 reads a receipt's
    leaf (``leaf_sql``, parameters ``(*key, seq)``), a higher level a stored node
    (``node_sql``, parameters ``(*key, level, index)``). ``key`` selects the log where one
    store holds many (an origin); ``fetch_one`` runs a query and returns its first row."""

    def __init__(self, fetch_one: Callable[[str, tuple[Any, ...]], Sequence[Any] | None],
                 leaf_sql: str, node_sql: str, key: tuple[Any, ...] = ()) -> None:
        self._fetch_one = fetch_one
        self._leaf_sql = leaf_sql
        self._node_sql = node_sql
        self._key = key

    def subtree(self, level: int, index: int) -> bytes:
        if level == 0:
            row = self._fetch_one(self._leaf_sql, (*self._key, index))
        else:
            row = self._fetch_one(self._node_sql, (*self._key, level, index))
        if row is None:
            raise LookupError(f"subtree ({level}, {index}) is not stored")
        return bytes(row[0])


def _range_hash(start: int, end: int, reader: SubtreeReader) -> bytes:
    return _fold([reader.subtree(level, index) for level, index in _range_subtrees(start, end)])


def completed_subtrees(
    size_before: int, new_leaves: Sequence[bytes], reader: SubtreeReader
) -> list[tuple[int, int, bytes]]:
    """Rows ``(level, index, hash)`` to store when ``new_leaves`` are appended.

    Includes the level-0 rows (the leaves) and every perfect subtree the append
    completes, in an order where a row's children come before it. Reads only the
    current frontier (one stored subtree per set bit of ``size_before``) from
    ``reader``; hashing is O(len(new_leaves) + log n).
    """
    if size_before < 0:
        raise ValueError("size_before must be >= 0")
    # The frontier: the perfect subtrees of the current tree, largest first.
    stack: list[tuple[int, bytes]] = [
        (level, reader.subtree(level, index)) for level, index in _range_subtrees(0, size_before)
    ]
    rows: list[tuple[int, int, bytes]] = []
    size = size_before
    for leaf in new_leaves:
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hashes are {HASH_SIZE} bytes, got {len(leaf)}")
        rows.append((0, size, bytes(leaf)))
        size += 1
        level, value = 0, bytes(leaf)
        while stack and stack[-1][0] == level:
            value = node_hash(stack.pop()[1], value)
            level += 1
            rows.append((level, (size >> level) - 1, value))
        stack.append((level, value))
    return rows


# --- roots and proofs from stored subtrees ---------------------------------------------------


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form PATH(index, D[size]), in proof order (leaf first)."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} outside a tree of {size} leaves")
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
    ranges.reverse()
    return ranges


def _consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form PROOF(first, D[second]), in proof order."""
    if not 0 <= first <= second:
        raise ValueError(f"need 0 <= first <= second, got {first}, {second}")
    if first in (0, second):
        return []
    ranges: list[tuple[int, int]] = []
    lo, hi, complete = 0, second, True
    while first != hi:
        mid = lo + _split(hi - lo)
        if first <= mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo, complete = mid, False
    if not complete:
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def _subtrees_of(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    return [piece for start, end in ranges for piece in _range_subtrees(start, end)]


def subtrees_for_root(size: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` rows :func:`root` reads for ``size`` (popcount(size) rows)."""
    if size < 0:
        raise ValueError("size must be >= 0")
    return _range_subtrees(0, size)


def subtrees_for_inclusion(index: int, size: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` rows :func:`inclusion_proof` reads (O(log n), no duplicates)."""
    return _subtrees_of(_inclusion_ranges(index, size))


def subtrees_for_consistency(first: int, second: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` rows :func:`consistency_proof` reads (O(log n), no duplicates)."""
    return _subtrees_of(_consistency_ranges(first, second))


def root(size: int, reader: SubtreeReader) -> bytes:
    """MTH of the first ``size`` leaves, from at most log2(size) + 1 stored subtrees."""
    if size < 0:
        raise ValueError("size must be >= 0")
    if size == 0:
        return EMPTY_ROOT
    return _range_hash(0, size, reader)


def inclusion_proof(index: int, size: int, reader: SubtreeReader) -> list[bytes]:
    """RFC 9162 inclusion proof of leaf ``index`` in the tree of the first ``size`` leaves."""
    return [_range_hash(start, end, reader) for start, end in _inclusion_ranges(index, size)]


def consistency_proof(first: int, second: int, reader: SubtreeReader) -> list[bytes]:
    """RFC 9162 consistency proof from size ``first`` to size ``second``.

    Empty when ``first`` is 0 or equals ``second`` (nothing to prove; note that
    :func:`verify_consistency` rejects ``first == 0`` as the reference verifier does).
    """
    return [_range_hash(start, end, reader) for start, end in _consistency_ranges(first, second)]


# --- verification (RFC 9162 2.1.3.2 and 2.1.4.2) ---------------------------------------------


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for item in proof:
        if not isinstance(item, bytes | bytearray | memoryview) or len(item) != HASH_SIZE:
            raise ProofError(f"proof hashes must be {HASH_SIZE} bytes")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is at ``index`` in the tree of ``size`` leaves with ``root``.

    RFC 9162 2.1.3.2, plus the reference verifier's rule that the leaf hash is 32
    bytes. Raises :class:`ProofError`; returns None when the proof holds.
    """
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"leaf hash must be {HASH_SIZE} bytes")
    if index < 0 or size < 0 or index >= size:
        raise ProofError(f"index {index} is not in a tree of {size} leaves")
    _check_proof_hashes(proof)
    fn, sn = index, size - 1
    result = bytes(leaf)
    for item in proof:
        if sn == 0:
            raise ProofError("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            result = node_hash(item, result)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, item)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than the tree is deep")
    if result != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``second`` leaves extends the tree of ``first`` leaves.

    RFC 9162 2.1.4.2 with the reference verifier's edge cases: ``first > second``
    fails; ``first == 0`` fails (a proof from the empty tree proves nothing);
    ``first == second`` needs an empty proof and equal roots. Raises :class:`ProofError`.
    """
    if first < 0 or second < 0:
        raise ProofError("sizes must be >= 0")
    if first == 0:
        raise ProofError("a consistency proof from the empty tree is not allowed")
    if second < first:
        raise ProofError(f"second size {second} is smaller than first size {first}")
    if first == second:
        if proof:
            raise ProofError("sizes are equal but the proof is not empty")
        if first_root != second_root:
            raise ProofError("sizes are equal but the roots differ")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    _check_proof_hashes(proof)
    fr, sr = consistency_roots(first, second, first_root, proof)
    if fr != first_root:
        raise ProofError("consistency proof does not lead to the first root")
    if sr != second_root:
        raise ProofError("consistency proof does not lead to the second root")


def consistency_roots(first: int, second: int, first_root: bytes,
                      proof: Sequence[bytes]) -> tuple[bytes, bytes]:
    """The (first, second) roots a consistency proof implies (RFC 9162 2.1.4.2's walk),
    for ``0 < first < second``; raises :class:`ProofError` for a proof of the wrong length.

    Returning the roots rather than comparing them lets a caller tell a proof that the
    second root authenticates but that contradicts the first (equivocation) from a
    merely wrong one."""
    if not 0 < first < second or not proof:
        raise ProofError("a consistency walk needs 0 < first < second and a proof")
    path = list(proof)
    if first & (first - 1) == 0:  # first is a power of two: its root is a node of the path
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = bytes(path[0])
    for item in path[1:]:
        if sn == 0:
            raise ProofError("proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(item, fr)
            sr = node_hash(item, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, item)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than needed")
    return fr, sr


# --- in-memory stores ------------------------------------------------------------------------


class PrefetchedSubtrees:
    """A :class:`SubtreeReader` over rows fetched in advance.

    For storage that prefers one query per operation: fetch the rows named by
    :func:`subtrees_for_inclusion` (etc.) into a mapping, then pass this reader.
    """

    def __init__(self, rows: Mapping[tuple[int, int], bytes]) -> None:
        self.rows = rows

    def subtree(self, level: int, index: int) -> bytes:
        return self.rows[(level, index)]


class MemorySubtrees:
    """A dict-backed :class:`SubtreeReader` holding one log, for tests and benches."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self.size = 0
        self.rows: dict[tuple[int, int], bytes] = {}
        self.append(list(leaves))

    def subtree(self, level: int, index: int) -> bytes:
        return self.rows[(level, index)]

    def append(self, leaves: Sequence[bytes]) -> bytes:
        """Append leaf hashes; return the new root."""
        for level, index, value in completed_subtrees(self.size, leaves, self):
            self.rows[(level, index)] = value
        self.size += len(leaves)
        return self.root()

    def root(self) -> bytes:
        """Root of the whole log."""
        return root(self.size, self)
