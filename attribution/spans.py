"""``spans/1``: credit the contributors whose documents an output reuses verbatim.

Why one module of ~430 lines: finding each span's holders, scoring it and writing the
evidence are one integer formula that an auditor recomputes from that evidence; the
index, the search and duplicate screening are apart (``attribution/span_index.py``,
``attribution/span_search.py``, ``attribution/span_duplicates.py``).

Anchors: OLMoTrace and infini-gram. The output is normalised like the corpus
(``attribution.normalise``); the finder reports every *maximal* span of whole
words (at least ``min_words``) that occurs verbatim, word-aligned, in some
segment; each span earns credit for its length and its rarity, and that credit
is split equally among the span's *holders*: distinct contributors, never
weighted by how many copies anyone holds.

Scoring (integers only, so an auditor recomputes exactly the same ppm from the
evidence on any machine)::

    rarity(span) = floor(2**16 * log2(1 + N / max(1, documents)))  # integer fixed point
    credit(span) = words * rarity(span)
    weight[c]   += credit(span) // len(holders)     for each c in holders

``N`` counts the *original* documents of non-excluded contributors (documents
that ingest found to be near-duplicates of earlier ones are not counted) and
``documents`` the distinct original documents holding the span, so repeating
text, inside one document or as copies, changes no credit. A span found in one
document of a large corpus is worth ~log2(N) per word; one in every document is
worth 1 per word: boilerplate barely counts.

Holders depend on each datanet's duplicate policy (``SpanSource.duplicates``):

- ``split``: every distinct contributor with a document holding the span, plus,
  for a near-duplicate document, the contributor it duplicates;
- ``first``: only the contributor credited for the earliest document holding the
  span (segments oldest first, documents in indexing order); for a
  near-duplicate document that is the contributor it duplicates. Later copies
  earn nothing.

With several datanets a span's holders are the union of each one's holders.

Excluded contributors are treated as if their documents (and the near-duplicates
of their documents) were not in the corpus: spans are found, counted and
weighted without them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from attribution.commitments import digest
from attribution.normalise import normalise_bytes
from attribution.payees import Role, split_ppm
from attribution.span_index import Segment
from attribution.span_search import OutputSearch, maximal_spans

METHOD = "spans/1"
SCORING = "words*log2(1+N/documents)/q16;distinct-holders"
DuplicatePolicy = Literal["first", "split"]
DUPLICATE_POLICIES: tuple[str, ...] = get_args(DuplicatePolicy)
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
class SpanSource:
    """One datanet's segments (oldest first) and how it credits duplicated spans.

    ``name`` and ``state`` (a digest of the datanet's state) only label the
    source in the parameters, so a receipt says which rule paid on which data.
    """

    segments: tuple[Segment, ...]
    duplicates: DuplicatePolicy = "split"
    name: str = ""
    state: str = ""

    def __post_init__(self) -> None:
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}")

    def to_wire(self) -> dict[str, Any]:
        """What the parameters record of this source."""
        return {"name": self.name, "duplicates": self.duplicates, "state": self.state}


def as_sources(corpus: Sequence[Segment] | Sequence[SpanSource]) -> list[SpanSource]:
    """``corpus`` as sources: bare segments form one unnamed source under ``split``."""
    sources = [item for item in corpus if isinstance(item, SpanSource)]
    segments = tuple(item for item in corpus if isinstance(item, Segment))
    if sources and segments:
        raise TypeError("pass either segments or SpanSources, not both")
    return sources if sources else [SpanSource(segments)] if segments else []


def wire_params(params: SpanParams, sources: Sequence[SpanSource]) -> dict[str, Any]:
    """The parameters a receipt's ``attr.params`` digests: ``params`` plus each source."""
    return {**params.to_wire(), "sources": [source.to_wire() for source in sources]}


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

    ``documents`` is the number of distinct original (not near-duplicate)
    documents holding the span (estimated from the sample when sampled), and
    ``holders`` the contributors its credit goes to under the policies.
    """

    start: int
    end: int
    text_len: int
    words: int
    count: int
    by_contributor: dict[str, int]
    by_document: dict[str, int]
    sampled: bool = False
    documents: int = 0
    holders: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpanAttribution:
    """The result of ``attribute``: integer ppm per contributor, the spans and the evidence."""

    weights_ppm: dict[str, int]  # empty when nothing matched
    spans: list[SpanMatch]
    evidence: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # wire_params(...)

    def evidence_digest(self) -> bytes:
        """SHA-256 of the canonical evidence: the receipt's ``attr.evidence``."""
        return digest(self.evidence)

    def params_digest(self) -> bytes:
        """SHA-256 of the canonical parameters: the receipt's ``attr.params``."""
        return digest(self.params)


def find_spans(
    output: str,
    corpus: Sequence[Segment] | Sequence[SpanSource],
    params: SpanParams,
    *,
    excluded_contributors: frozenset[str] = frozenset(),
) -> list[SpanMatch]:
    """Every maximal word-aligned span of ``output`` (normalised) found in ``corpus``.

    ``corpus`` is a list of segments (one source under ``split``) or of
    ``SpanSource``. Spans are sorted by ``start``; none is contained in another.
    They may overlap. A span found only in excluded contributors' documents is
    not reported (a shorter part of it may be, if others hold that).
    """
    sources = as_sources(corpus)
    segments = [segment for source in sources for segment in source.segments]
    data = normalise_bytes(output)
    if not data or not segments:
        return []
    tags = [number for number, source in enumerate(sources) for _ in source.segments]
    search = OutputSearch(b" " + data + b" ", segments, excluded_contributors, tags)
    if not search.segments:
        return []
    policies = [source.duplicates for source in sources]
    matches = []
    for first, stop in maximal_spans(search, params.min_words):
        match = _count_span(search, policies, first, stop, params.max_enumerated)
        if match.count:
            matches.append(match)
    return matches


def _count_span(search: OutputSearch, policies: Sequence[DuplicatePolicy], first: int,
                stop: int, limit: int) -> SpanMatch:
    """Occurrences of words ``first..stop-1`` per contributor and per document, the
    distinct original documents holding them, and the holders under ``policies``."""
    pattern = search.pattern(first, stop)
    by_contributor: dict[str, int] = {}
    by_document: dict[str, int] = {}
    sampled = False
    originals = 0
    holders: set[str] = set()
    decided: set[int] = set()  # sources under "first" whose earliest holder is known
    for (segment, mask), tag in zip(search.segments, search.tags, strict=True):
        lo, hi = segment.suffix_range(pattern)
        if hi == lo:
            continue
        documents = segment.range_documents(lo, hi, limit)
        if mask is not None:
            documents = documents[~mask[documents]]
        if len(documents) == 0:
            continue
        owners = segment.contributor_of(documents)
        distinct = np.unique(documents)
        distinct = distinct[~segment.is_duplicate[distinct]]
        originals += len(distinct) if hi - lo <= limit else \
            len(distinct) * (hi - lo) // limit  # sampled: scale like the occurrences
        if policies[tag] == "split":
            holders.update(_credited(segment, np.unique(documents), "split"))
        elif tag not in decided:  # "first": the earliest document, exactly (no sample)
            decided.add(tag)
            every = segment.range_documents(lo, hi, hi - lo)
            if mask is not None:
                every = every[~mask[every]]
            holders.update(_credited(segment, every.min(keepdims=True), "first"))
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
        documents=originals,
        holders=tuple(sorted(holders)),
    )


def _credited(segment: Segment, documents: npt.NDArray[np.int64],
              policy: DuplicatePolicy) -> set[str]:
    """Contributors credited for ``documents`` of ``segment``: under ``split`` each one's
    contributor plus, for a near-duplicate, the contributor it duplicates; under
    ``first`` a near-duplicate is credited to that contributor only."""
    names = segment.info.contributors
    copies = documents[segment.is_duplicate[documents]]
    credited = {segment.duplicate_of[index] for index in copies.tolist()}
    own = documents if policy == "split" else documents[~segment.is_duplicate[documents]]
    credited.update(names[index] for index in np.unique(segment.contributor_of(own)).tolist())
    return credited


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
    """``words * rarity(max(1, documents), total_documents)``: what one span is worth."""
    return span.words * rarity(max(1, span.documents), total_documents)


def contributor_weights(spans: Sequence[SpanMatch], total_documents: int) -> dict[str, int]:
    """Integer weight per contributor (see the module docstring for the formula).

    Each span's credit is split equally among its distinct ``holders``; how many
    occurrences or copies a holder has plays no part. ``total_documents`` is N:
    the original documents of non-excluded contributors over all segments searched.
    """
    weights: dict[str, int] = {}
    for span in spans:
        if not span.holders:
            continue
        share = span_credit(span, total_documents) // len(span.holders)
        for name in span.holders:
            weights[name] = weights.get(name, 0) + share
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
    corpus: Sequence[Segment] | Sequence[SpanSource],
    excluded_contributors: frozenset[str] = frozenset(),
) -> int:
    """N: original (not near-duplicate) documents of non-excluded contributors."""
    return sum(
        n
        for source in as_sources(corpus)
        for segment in source.segments
        for name, n in segment.original_documents_by_contributor.items()
        if name not in excluded_contributors
    )


def attribute(
    output: str,
    corpus: Sequence[Segment] | Sequence[SpanSource],
    params: SpanParams,
    excluded_contributors: frozenset[str] = frozenset(),
) -> SpanAttribution:
    """Find the spans of ``output``, weigh them and build the evidence.

    ``corpus``: segments (one source under ``split``) or ``SpanSource`` per
    datanet. Nothing matched -> empty ``weights_ppm`` (the caller decides where
    the data share goes). ``SpanAttribution.params`` is what ``attr.params``
    digests (``wire_params``: the parameters plus each source's name, duplicate
    policy and state digest). The evidence holds only integers and strings
    (offsets, lengths, counts, doc ids, segment digests), never the text::

        {"method": "spans/1", "params": wire_params(...),
         "segments": [segment digest hex, ...], "documents": N,
         "excluded": [sorted contributor ids], "output_bytes": int,
         "spans": [{"start", "end", "words", "count", "documents", "rarity",
                    "sampled": 0|1, "holders": [contributor, ...],
                    "by_contributor": {id: n}, "by_document": {doc_id: n}}, ...],
         "weights": {contributor: integer weight}}
    """
    sources = as_sources(corpus)
    spans = find_spans(output, sources, params, excluded_contributors=excluded_contributors)
    documents = total_documents(sources, excluded_contributors)
    weights = contributor_weights(spans, documents)
    wire = wire_params(params, sources)
    evidence: dict[str, Any] = {
        "method": METHOD,
        "params": wire,
        "segments": [segment.info.digest for source in sources for segment in source.segments],
        "documents": documents,
        "excluded": sorted(excluded_contributors),
        "output_bytes": len(normalise_bytes(output)),
        "spans": [
            {
                "start": span.start,
                "end": span.end,
                "words": span.words,
                "count": span.count,
                "documents": span.documents,
                "rarity": rarity(max(1, span.documents), documents),
                "sampled": int(span.sampled),
                "holders": list(span.holders),
                "by_contributor": dict(span.by_contributor),
                "by_document": dict(span.by_document),
            }
            for span in spans
        ],
        "weights": weights,
    }
    return SpanAttribution(weights_ppm=to_ppm(weights), spans=spans, evidence=evidence,
                           params=wire)
