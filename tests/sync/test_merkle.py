"""RFC 6962 / 9162 Merkle trees: the published vectors, and stored subtrees vs the reference."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.merkle import (
    EMPTY_ROOT,
    MemorySubtrees,
    PrefetchedSubtrees,
    ProofError,
    completed_subtrees,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    reference_consistency_proof,
    reference_inclusion_proof,
    reference_root,
    root,
    subtrees_for_consistency,
    subtrees_for_inclusion,
    subtrees_for_root,
    verify_consistency,
    verify_inclusion,
)

# The published vectors, copied unchanged with their SOURCE.md and LICENSE.
VECTORS = Path(__file__).resolve().parents[1] / "data" / "rfc6962"
# The leaf data of RFC 6962's test tree, which the published vectors are computed over.
RFC_LEAF_DATA = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]
RFC_LEAVES = [leaf_hash(data) for data in RFC_LEAF_DATA]


def vector_files(kind: str) -> list[Path]:
    """Every vector file of one kind; a missing folder fails collection loudly."""
    folder = VECTORS / kind
    if not folder.is_dir():
        raise FileNotFoundError(f"RFC 6962 vectors not found at {folder.resolve()}")
    files = sorted(folder.rglob("*.json"))
    if not files:
        raise FileNotFoundError(f"no RFC 6962 vectors under {folder.resolve()}")
    return files


INCLUSION_FILES = vector_files("inclusion")
CONSISTENCY_FILES = vector_files("consistency")


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text())
    return vector


def b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def file_id(path: Path) -> str:
    return str(path.relative_to(VECTORS))


def test_vector_set_is_complete() -> None:
    # Guards against a partial copy of the folder passing quietly.
    vectors = [load(path) for path in INCLUSION_FILES + CONSISTENCY_FILES]
    assert len(INCLUSION_FILES) == 98 and len(CONSISTENCY_FILES) == 98
    assert sum(not v["wantErr"] for v in vectors) == 12


@pytest.mark.parametrize("path", INCLUSION_FILES, ids=file_id)
def test_inclusion_vector(path: Path) -> None:
    v = load(path)
    args = (b64(v["leafHash"]), v["leafIdx"], v["treeSize"], [b64(p) for p in v["proof"] or []],
            b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY_FILES, ids=file_id)
def test_consistency_vector(path: Path) -> None:
    v = load(path)
    args = (v["size1"], v["size2"], b64(v["root1"]), b64(v["root2"]),
            [b64(p) for p in v["proof"] or []])
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


@pytest.mark.parametrize("path", [p for p in INCLUSION_FILES if p.name == "happy-path.json"],
                         ids=file_id)
def test_generated_inclusion_proof_equals_published(path: Path) -> None:
    v = load(path)
    store = MemorySubtrees(RFC_LEAVES)
    assert RFC_LEAVES[v["leafIdx"]] == b64(v["leafHash"])
    assert root(v["treeSize"], store) == b64(v["root"])
    assert inclusion_proof(v["leafIdx"], v["treeSize"], store) == [
        b64(p) for p in v["proof"] or []]


@pytest.mark.parametrize("path", [p for p in CONSISTENCY_FILES if p.name == "happy-path.json"],
                         ids=file_id)
def test_generated_consistency_proof_equals_published(path: Path) -> None:
    v = load(path)
    store = MemorySubtrees(RFC_LEAVES)
    assert root(v["size1"], store) == b64(v["root1"])
    assert root(v["size2"], store) == b64(v["root2"])
    assert consistency_proof(v["size1"], v["size2"], store) == [
        b64(p) for p in v["proof"] or []]


def test_hashing_primitives() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert reference_root([]) == root(0, MemorySubtrees()) == EMPTY_ROOT
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    # RFC 6962's test tree of 8 leaves has this well-known root.
    assert reference_root(RFC_LEAVES).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")


# --- stored subtrees vs the reference ---------------------------------------------------------


def make_leaves(n: int, salt: int) -> list[bytes]:
    return [leaf_hash(f"{salt}/{i}".encode()) for i in range(n)]


def inclusion_shape(index: int, size: int) -> tuple[str, ...] | None:
    """Which side each proof hash joins on, leaf first, from the RFC's recursion.

    Two (index, size) pairs with the same shape make the verifier do the very same
    hashing, so one's proof verifies as the other's: that is RFC 9162, not a bug.
    """
    if not 0 <= index < size:
        return None
    sides: list[str] = []
    while size > 1:
        k = 1 << ((size - 1).bit_length() - 1)
        if index < k:
            sides.append("right")
            size = k
        else:
            sides.append("left")
            index, size = index - k, size - k
    return tuple(reversed(sides))


def consistency_shape(first: int, second: int) -> tuple[str, ...] | None:
    """The consistency counterpart of :func:`inclusion_shape` (None: never verifies)."""
    if not 0 < first < second:
        return None
    sides: list[str] = []
    complete = True
    while first != second:
        k = 1 << ((second - 1).bit_length() - 1)
        if first <= k:
            sides.append("right")
            second = k
        else:
            sides.append("left")
            first, second, complete = first - k, second - k, False
    sides.append("first root" if complete else "seed")
    return tuple(reversed(sides))


batch_plans = st.lists(st.integers(min_value=0, max_value=60), max_size=12).filter(
    lambda sizes: sum(sizes) <= 300)


@settings(max_examples=60, deadline=None)
@given(batches=batch_plans, salt=st.integers(0, 2**32), data=st.data())
def test_stored_subtrees_match_reference(batches: list[int], salt: int,
                                         data: st.DataObject) -> None:
    leaves = make_leaves(sum(batches), salt)
    store = MemorySubtrees()
    for size in batches:
        before = store.size
        assert store.append(leaves[before:before + size]) == reference_root(
            leaves[:before + size])
    n = store.size
    # Exactly the perfect aligned subtrees are stored, each with its reference hash.
    expected = {(level, i): reference_root(leaves[i << level:(i + 1) << level])
                for level in range(n.bit_length()) for i in range(n >> level)}
    assert store.rows == expected

    for _ in range(4):
        size = data.draw(st.integers(0, n), label="size")
        tree_root = root(size, store)
        assert tree_root == reference_root(leaves[:size])
        assert len(subtrees_for_root(size)) == size.bit_count()
        first = data.draw(st.integers(0, size), label="first")
        proof = consistency_proof(first, size, store)
        assert proof == reference_consistency_proof(first, leaves[:size])
        if first:
            verify_consistency(first, size, root(first, store), tree_root, proof)
        else:
            with pytest.raises(ProofError):
                verify_consistency(first, size, EMPTY_ROOT, tree_root, proof)
        # subtrees_for_* name exactly the rows an operation reads (fetch them in one query).
        wanted = subtrees_for_consistency(first, size)
        assert len(set(wanted)) == len(wanted)
        assert consistency_proof(first, size, prefetched(store, wanted)) == proof
        assert root(size, prefetched(store, subtrees_for_root(size))) == tree_root
        if size == 0:
            continue
        index = data.draw(st.integers(0, size - 1), label="index")
        proof = inclusion_proof(index, size, store)
        assert proof == reference_inclusion_proof(index, leaves[:size])
        verify_inclusion(leaves[index], index, size, proof, tree_root)
        wanted = subtrees_for_inclusion(index, size)
        assert len(set(wanted)) == len(wanted) <= 2 * size.bit_length()
        assert inclusion_proof(index, size, prefetched(store, wanted)) == proof


def prefetched(store: MemorySubtrees, wanted: list[tuple[int, int]]) -> PrefetchedSubtrees:
    return PrefetchedSubtrees({coordinate: store.subtree(*coordinate) for coordinate in wanted})


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 300), salt=st.integers(0, 2**32), data=st.data())
def test_inclusion_proof_tampering_is_rejected(n: int, salt: int, data: st.DataObject) -> None:
    leaves = make_leaves(n, salt)
    store = MemorySubtrees(leaves)
    size = data.draw(st.integers(1, n), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    tree_root = root(size, store)
    proof = inclusion_proof(index, size, store)
    verify_inclusion(leaves[index], index, size, proof, tree_root)
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1), label="which")
        bit = data.draw(st.integers(0, 255), label="bit")
        flipped = list(proof)
        flipped[which] = flip(flipped[which], bit)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size, flipped, tree_root)
        with pytest.raises(ProofError):
            verify_inclusion(leaves[index], index, size, proof[:-1], tree_root)
    with pytest.raises(ProofError):
        verify_inclusion(leaves[index], index, size, [*proof, tree_root], tree_root)
    with pytest.raises(ProofError):
        verify_inclusion(leaves[index], index, size, [tree_root, *proof], tree_root)
    with pytest.raises(ProofError):
        verify_inclusion(flip(leaves[index], data.draw(st.integers(0, 255))), index, size, proof,
                         tree_root)
    # A wrong index or size verifies exactly when it makes the verifier hash identically.
    other_index = data.draw(st.integers(-2, size + 2).filter(lambda i: i != index))
    other_size = data.draw(st.integers(-1, 2 * n).filter(lambda s: s != size))
    for i, s in ((other_index, size), (index, other_size), (other_index, other_size)):
        same = inclusion_shape(i, s) == inclusion_shape(index, size)
        if same:
            verify_inclusion(leaves[index], i, s, proof, tree_root)
        else:
            with pytest.raises(ProofError):
                verify_inclusion(leaves[index], i, s, proof, tree_root)
    assert inclusion_shape(other_index, size) != inclusion_shape(index, size)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 300), salt=st.integers(0, 2**32), data=st.data())
def test_consistency_proof_tampering_is_rejected(n: int, salt: int, data: st.DataObject) -> None:
    store = MemorySubtrees(make_leaves(n, salt))
    second = data.draw(st.integers(2, n), label="second")
    first = data.draw(st.integers(1, second - 1), label="first")
    root1, root2 = root(first, store), root(second, store)
    proof = consistency_proof(first, second, store)
    verify_consistency(first, second, root1, root2, proof)
    which = data.draw(st.integers(0, len(proof) - 1), label="which")
    flipped = list(proof)
    flipped[which] = flip(flipped[which], data.draw(st.integers(0, 255), label="bit"))
    for bad in (flipped, proof[:-1], proof[1:], [*proof, root2], [root1, *proof]):
        with pytest.raises(ProofError):
            verify_consistency(first, second, root1, root2, bad)
    with pytest.raises(ProofError):
        verify_consistency(first, second, root2, root1, proof)
    with pytest.raises(ProofError):
        verify_consistency(second, first, root2, root1, proof)
    other_first = data.draw(st.integers(-1, second + 1).filter(lambda f: f != first))
    other_second = data.draw(st.integers(-1, 2 * n).filter(lambda s: s != second))
    for f, s in ((other_first, second), (first, other_second), (other_first, other_second)):
        if consistency_shape(f, s) == consistency_shape(first, second):
            verify_consistency(f, s, root1, root2, proof)
        else:
            with pytest.raises(ProofError):
                verify_consistency(f, s, root1, root2, proof)


def flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_proofs_do_not_bind_every_size() -> None:
    # RFC 9162 verification hashes identically for (index 0, size 3) and (0, 4), so a
    # size-3 proof also "verifies" as size 4 against the size-3 root: a checkpoint,
    # not the proof, is what binds a root to its size.
    store = MemorySubtrees(RFC_LEAVES)
    assert inclusion_shape(0, 3) == inclusion_shape(0, 4)
    proof, tree_root = inclusion_proof(0, 3, store), root(3, store)
    verify_inclusion(RFC_LEAVES[0], 0, 4, proof, tree_root)
    with pytest.raises(ProofError):
        verify_inclusion(RFC_LEAVES[0], 0, 5, proof, tree_root)
    assert consistency_shape(1, 3) == consistency_shape(1, 4)
    verify_consistency(1, 4, root(1, store), tree_root, consistency_proof(1, 3, store))


def test_completed_subtrees_reads_only_the_frontier() -> None:
    leaves = make_leaves(13, 7)
    store = MemorySubtrees(leaves[:11])
    reads: list[tuple[int, int]] = []

    class Recording:
        def subtree(self, level: int, index: int) -> bytes:
            reads.append((level, index))
            return store.subtree(level, index)

    rows = completed_subtrees(11, leaves[11:], Recording())
    assert reads == [(3, 0), (1, 4), (0, 10)]  # 11 = 8 + 2 + 1
    assert [(level, i) for level, i, _ in rows] == [(0, 11), (1, 5), (2, 2), (0, 12)]
    assert rows[2][2] == reference_root(leaves[8:12])


def test_bad_arguments_are_refused() -> None:
    store = MemorySubtrees(make_leaves(5, 1))
    with pytest.raises(ValueError):
        completed_subtrees(5, [b"short"], store)
    with pytest.raises(ValueError):
        inclusion_proof(5, 5, store)
    with pytest.raises(ValueError):
        consistency_proof(4, 3, store)
    with pytest.raises(LookupError):  # the store holds 5 leaves, not 6
        root(6, store)
