"""Proof bundles: valid ones verify offline; any tampering is rejected."""

from __future__ import annotations

import dataclasses

import pytest
from nacl.signing import SigningKey

from sync import merkle
from sync.bundle import BundleError, ProofBundle, verify_bundle
from sync.checkpoint import Checkpoint
from tests.support.receipt_factory import make_chain


@pytest.fixture
def bundle_and_key() -> tuple[ProofBundle, bytes]:
    key = SigningKey.generate()
    raws = [receipt.raw for receipt in make_chain(key, 7)]
    leaves = [merkle.leaf_hash(raw) for raw in raws]
    checkpoint = Checkpoint(bytes(key.verify_key), 7, merkle.reference_root(leaves), 1).sign(key)
    bundle = ProofBundle(raws[3], 3, checkpoint, merkle.reference_inclusion_proof(3, leaves))
    return bundle, bytes(key.verify_key)


def test_a_valid_bundle_verifies_and_survives_json(bundle_and_key: tuple[ProofBundle, bytes]
                                                   ) -> None:
    bundle, key = bundle_and_key
    assert verify_bundle(ProofBundle.from_json(bundle.to_json()), key).seq == 3


def test_tampering_is_rejected(bundle_and_key: tuple[ProofBundle, bytes]) -> None:
    bundle, key = bundle_and_key
    flipped = bytearray(bundle.receipt)
    flipped[40] ^= 1
    tampered = [
        dataclasses.replace(bundle, receipt=bytes(flipped)),
        dataclasses.replace(bundle, seq=2),
        dataclasses.replace(bundle, proof=bundle.proof[:-1]),
        dataclasses.replace(bundle, proof=[bytes(32)] + bundle.proof[1:]),
    ]
    for bad in tampered:
        with pytest.raises(BundleError):
            verify_bundle(bad, key)
    with pytest.raises(BundleError):
        verify_bundle(bundle, bytes(SigningKey.generate().verify_key))  # another node's key
    with pytest.raises(BundleError):
        ProofBundle.from_json({"version": 1, "receipt": "!!", "seq": 0})
