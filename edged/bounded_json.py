"""JSON from outside the node, parsed with its nesting bounded.

Python's JSON parser recurses once per level of nesting and relies on the interpreter's
recursion limit to stop. That limit is process-wide, and a library may raise it (py_ecc,
which web3 imports, sets 100000): the C parser would then overflow the thread's stack on
a small body of nested brackets. So nesting is measured before parsing, and anything
deeper than :data:`MAX_DEPTH` is refused as malformed, whatever the limit is.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 200
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")


class TooDeep(ValueError):
    """The document nests deeper than :data:`MAX_DEPTH`."""


def loads(raw: bytes | bytearray | str) -> Any:
    """``json.loads`` that refuses NaN/Infinity and nesting deeper than :data:`MAX_DEPTH`
    (both as ``ValueError``)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    # Fast path: a document with few brackets cannot nest deeply.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and nesting_depth(data) > MAX_DEPTH:
        raise TooDeep(f"JSON nested deeper than {MAX_DEPTH} levels")
    return json.loads(raw, parse_constant=_reject_constant)


def nesting_depth(data: bytes | bytearray) -> int:
    """The deepest nesting of arrays and objects in ``data`` (brackets in strings aside)."""
    depth = deepest = 0
    for byte in _STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if byte in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; Python's parser accepts them unless told not to."""
    raise ValueError(f"{name} is not valid JSON")
