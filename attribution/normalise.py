"""Text normalisation shared by the span index (corpus side) and the span finder (outputs).

Both sides must normalise identically, or a verbatim reuse would not match:

1. Unicode NFKC, then ``casefold``, then NFKC again (casefolding can produce
   sequences that are not NFKC-normal; the second pass makes the function
   idempotent);
2. every run of whitespace (``str.split`` semantics) becomes one ASCII space;
   leading and trailing whitespace is dropped;
3. the result is handled as UTF-8 bytes from then on.

Words are the space-separated runs of the normalised text: punctuation stays
part of the word it touches (``"dog."`` and ``"dog"`` are different words).
This keeps word boundaries a pure byte test (a word starts at offset 0 or after
a space), identical for the corpus and for outputs, and never splits inside a
multi-byte character. The cost is that a span whose last word carries different
punctuation in the corpus loses that one word, which at the default minimum of
five words barely moves the weights.
"""

from __future__ import annotations

import unicodedata

SPACE = 0x20


def normalise(text: str) -> str:
    """Return ``text`` normalised (NFKC, casefold, whitespace runs -> one space, stripped)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    # str.split() with no argument splits on every Unicode whitespace run and drops
    # leading/trailing whitespace in one pass.
    return " ".join(folded.split())


def normalise_bytes(text: str) -> bytes:
    """``normalise(text)`` as UTF-8 bytes.

    Lone surrogates (which have no UTF-8 form) become ``?`` rather than failing
    a whole inference.
    """
    return normalise(text).encode("utf-8", errors="replace")


def word_bounds(data: bytes) -> list[tuple[int, int]]:
    """Byte ``(start, end)`` of every word of normalised ``data``, in order.

    ``data`` must already be normalised (single spaces, no leading or trailing
    space). ``data[start:end]`` is the word; spans snapped to words start at
    some ``start`` and end at some ``end``.
    """
    bounds: list[tuple[int, int]] = []
    start = 0
    size = len(data)
    while start < size:
        end = data.find(b" ", start)
        if end < 0:
            end = size
        bounds.append((start, end))
        start = end + 1
    return bounds
