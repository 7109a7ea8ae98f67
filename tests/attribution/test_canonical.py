"""Canonical msgpack: one value, one byte form; anything else is rejected."""

from __future__ import annotations

import random
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attribution import canonical
from attribution.canonical import CanonicalError

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=UINT64_MAX)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also tells True from 1 and bytes from str."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def sort_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: sort_keys(value[k]) for k in sorted(value, key=lambda k: k.encode())}
    if isinstance(value, list):
        return [sort_keys(item) for item in value]
    return value


@given(values)
def test_round_trip(value: Any) -> None:
    data = canonical.encode(value)
    decoded = canonical.decode(data)
    assert same(decoded, sort_keys(value))
    assert canonical.encode(decoded) == data


@given(st.dictionaries(st.text(max_size=6), values, min_size=2, max_size=8), st.randoms())
def test_key_order_does_not_change_the_bytes(mapping: dict[str, Any], rnd: random.Random) -> None:
    items = list(mapping.items())
    rnd.shuffle(items)
    assert canonical.encode(dict(items)) == canonical.encode(mapping)
    assert canonical.encode({"outer": dict(reversed(items))}) == canonical.encode(
        {"outer": mapping})


def test_keys_sort_by_utf8_bytes() -> None:
    # "é" (0xc3 0xa9) sorts after "z" by bytes; "B" before "a".
    assert list(canonical.decode(canonical.encode({"é": 1, "z": 2, "a": 3, "B": 4}))) == [
        "B", "a", "z", "é"]


def test_tuples_encode_as_lists() -> None:
    assert canonical.encode((1, "a", b"b")) == canonical.encode([1, "a", b"b"])


def test_integers_use_the_shortest_form() -> None:
    assert canonical.encode(5) == b"\x05"
    assert canonical.encode(-1) == b"\xff"
    assert canonical.encode(200) == b"\xcc\xc8"
    assert canonical.encode(UINT64_MAX) == b"\xcf" + b"\xff" * 8


@pytest.mark.parametrize("value", [
    1.5, 0.0, float("nan"), [1, 2.5], {"a": {"b": [0.1]}},
])
def test_floats_are_rejected(value: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical.encode(value)


@pytest.mark.parametrize("value", [
    {1: "a"}, {b"k": 1}, {None: 1}, {(1, 2): 3}, {"ok": {2: 3}}, [{"a": 1, 5: 2}],
])
def test_non_string_keys_are_rejected(value: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical.encode(value)


@pytest.mark.parametrize("value", [
    2**64, INT64_MIN - 1, {1.5}, object(), bytearray(b"x"), "\ud800", {"\udfff": 1},
])
def test_values_without_a_canonical_form_are_rejected(value: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical.encode(value)


@pytest.mark.parametrize("data", [
    pytest.param(b"\x82\xa1b\x01\xa1a\x02", id="unsorted-keys"),
    pytest.param(b"\x82\xa1a\x01\xa1a\x02", id="duplicate-keys"),
    pytest.param(b"\xcc\x05", id="uint8-for-fixint"),
    pytest.param(b"\xcd\x00\x01", id="uint16-for-fixint"),
    pytest.param(b"\xd0\x05", id="int8-for-positive"),
    pytest.param(b"\xd1\xff\xff", id="int16-for-minus-one"),
    pytest.param(b"\xcf" + bytes(7) + b"\x01", id="uint64-for-one"),
    pytest.param(b"\xd9\x01a", id="str8-for-fixstr"),
    pytest.param(b"\xc5\x00\x01x", id="bin16-for-bin8"),
    pytest.param(b"\xdc\x00\x00", id="array16-for-fixarray"),
    pytest.param(b"\xde\x00\x00", id="map16-for-fixmap"),
    pytest.param(b"\xcb" + bytes(8), id="float64"),
    pytest.param(b"\xca" + bytes(4), id="float32"),
    pytest.param(b"\x81\x01\x02", id="int-key"),
    pytest.param(b"\x81\xc4\x01k\x01", id="bin-key"),
    pytest.param(b"\xa1\xff", id="invalid-utf8"),
    pytest.param(b"\xd4\x01\x00", id="ext-type"),
    pytest.param(b"\xd6\xff\x00\x00\x00\x00", id="timestamp-ext"),
    pytest.param(b"\x01\x02", id="trailing-byte"),
    pytest.param(b"\x92\x01", id="truncated"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="never-used-byte"),
    pytest.param(b"\x91" * 100 + b"\x90", id="deeply-nested"),
    pytest.param(b"\x91" * 700 + b"\x90", id="nested-past-the-packer-limit"),
])
def test_non_canonical_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(CanonicalError):
        canonical.decode(data)


@given(values, st.binary(min_size=1, max_size=4))
def test_trailing_bytes_are_rejected(value: Any, trailer: bytes) -> None:
    with pytest.raises(CanonicalError):
        canonical.decode(canonical.encode(value) + trailer)


@given(st.integers(min_value=INT64_MIN, max_value=UINT64_MAX))
def test_wider_integer_encodings_are_rejected(number: int) -> None:
    canonical_bytes = canonical.encode(number)
    wider = []
    for fmt, code in ((">Q", 0xCF), (">q", 0xD3)):
        try:
            wider.append(bytes([code]) + struct.pack(fmt, number))
        except struct.error:  # out of that format's range
            continue
    assert wider  # every 64-bit integer fits one of the two
    for candidate in wider:
        if candidate != canonical_bytes:
            with pytest.raises(CanonicalError):
                canonical.decode(candidate)


@given(st.binary(max_size=64))
def test_decode_accepts_only_its_own_encodings(data: bytes) -> None:
    try:
        value = canonical.decode(data)
    except CanonicalError:
        return
    assert canonical.encode(value) == data


@given(values)
def test_unsorted_maps_from_plain_msgpack_are_rejected(value: Any) -> None:
    mapping = {"b": value, "a": 1}  # insertion order is not sorted
    with pytest.raises(CanonicalError):
        canonical.decode(msgpack.packb(mapping, use_bin_type=True))
