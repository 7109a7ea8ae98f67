"""Text normalisation shared by the span index and the span finder."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from attribution.normalise import normalise, normalise_bytes, word_bounds


def test_nfkc_folds_compatibility_forms() -> None:
    assert normalise("ﬁne ＡＢＣ ①") == "fine abc 1"


def test_casefold_is_stronger_than_lower() -> None:
    assert normalise("Straße ΣΊΣΥΦΟΣ") == "strasse σίσυφοσ"


def test_whitespace_runs_become_one_space_and_ends_are_stripped() -> None:
    assert normalise(" \t a\u00a0\u2003 b\n\r\n c \u3000") == "a b c"


def test_empty_and_blank_texts_normalise_to_nothing() -> None:
    assert normalise("") == ""
    assert normalise(" \n\t\u2028") == ""
    assert normalise_bytes("\u00a0") == b""


def test_normalised_bytes_are_utf8() -> None:
    assert normalise_bytes("Ça VA") == "ça va".encode()


def test_lone_surrogate_does_not_fail() -> None:
    assert normalise_bytes("a\ud800b") == b"a?b"


def test_word_bounds_slice_the_words() -> None:
    data = normalise_bytes("The cat, sat.")
    assert [data[s:e] for s, e in word_bounds(data)] == [b"the", b"cat,", b"sat."]
    assert word_bounds(b"") == []
    assert word_bounds(b"x") == [(0, 1)]


@given(st.text())
def test_normalise_is_idempotent(text: str) -> None:
    once = normalise(text)
    assert normalise(once) == once


@given(st.text())
def test_words_are_single_space_separated(text: str) -> None:
    data = normalise_bytes(text)
    assert b"  " not in data
    assert not data.startswith(b" ") and not data.endswith(b" ")
    bounds = word_bounds(data)
    assert [data[s:e] for s, e in bounds] == (data.split(b" ") if data else [])
    assert all(data[s:e] and b" " not in data[s:e] for s, e in bounds)
