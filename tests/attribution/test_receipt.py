"""Receipt v1: signing, verification, ids, and rejection of anything altered."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from attribution import canonical
from attribution.payees import PPM, ROLES, Payee, Role, split_ppm
from attribution.receipt import (
    SIGNATURE_DOMAIN,
    ZERO_HASH,
    AttributionRef,
    InvalidReceipt,
    ModelRef,
    ReceiptDraft,
    SignedReceipt,
    leaf_hash,
    verify_receipt,
)
from tests.support.receipt_factory import digest, key_from, make_draft

hashes = st.binary(min_size=32, max_size=32)
counts = st.integers(min_value=0, max_value=2**63)
roles: st.SearchStrategy[Role] = st.sampled_from(ROLES)
payee_lists = st.lists(
    st.tuples(st.text(min_size=1, max_size=12), roles, st.integers(min_value=1, max_value=10**9)),
    min_size=1, max_size=6,
).map(split_ppm)
drafts = st.builds(
    ReceiptDraft,
    ts=counts,
    model=st.builds(ModelRef, name=st.text(max_size=40), weights=hashes, manifest=hashes,
                    adapter=st.none() | hashes),
    kind=st.sampled_from(["chat", "completion", "embedding", "predict"]),
    input_commitment=hashes,
    output_commitment=hashes,
    input_units=counts,
    output_units=counts,
    fee=counts,
    payees=payee_lists,
    attr=st.builds(AttributionRef, method=st.sampled_from(["owner/1", "spans/1", "knn/1"]),
                   params=hashes, evidence=hashes),
)
keys = hashes.map(SigningKey)


def sign_fields(key: SigningKey, fields: dict[str, Any]) -> bytes:
    """Sign arbitrary fields exactly as finalise does, bypassing its checks."""
    signature = key.sign(SIGNATURE_DOMAIN + canonical.encode(fields)).signature
    return canonical.encode({**fields, "sig": signature})


def unsigned_fields(receipt: SignedReceipt) -> dict[str, Any]:
    return {k: v for k, v in receipt.fields.items() if k != "sig"}


def flip(data: bytes, position: int, bit: int) -> bytes:
    altered = bytearray(data)
    altered[position] ^= 1 << bit
    return bytes(altered)


@pytest.fixture
def node_key() -> SigningKey:
    return key_from("receipt-tests")


def test_sign_and_verify_round_trip(node_key: SigningKey) -> None:
    draft = make_draft(3)
    receipt = draft.finalise(node_key, 0, ZERO_HASH)
    verified = verify_receipt(receipt.raw)
    assert verified.raw == receipt.raw
    assert verified.fields == receipt.fields
    assert verified.seq == 0 and verified.prev == ZERO_HASH
    assert verified.node == bytes(node_key.verify_key)
    assert verified.fields["in"] == draft.input_commitment
    assert verified.fields["payees"] == [list(p.to_wire()) for p in draft.payees]
    assert sum(p[2] for p in verified.fields["payees"]) == PPM
    # The same draft at the same place always gives the same bytes.
    assert draft.finalise(node_key, 0, ZERO_HASH).raw == receipt.raw


@given(drafts, keys, counts, hashes)
def test_any_valid_draft_round_trips(draft: ReceiptDraft, key: SigningKey, seq: int,
                                     prev: bytes) -> None:
    receipt = draft.finalise(key, seq, ZERO_HASH if seq == 0 else prev)
    assert verify_receipt(receipt.raw).fields == receipt.fields


def test_every_single_bit_flip_is_rejected(node_key: SigningKey) -> None:
    raw = make_draft(11).finalise(node_key, 42, digest("prev")).raw
    for position in range(len(raw)):
        for bit in range(8):
            with pytest.raises(InvalidReceipt):
                verify_receipt(flip(raw, position, bit))


@settings(max_examples=200)
@given(drafts, keys, counts, hashes, st.data())
def test_random_bit_flips_are_rejected(draft: ReceiptDraft, key: SigningKey, seq: int,
                                       prev: bytes, data: st.DataObject) -> None:
    raw = draft.finalise(key, seq, ZERO_HASH if seq == 0 else prev).raw
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    with pytest.raises(InvalidReceipt):
        verify_receipt(flip(raw, position, bit))


@given(st.binary(max_size=700))
def test_arbitrary_bytes_raise_only_invalid_receipt(data: bytes) -> None:
    with pytest.raises(InvalidReceipt):
        verify_receipt(data)


def test_hostile_nesting_raises_invalid_receipt() -> None:
    for depth in (100, 600, 1000, 5000):
        with pytest.raises(InvalidReceipt):
            verify_receipt(b"\x91" * depth + b"\x90")


def test_leaf_is_sha256_of_zero_byte_and_raw(node_key: SigningKey) -> None:
    receipt = make_draft().finalise(node_key, 0, ZERO_HASH)
    expected = hashlib.sha256(b"\x00" + receipt.raw).digest()
    assert receipt.leaf == expected == leaf_hash(receipt.raw)
    assert receipt.leaf != hashlib.sha256(receipt.raw).digest()


def test_json_view(node_key: SigningKey) -> None:
    receipt = make_draft(5).finalise(node_key, 0, ZERO_HASH)
    view = receipt.to_json()
    assert view["id"] == receipt.leaf.hex()
    assert view["node"] == bytes(node_key.verify_key).hex()
    assert view["prev"] == "00" * 32
    assert view["sig"] == receipt.fields["sig"].hex()
    assert view["model"]["weights"] == digest("weights").hex()
    assert view["seq"] == 0 and view["fee"] == 50 and view["v"] == 1
    assert view["usage"] == {"in": 5, "out": 35}
    assert view["payees"] == [list(p.to_wire()) for p in make_draft(5).payees]
    # Plain JSON all the way down.
    assert json.loads(json.dumps(view)) == view


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_wrong_field_set_is_rejected_even_when_signed(node_key: SigningKey, change: str) -> None:
    fields = unsigned_fields(make_draft().finalise(node_key, 0, ZERO_HASH))
    if change == "extra":
        fields["note"] = "hello"
    else:
        del fields["fee"]
    with pytest.raises(InvalidReceipt, match="wrong set of fields"):
        verify_receipt(sign_fields(node_key, fields))


def test_payees_must_sum_to_one_million(node_key: SigningKey) -> None:
    short = (Payee("owner", "owner", PPM - 1),)
    with pytest.raises(InvalidReceipt, match="sum"):
        make_draft(payees=short).finalise(node_key, 0, ZERO_HASH)
    fields = unsigned_fields(make_draft().finalise(node_key, 0, ZERO_HASH))
    fields["payees"] = [["owner", "owner", 600_000], ["op", "operator", 400_001]]
    with pytest.raises(InvalidReceipt, match="sum"):
        verify_receipt(sign_fields(node_key, fields))


@pytest.mark.parametrize(("field", "value"), [
    ("v", 2), ("seq", -1), ("prev", b"short"), ("kind", "train"), ("in", b"x" * 31),
    ("fee", True), ("ts", "now"), ("usage", {"in": 1}),
    ("payees", []), ("payees", [["a", "boss", PPM]]),
    ("model", {"name": "m", "weights": b"w"}), ("attr", {"method": "owner/1"}),
])
def test_malformed_fields_are_rejected_even_when_signed(node_key: SigningKey, field: str,
                                                       value: Any) -> None:
    fields = unsigned_fields(make_draft().finalise(node_key, 1, digest("prev")))
    fields[field] = value
    with pytest.raises(InvalidReceipt):
        verify_receipt(sign_fields(node_key, fields))


def test_seq_zero_needs_the_zero_prev(node_key: SigningKey) -> None:
    with pytest.raises(InvalidReceipt, match="zero prev"):
        make_draft().finalise(node_key, 0, digest("prev"))


def test_signature_by_another_key_is_rejected(node_key: SigningKey) -> None:
    fields = unsigned_fields(make_draft().finalise(node_key, 0, ZERO_HASH))
    with pytest.raises(InvalidReceipt, match="bad signature"):
        verify_receipt(sign_fields(key_from("impostor"), fields))


def test_signature_is_domain_separated(node_key: SigningKey) -> None:
    fields = unsigned_fields(make_draft().finalise(node_key, 0, ZERO_HASH))
    bare = node_key.sign(canonical.encode(fields)).signature  # no domain prefix
    with pytest.raises(InvalidReceipt, match="bad signature"):
        verify_receipt(canonical.encode({**fields, "sig": bare}))


def test_receipt_holds_only_commitments(node_key: SigningKey) -> None:
    receipt = make_draft(9).finalise(node_key, 0, ZERO_HASH)
    assert set(receipt.fields) == {"v", "node", "seq", "prev", "ts", "model", "kind", "in",
                                   "out", "usage", "fee", "payees", "attr", "sig"}
    assert len(receipt.fields["in"]) == len(receipt.fields["out"]) == 32
