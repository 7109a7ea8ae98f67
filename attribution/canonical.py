"""Canonical msgpack: the same value always encodes to the same bytes.

Rules: map keys are strings, sorted by their UTF-8 bytes; integers take their
shortest form (msgpack does this already); strings are str, bytes are bin; no
floats (weights are integer parts-per-million), no other types. Decoding is
strict: bytes that are not the canonical encoding of what they decode to are
rejected, so one receipt has exactly one byte form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
# Far below both Python's recursion limit and msgpack's packer limit (511), so
# hostile input nested deeper is a CanonicalError, never a RecursionError or a
# bare ValueError escaping verify_receipt. Receipts nest three levels deep.
MAX_DEPTH = 64


class CanonicalError(ValueError):
    """The value cannot be encoded canonically, or the bytes are not canonical."""


def _normalise(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise CanonicalError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise CanonicalError("integer out of the 64-bit range")
        return value
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, list | tuple):
        return [_normalise(item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise CanonicalError("map keys must be strings")
        ordered = sorted(value, key=lambda key: key.encode("utf-8"))
        return {key: _normalise(value[key], depth + 1) for key in ordered}
    raise CanonicalError(f"type {type(value).__name__} has no canonical encoding")


def encode(value: Any) -> bytes:
    """Encode ``value`` canonically."""
    try:
        packed: bytes = msgpack.packb(_normalise(value), use_bin_type=True)
    except UnicodeEncodeError:
        # A str holding a lone surrogate has no UTF-8 form (raised by the key sort or packb).
        raise CanonicalError("strings must be encodable as UTF-8") from None
    return packed


def decode(data: bytes) -> Any:
    """Decode canonical bytes; raise :class:`CanonicalError` for anything else."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise CanonicalError(f"not valid msgpack: {exc}") from None
    if encode(value) != data:
        raise CanonicalError("not the canonical encoding")
    return value
