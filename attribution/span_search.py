"""The span search of ``spans/1``: maximal word-aligned matches of one output.

Used by ``attribution.spans``; separate only to keep modules short.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from attribution.span_hashing import word_window_hashes
from attribution.span_index import Segment

_SPACE = 0x20


def excluded_documents(segment: Segment, excluded: frozenset[str]) -> npt.NDArray[np.bool_] | None:
    """Per document, whether it is left out (True), or None when none is.

    A document is left out when its contributor is excluded, and also when it is a
    near-duplicate of an excluded contributor's document (a copy of withdrawn
    content earns nobody anything, and compaction drops it with the original).
    """
    if not excluded:
        return None
    by_contributor = np.array([name in excluded for name in segment.info.contributors],
                              dtype=bool)
    copies = [index for index, name in segment.duplicate_of.items() if name in excluded]
    if not by_contributor.any() and not copies:
        return None
    mask = by_contributor[segment.doc_contributor]
    mask[copies] = True
    return mask


class OutputSearch:
    """One output against a set of segments, with exclusions applied.

    ``tags`` (one per segment, default its position) travel with the segments
    that remain, in ``self.tags``: the caller uses them to know which datanet a
    segment belongs to.
    """

    def __init__(
        self, padded: bytes, segments: Sequence[Segment], excluded: frozenset[str],
        tags: Sequence[int] | None = None,
    ) -> None:
        self.padded = padded
        self.spaces_array = np.flatnonzero(np.frombuffer(padded, dtype=np.uint8) == _SPACE)
        self.spaces: list[int] = self.spaces_array.tolist()
        self.words = len(self.spaces) - 1
        # Per segment: a mask over its documents (True = excluded), or None if it
        # excludes nothing. Segments whose every document is excluded drop out.
        self.segments: list[tuple[Segment, npt.NDArray[np.bool_] | None]] = []
        self.tags: list[int] = []
        for position, segment in enumerate(segments):
            mask = excluded_documents(segment, excluded)
            if mask is None or not mask.all():
                self.segments.append((segment, mask))
                self.tags.append(position if tags is None else tags[position])

    def pattern(self, first: int, stop: int) -> bytes:
        """Padded bytes of words ``first..stop-1``."""
        return self.padded[self.spaces[first] : self.spaces[stop] + 1]

    def candidates(self, min_words: int) -> list[int]:
        """Starts that may begin a span of ``min_words`` words (a superset, via shingles)."""
        last = self.words - min_words  # later starts cannot fit min_words words
        if last < 0:
            return []
        found = np.zeros(last + 1, dtype=bool)
        hashes: dict[int, npt.NDArray[np.uint64]] = {}
        for segment, _mask in self.segments:
            width = segment.info.shingle_words
            if width > min_words:
                return list(range(last + 1))  # this segment has no usable pre-filter
            if width not in hashes:
                hashes[width] = word_window_hashes(self.padded, self.spaces_array, width)
            found |= segment.shingles_present(hashes[width])[: last + 1]
        starts: list[int] = np.flatnonzero(found).tolist()
        return starts

    def occurs(self, first: int, stop: int) -> bool:
        """Whether words ``first..stop-1`` occur in a document of a non-excluded contributor."""
        pattern = self.pattern(first, stop)
        for segment, mask in self.segments:
            if mask is None:
                if segment.contains(pattern):
                    return True
            elif occurs_outside(segment, mask, *segment.suffix_range(pattern)):
                return True
        return False

    def extent(self, first: int, limit: int) -> int:
        """``E(first)``: the end (exclusive word index) of the longest match from ``first``.

        ``limit`` is a word index no match can pass; it keeps the compared
        slices short for long outputs.
        """
        spaces = self.spaces
        query = self.padded[spaces[first] : spaces[min(limit, self.words)] + 1]
        best = first
        for segment, mask in self.segments:
            matched = segment.longest_prefix(query)
            # Last word stop whose closing space is inside the matched bytes.
            stop = bisect_right(spaces, spaces[first] + matched - 1) - 1
            if stop <= best:
                continue
            if mask is not None:
                stop = self._extent_outside(segment, mask, first, best, stop)
            best = max(best, stop)
        return best

    def _extent_outside(
        self, segment: Segment, mask: npt.NDArray[np.bool_], first: int, low: int, high: int
    ) -> int:
        """Largest stop in ``low..high`` whose words occur outside excluded documents."""

        def holds(stop: int) -> bool:
            return occurs_outside(segment, mask, *segment.suffix_range(self.pattern(first, stop)))

        if holds(high):
            return high
        while high - low > 1:  # holds(low) is known (or irrelevant: low is already the best)
            middle = (low + high) >> 1
            if holds(middle):
                low = middle
            else:
                high = middle
        return low


def occurs_outside(segment: Segment, mask: npt.NDArray[np.bool_], lo: int, hi: int) -> bool:
    """Whether suffix-array entries ``lo:hi`` hold one in a non-excluded document."""
    step = 1 << 16
    for begin in range(lo, hi, step):
        documents = segment.range_documents(begin, min(hi, begin + step), step)
        if not mask[documents].all():
            return True
    return False


def maximal_spans(search: OutputSearch, min_words: int) -> list[tuple[int, int]]:
    """Word ranges ``(first, stop)`` of the maximal spans of at least ``min_words`` words.

    ``E(a)`` (the end of the longest match starting at word a) never decreases
    with a, since a match from a contains one from a + 1. So the maximal spans
    start exactly where E jumps. After computing ``b = E(a)`` the next jump is the
    first a' > a whose words a'..b occur, a monotone predicate, found by binary
    search over the pre-filtered candidates instead of probing every start.
    """
    candidates = search.candidates(min_words)
    # A match of words a..b-1 (b - a >= min_words) makes every start a..b-min_words a
    # candidate, so a match from a candidate ends within min_words of the end of
    # its run of consecutive candidates.
    run_end = candidates[:]
    for i in range(len(candidates) - 2, -1, -1):
        if candidates[i + 1] == candidates[i] + 1:
            run_end[i] = run_end[i + 1]
    spans: list[tuple[int, int]] = []
    index = 0
    while index < len(candidates):
        first = candidates[index]
        stop = search.extent(first, run_end[index] + min_words)
        if stop - first >= min_words:
            spans.append((first, stop))
        if stop >= search.words:
            break
        lo, hi = index + 1, bisect_right(candidates, stop)
        while lo < hi:
            middle = (lo + hi) >> 1
            if search.occurs(candidates[middle], stop + 1):
                hi = middle
            else:
                lo = middle + 1
        index = lo
    return spans
