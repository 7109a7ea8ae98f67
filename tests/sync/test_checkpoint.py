"""Signed checkpoints: round trips, strict decoding, signatures, consistency of pairs."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from attribution import canonical
from attribution.receipt import SIGNATURE_DOMAIN as RECEIPT_DOMAIN
from sync.checkpoint import (
    SIGNATURE_DOMAIN,
    Checkpoint,
    CheckpointError,
    SignedCheckpoint,
    consistent,
)
from sync.merkle import EMPTY_ROOT, MemorySubtrees, consistency_proof, leaf_hash

KEY = SigningKey(hashlib.sha256(b"checkpoint-test-key").digest())
OTHER = SigningKey(hashlib.sha256(b"another-key").digest())
ORIGIN = bytes(KEY.verify_key)


def signed(size: int = 5, root: bytes = bytes(range(32)), ts: int = 1_700_000_000_000,
           key: SigningKey = KEY) -> SignedCheckpoint:
    return Checkpoint(bytes(key.verify_key), size, root, ts).sign(key)


def wire(cp: SignedCheckpoint) -> dict[str, Any]:
    return {**cp.checkpoint.to_wire(), "sig": cp.sig}


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), size=st.integers(1, 2**64 - 1),
       root=st.binary(min_size=32, max_size=32), ts=st.integers(0, 2**64 - 1))
def test_sign_encode_decode_verify_round_trip(seed: bytes, size: int, root: bytes,
                                              ts: int) -> None:
    key = SigningKey(seed)
    cp = Checkpoint(bytes(key.verify_key), size, root, ts)
    sc = cp.sign(key)
    sc.verify()
    assert SignedCheckpoint.decode(sc.encode()) == sc
    assert SignedCheckpoint.from_json(sc.to_json()) == sc
    assert key.verify_key.verify(SIGNATURE_DOMAIN + canonical.encode(
        {"origin": cp.origin, "size": size, "root": root, "ts": ts}), sc.sig)
    assert cp.canonical_bytes() == canonical.encode(cp.to_wire())


def test_json_view_is_hex() -> None:
    sc = signed()
    assert sc.to_json() == {"origin": ORIGIN.hex(), "size": 5, "root": bytes(range(32)).hex(),
                            "ts": 1_700_000_000_000, "sig": sc.sig.hex()}
    upper = {**sc.to_json(), "root": bytes(range(32)).hex().upper()}
    for bad in (upper, {**sc.to_json(), "root": "zz"}, {**sc.to_json(), "extra": 1},
                {k: v for k, v in sc.to_json().items() if k != "ts"}, [1, 2]):
        with pytest.raises(CheckpointError):
            SignedCheckpoint.from_json(bad)


def test_every_bit_flip_is_rejected() -> None:
    sc = signed()
    encoded = sc.encode()
    for position in range(len(encoded)):
        for bit in range(8):
            tampered = bytearray(encoded)
            tampered[position] ^= 1 << bit
            with pytest.raises(CheckpointError):
                SignedCheckpoint.decode(bytes(tampered)).verify()


def test_signature_is_bound_to_origin_and_domain() -> None:
    cp = signed().checkpoint
    with pytest.raises(CheckpointError):  # a key that is not the origin cannot sign
        cp.sign(OTHER)
    forged = [
        OTHER.sign(cp.signing_bytes()).signature,  # another key
        KEY.sign(cp.canonical_bytes()).signature,  # no domain
        KEY.sign(RECEIPT_DOMAIN + cp.canonical_bytes()).signature,  # the receipt domain
    ]
    for sig in forged:
        with pytest.raises(CheckpointError):
            SignedCheckpoint(cp, sig).verify()
    with pytest.raises(CheckpointError):  # not a point on the curve at all
        SignedCheckpoint(Checkpoint(bytes(32), 5, bytes(32), 0), bytes(64)).verify()


def test_non_canonical_and_malformed_encodings_are_rejected() -> None:
    good = wire(signed())
    unsorted = dict(reversed(list(good.items())))
    long_int = msgpack.packb(good, use_bin_type=True).replace(
        b"\xa4size\x05", b"\xa4size\xcf" + (5).to_bytes(8, "big"))
    cases = [
        msgpack.packb(unsorted, use_bin_type=True),  # keys out of order
        long_int,  # size not in its shortest form
        msgpack.packb(good, use_bin_type=False),  # bytes as str
        canonical.encode(good) + b"\x00",  # trailing bytes
        canonical.encode(good)[:-1],  # truncated
        canonical.encode({**good, "extra": 1}),
        canonical.encode({k: v for k, v in good.items() if k != "ts"}),
        canonical.encode(list(good.values())),
        canonical.encode({**good, "size": True}),
        canonical.encode({**good, "size": -1}),
        canonical.encode({**good, "ts": "now"}),
        canonical.encode({**good, "root": good["root"][:31]}),
        canonical.encode({**good, "origin": good["origin"] + b"\x00"}),
        canonical.encode({**good, "sig": good["sig"][:63]}),
        canonical.encode({**good, "size": 0}),  # empty log, non-empty root
        b"",
        b"\xc1",
    ]
    assert SignedCheckpoint.decode(canonical.encode(good)) == signed()
    for data in cases:
        with pytest.raises(CheckpointError):
            SignedCheckpoint.decode(data)


def test_checkpoint_fields_are_validated() -> None:
    for args in [(ORIGIN[:31], 1, bytes(32), 0), (ORIGIN, -1, bytes(32), 0),
                 (ORIGIN, 2**64, bytes(32), 0), (ORIGIN, 1, bytes(33), 0),
                 (ORIGIN, 1, bytes(32), -5), (ORIGIN, 0, bytes(32), 0)]:
        with pytest.raises(CheckpointError):
            Checkpoint(*args)
    assert Checkpoint(ORIGIN, 0, EMPTY_ROOT, 0).size == 0


def log_checkpoints(leaves: list[bytes], key: SigningKey = KEY) -> tuple[
        MemorySubtrees, list[SignedCheckpoint]]:
    """A log and a signed checkpoint at every size 0..len(leaves)."""
    store = MemorySubtrees()
    checkpoints = [Checkpoint(bytes(key.verify_key), 0, EMPTY_ROOT, 0).sign(key)]
    for i, leaf in enumerate(leaves):
        new_root = store.append([leaf])
        checkpoints.append(Checkpoint(bytes(key.verify_key), i + 1, new_root, i + 1).sign(key))
    return store, checkpoints


def test_consistency_of_checkpoint_pairs() -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(20)]
    store, cps = log_checkpoints(leaves)
    for a in cps:
        for b in cps[a.checkpoint.size:]:
            proof = consistency_proof(a.checkpoint.size, b.checkpoint.size, store)
            assert consistent(a, b, proof)
            assert consistent(a.checkpoint, b.checkpoint, proof)
    # Shrinking is never consistent, even with the proof of the growing pair.
    assert not consistent(cps[12], cps[7], consistency_proof(7, 12, store))
    assert not consistent(cps[3], cps[0], [])
    # A proof for other sizes, or a tampered proof, does not pass.
    assert not consistent(cps[5], cps[9], consistency_proof(5, 10, store))
    assert not consistent(cps[0], cps[9], consistency_proof(3, 9, store))
    # Equal sizes: same root and no proof only.
    assert consistent(cps[6], cps[6], [])
    assert not consistent(cps[6], cps[6], [cps[6].checkpoint.root])
    other_root = Checkpoint(ORIGIN, 6, cps[7].checkpoint.root, 6).sign(KEY)
    assert not consistent(cps[6], other_root, [])


def test_a_forked_log_is_inconsistent() -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(20)]
    forked = [*leaves[:9], leaf_hash(b"fork"), *leaves[10:]]
    store, cps = log_checkpoints(leaves)
    fork_store, fork_cps = log_checkpoints(forked)
    for first in (10, 11, 13):
        for second in (13, 16, 20):
            if first > second:
                continue
            # Both proofs the forked log could offer fail against the honest checkpoint.
            assert not consistent(cps[first], fork_cps[second],
                                  consistency_proof(first, second, fork_store))
            assert not consistent(cps[first], fork_cps[second],
                                  consistency_proof(first, second, store))
    # The first 9 leaves, before the fork, are the same in both logs.
    assert consistent(cps[9], fork_cps[20], consistency_proof(9, 20, fork_store))


def test_pairs_of_different_origins_are_refused() -> None:
    _, mine = log_checkpoints([leaf_hash(b"a")])
    _, theirs = log_checkpoints([leaf_hash(b"a")], OTHER)
    with pytest.raises(CheckpointError):
        consistent(mine[1], theirs[1], [])
