"""``spans/1``: credit the contributors whose documents an output reuses verbatim.

Anchors: OLMoTrace and infini-gram. The output is normalised like the corpus
(``attribution.normalise``); the finder reports every *maximal* span of whole
words (at least ``min_words``) that occurs verbatim, word-aligned, in some
segment; each span earns credit for its length and its rarity, and that credit
is split among contributors in proportion to their occurrences of it.

Scoring (integers only, so an auditor recomputes exactly the same ppm from the
evidence on any machine)::

    rarity(span) = floor(2**16 * log2(1 + N / count))      # fixed-point, exact
    credit(span) = words * rarity(span)
    weight[c]   += credit(span) * by_contributor[c] // count

where ``N`` is the number of documents of non-excluded contributors over all
segments and ``count`` the span's occurrences in those documents. A span found
in one document of a large corpus is worth ~log2(N) per word; one that
appears in every document is worth 1 per word: boilerplate barely counts.

Excluded contributors are treated as if their documents were not in the
corpus: spans are found, counted and weighted without them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attribution.span_index import Segment

METHOD = "spans/1"


@dataclass(frozen=True)
class SpanParams:
    """Parameters of ``spans/1``; their digest goes into the receipt's ``attr.params``."""

    min_words: int = 5  # shortest span reported, in words
    max_enumerated: int = 10_000  # occurrences of one span enumerated exactly, per segment

    def to_wire(self) -> dict[str, Any]:
        """Canonical-encodable form (method, scoring version and every parameter)."""
        raise NotImplementedError

    def digest(self) -> bytes:
        """SHA-256 of the canonical ``to_wire()``: the receipt's ``attr.params``."""
        raise NotImplementedError


@dataclass(frozen=True)
class SpanMatch:
    """One maximal span of the normalised output that occurs in the corpus.

    ``start``/``end`` are byte offsets into ``normalise_bytes(output)``;
    ``text_len`` = ``end - start``. ``count`` is the number of word-aligned
    occurrences in documents of non-excluded contributors across all segments,
    and equals ``sum(by_contributor.values())``. ``by_document`` maps doc id
    to occurrences. When a span occurs more than ``max_enumerated`` times in a
    segment, that segment's occurrences are attributed from an evenly spaced
    sample and scaled to its exact count (``sampled`` is then true and
    ``by_document`` holds the sampled documents only).
    """

    start: int
    end: int
    text_len: int
    words: int
    count: int
    by_contributor: dict[str, int]
    by_document: dict[str, int]
    sampled: bool = False


@dataclass(frozen=True)
class SpanAttribution:
    """The result of ``attribute``: integer ppm per contributor, the spans and the evidence."""

    weights_ppm: dict[str, int]  # empty when nothing matched
    spans: list[SpanMatch]
    evidence: dict[str, Any] = field(default_factory=dict)

    def evidence_digest(self) -> bytes:
        """SHA-256 of the canonical evidence: the receipt's ``attr.evidence``."""
        raise NotImplementedError


def find_spans(
    output: str,
    segments: Sequence[Segment],
    params: SpanParams,
    *,
    excluded_contributors: frozenset[str] = frozenset(),
) -> list[SpanMatch]:
    """Every maximal word-aligned span of ``output`` (normalised) found in ``segments``.

    Spans are sorted by ``start``; none is contained in another. They may
    overlap. A span found only in excluded contributors' documents is not
    reported (a shorter part of it may be, if others hold that).
    """
    raise NotImplementedError


def rarity(count: int, total_documents: int) -> int:
    """``floor(2**16 * log2(1 + total_documents / count))``, computed exactly in integers."""
    raise NotImplementedError


def contributor_weights(spans: Sequence[SpanMatch], total_documents: int) -> dict[str, int]:
    """Integer weight per contributor (see the module docstring for the formula)."""
    raise NotImplementedError


def to_ppm(weights: Mapping[str, int]) -> dict[str, int]:
    """Integer weights -> ppm summing to exactly 1,000,000 (``payees.split_ppm`` rounding).

    Zero shares are dropped; all-zero or empty weights give ``{}``.
    """
    raise NotImplementedError


def attribute(
    output: str,
    segments: Sequence[Segment],
    params: SpanParams,
    excluded_contributors: frozenset[str] = frozenset(),
) -> SpanAttribution:
    """Find the spans of ``output``, weigh them and build the evidence.

    Nothing matched -> empty ``weights_ppm`` (the caller decides where the data
    share goes). The evidence holds only integers and strings (offsets,
    lengths, counts, doc ids, segment digests), never the text::

        {"method": "spans/1", "params": params.to_wire(),
         "segments": [segment digest hex, ...], "documents": N,
         "excluded": [sorted contributor ids], "output_bytes": int,
         "spans": [{"start", "end", "words", "count", "rarity", "sampled": 0|1,
                    "by_contributor": {id: n}, "by_document": {doc_id: n}}, ...],
         "weights": {contributor: integer weight}}
    """
    raise NotImplementedError
