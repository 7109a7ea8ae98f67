"""``spans/1``: credit the contributors whose documents an output reuses verbatim.

Anchors: OLMoTrace and infini-gram. The output is normalised like the corpus
(``attribution.normalise``); the finder reports every *maximal* span of whole
words (at least ``min_words``) that occurs verbatim, word-aligned, in some
segment; each span earns credit for its length and its rarity, and that credit
is split among contributors in proportion to their occurrences of it.

Scoring (integers only, so an auditor recomputes exactly the same ppm from the
evidence on any machine)::

    rarity(span) = floor(2**16 * log2(1 + N / count))  # 64-bit fixed point, integer-only
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

import numpy as np

from attribution.commitments import digest
from attribution.normalise import normalise_bytes
from attribution.payees import Role, split_ppm
from attribution.span_index import Segment
from attribution.span_search import OutputSearch, maximal_spans

METHOD = "spans/1"
SCORING = "words*log2(1+N/count)/q16"
NORMALISATION = "nfkc-casefold-nfkc-ws/1"
RARITY_BITS = 16
_SPACE = 0x20


@dataclass(frozen=True)
class SpanParams:
    """Parameters of ``spans/1``; their digest goes into the receipt's ``attr.params``."""

    min_words: int = 5  # shortest span reported, in words
    max_enumerated: int = 10_000  # occurrences of one span enumerated exactly, per segment

    def __post_init__(self) -> None:
        if self.min_words < 1:
            raise ValueError("min_words must be at least 1")
        if self.max_enumerated < 1:
            raise ValueError("max_enumerated must be at least 1")

    def to_wire(self) -> dict[str, Any]:
        """Canonical-encodable form (method, scoring version and every parameter)."""
        return {
            "method": METHOD,
            "scoring": SCORING,
            "normalisation": NORMALISATION,
            "min_words": self.min_words,
            "max_enumerated": self.max_enumerated,
        }

    def digest(self) -> bytes:
        """SHA-256 of the canonical ``to_wire()``: the receipt's ``attr.params``."""
        return digest(self.to_wire())


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
    ``by_document`` holds the sampled occurrences only).
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
        return digest(self.evidence)


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
    data = normalise_bytes(output)
    if not data or not segments:
        return []
    search = OutputSearch(b" " + data + b" ", segments, excluded_contributors)
    if not search.segments:
        return []
    matches = []
    for first, stop in maximal_spans(search, params.min_words):
        match = _count_span(search, first, stop, params.max_enumerated)
        if match.count:
            matches.append(match)
    return matches


def _count_span(search: OutputSearch, first: int, stop: int, limit: int) -> SpanMatch:
    """Occurrences of words ``first..stop-1`` per contributor and per document."""
    pattern = search.pattern(first, stop)
    by_contributor: dict[str, int] = {}
    by_document: dict[str, int] = {}
    sampled = False
    for segment, mask in search.segments:
        lo, hi = segment.suffix_range(pattern)
        if hi == lo:
            continue
        documents = segment.range_documents(lo, hi, limit)
        owners = segment.contributor_of(documents)
        if mask is not None:
            kept = ~mask[owners]
            documents, owners = documents[kept], owners[kept]
        if len(documents) == 0:
            continue
        names = segment.info.contributors
        indices, counts = np.unique(owners, return_counts=True)
        per_contributor = {names[i]: int(n) for i, n in zip(indices, counts, strict=True)}
        if hi - lo > limit:
            sampled = True
            # The sample is evenly spaced over the range, so it stands for the whole
            # range in proportion: scale its shares to the estimated total.
            total = (hi - lo) * (len(documents)) // limit
            per_contributor = _apportion(per_contributor, total)
        for name, n in per_contributor.items():
            by_contributor[name] = by_contributor.get(name, 0) + n
        doc_indices, doc_counts = np.unique(documents, return_counts=True)
        doc_ids = segment.doc_ids_of(doc_indices)
        if not by_document:
            by_document = dict(zip(doc_ids, doc_counts.tolist(), strict=True))
        else:
            for doc_id, n in zip(doc_ids, doc_counts.tolist(), strict=True):
                by_document[doc_id] = by_document.get(doc_id, 0) + n
    spaces = search.spaces
    # Padded offsets -> offsets in the normalised output (the padding adds one byte).
    start, end = spaces[first], spaces[stop] - 1
    return SpanMatch(
        start=start,
        end=end,
        text_len=end - start,
        words=stop - first,
        count=sum(by_contributor.values()),
        by_contributor={name: by_contributor[name] for name in sorted(by_contributor)},
        by_document=by_document,  # canonical encoding sorts keys; no need to here
        sampled=sampled,
    )


def _apportion(shares: Mapping[str, int], total: int) -> dict[str, int]:
    """Split ``total`` in proportion to ``shares`` (largest remainder, ties by name)."""
    whole = sum(shares.values())
    names = sorted(shares)
    result = {name: shares[name] * total // whole for name in names}
    by_remainder = sorted(names, key=lambda name: (-(shares[name] * total % whole), name))
    for name in by_remainder[: total - sum(result.values())]:
        result[name] += 1
    return {name: n for name, n in result.items() if n}


def rarity(count: int, total_documents: int) -> int:
    """``floor(2**16 * log2(1 + total_documents / count))`` in integer fixed point.

    Integer-only arithmetic (64 fractional bits while squaring) makes the
    result identical on every platform, which floats and ``math.log`` do not
    promise; it can differ from the exact floor by one unit at most.
    """
    if count < 1 or total_documents < 0:
        raise ValueError("count must be positive and total_documents non-negative")
    numerator, denominator = count + total_documents, count
    whole = numerator.bit_length() - denominator.bit_length()
    if numerator < denominator << whole:
        whole -= 1
    precision = 64
    # y = numerator / (denominator * 2**whole), in [1, 2), as a fixed-point integer.
    y = (numerator << precision) // (denominator << whole)
    result = whole
    for _ in range(RARITY_BITS):
        y = (y * y) >> precision
        result <<= 1
        if y >= 2 << precision:
            y >>= 1
            result |= 1
    return result


def span_credit(span: SpanMatch, total_documents: int) -> int:
    """``words * rarity(count, total_documents)``: what one span is worth."""
    return span.words * rarity(span.count, total_documents)


def contributor_weights(spans: Sequence[SpanMatch], total_documents: int) -> dict[str, int]:
    """Integer weight per contributor (see the module docstring for the formula).

    ``total_documents`` is N: the documents of non-excluded contributors over
    all segments searched.
    """
    weights: dict[str, int] = {}
    for span in spans:
        if not span.count:
            continue
        credit = span_credit(span, total_documents)
        for name, occurrences in span.by_contributor.items():
            weights[name] = weights.get(name, 0) + credit * occurrences // span.count
    return {name: weights[name] for name in sorted(weights) if weights[name] > 0}


def to_ppm(weights: Mapping[str, int]) -> dict[str, int]:
    """Integer weights -> ppm summing to exactly 1,000,000 (``payees.split_ppm`` rounding).

    Zero shares are dropped; all-zero or empty weights give ``{}``.
    """
    data: Role = "data"
    positive = [(name, data, weight) for name, weight in sorted(weights.items()) if weight > 0]
    if not positive:
        return {}
    return {payee.payee_id: payee.ppm for payee in split_ppm(positive)}


def total_documents(
    segments: Sequence[Segment], excluded_contributors: frozenset[str] = frozenset()
) -> int:
    """N: documents of non-excluded contributors over ``segments``."""
    return sum(
        n
        for segment in segments
        for name, n in segment.documents_by_contributor.items()
        if name not in excluded_contributors
    )


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
    spans = find_spans(output, segments, params, excluded_contributors=excluded_contributors)
    documents = total_documents(segments, excluded_contributors)
    weights = contributor_weights(spans, documents)
    evidence: dict[str, Any] = {
        "method": METHOD,
        "params": params.to_wire(),
        "segments": [segment.info.digest for segment in segments],
        "documents": documents,
        "excluded": sorted(excluded_contributors),
        "output_bytes": len(normalise_bytes(output)),
        "spans": [
            {
                "start": span.start,
                "end": span.end,
                "words": span.words,
                "count": span.count,
                "rarity": rarity(span.count, documents),
                "sampled": int(span.sampled),
                "by_contributor": dict(span.by_contributor),
                "by_document": dict(span.by_document),
            }
            for span in spans
        ],
        "weights": weights,
    }
    return SpanAttribution(weights_ppm=to_ppm(weights), spans=spans, evidence=evidence)
