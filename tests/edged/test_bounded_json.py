"""JSON nesting is bounded whatever the interpreter's recursion limit is."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from edged import bounded_json
from edged.bounded_json import MAX_DEPTH, TooDeep, loads, nesting_depth


@pytest.fixture
def raised_recursion_limit() -> Iterator[None]:
    """What importing web3 (through py_ecc) does to the whole process."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


@pytest.mark.usefixtures("raised_recursion_limit")
def test_deep_nesting_is_refused_even_with_a_raised_recursion_limit() -> None:
    for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
        deep = opener * 50_000 + b"1" + closer * 50_000
        with pytest.raises(TooDeep):
            loads(deep)
        just_allowed = opener * MAX_DEPTH + b"1" + closer * MAX_DEPTH
        assert loads(just_allowed) is not None
        with pytest.raises(TooDeep):
            loads(opener * (MAX_DEPTH + 1) + b"1" + closer * (MAX_DEPTH + 1))


def test_brackets_inside_strings_do_not_count() -> None:
    text = '{"text": "' + "[" * 5000 + '\\" ]]] {{{ \\\\", "n": [[1]]}'
    assert nesting_depth(text.encode()) == 3
    assert loads(text)["n"] == [[1]]
    assert loads(b"[" + b'"[[[", ' * 300 + b"1]") [-1] == 1


def test_nan_and_infinity_are_not_json() -> None:
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        with pytest.raises(ValueError):
            bounded_json.loads(b'{"x": ' + constant + b"}")
