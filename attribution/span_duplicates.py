"""Duplicate screening at datanet ingest: what of a new document is already held, and by whom.

Two checks, both on normalised text (NFKC, casefold, single spaces: case and
whitespace edits change nothing):

- **Exact spans.** The new document is searched like an output against the
  indexed segments (``attribution.spans.find_spans``): every word inside a span
  of at least ``min_words`` words that some other contributor already holds
  counts as held, per contributor.
- **Near-duplicate documents.** MinHash over word 2-grams
  (``attribution.span_minhash``): a document whose estimated Jaccard similarity
  with an earlier one (indexed, or earlier in the same upload) reaches
  ``NEAR_DUPLICATE_PPM`` (0.5) is a near-duplicate of it. It is recorded in the
  segment as ``duplicate_of`` the contributor credited for that earlier document
  (its own ``duplicate_of`` when it is itself a copy), so copies of copies lead
  back to the original. The duplicate policies of ``attribution.spans`` read it.

Findings hold counts and contributor ids only, never text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from attribution.normalise import normalise_bytes
from attribution.span_format import CorpusDocument
from attribution.span_index import Segment
from attribution.span_minhash import (
    BANDS,
    NEAR_DUPLICATE_PPM,
    SignatureIndex,
    band_keys,
    signature_of_normalised,
    similarity_ppm,
)
from attribution.span_search import excluded_documents
from attribution.spans import SpanParams, find_spans


@dataclass(frozen=True)
class DuplicateFinding:
    """What screening found for one new document (counts and ids, never text)."""

    doc_id: str
    words: int
    held_words: int = 0  # words inside spans other contributors already hold
    held_by: dict[str, int] = field(default_factory=dict)  # contributor -> such words
    near_duplicate_of: str | None = None  # contributor credited for the matched document
    similarity_ppm: int = 0  # estimated Jaccard similarity with that document

    @property
    def duplicated(self) -> bool:
        """Whether anything of the document was found elsewhere."""
        return bool(self.held_words) or self.near_duplicate_of is not None

    def to_wire(self) -> dict[str, Any]:
        """JSON form for the ingest report."""
        return {"id": self.doc_id, "words": self.words, "held_words": self.held_words,
                "held_by": dict(sorted(self.held_by.items())),
                "near_duplicate_of": self.near_duplicate_of,
                "similarity_ppm": self.similarity_ppm}


def screen_documents(
    documents: Sequence[CorpusDocument],
    segments: Sequence[Segment],
    *,
    min_words: int,
    excluded_contributors: frozenset[str] = frozenset(),
) -> list[DuplicateFinding]:
    """Screen ``documents`` (one upload, in order) against ``segments`` (oldest first).

    Returns one finding per document, in order. Excluded contributors'
    documents, and copies of them, count as absent.
    """
    indexed = _IndexedSignatures(segments, excluded_contributors)
    upload = _UploadSignatures()
    params = SpanParams(min_words=min_words)
    findings = []
    for document in documents:
        normalised = normalise_bytes(document.text)
        held_words, held_by = _held_words(document, normalised, segments, params,
                                          excluded_contributors)
        signature = signature_of_normalised(normalised)
        credited, similarity = indexed.best_match(signature)
        in_upload, upload_similarity = upload.best_match(signature)
        if upload_similarity > similarity:
            credited, similarity = in_upload, upload_similarity
        near = credited if similarity >= NEAR_DUPLICATE_PPM else None
        upload.add(signature, near or document.contributor)
        findings.append(DuplicateFinding(
            doc_id=document.doc_id, words=normalised.count(b" ") + 1, held_words=held_words,
            held_by=held_by, near_duplicate_of=near,
            similarity_ppm=similarity if near is not None else 0))
    return findings


def _held_words(document: CorpusDocument, normalised: bytes, segments: Sequence[Segment],
                params: SpanParams, excluded: frozenset[str]) -> tuple[int, dict[str, int]]:
    """Words of ``document`` inside spans held by other contributors: in all, and by each."""
    spans = find_spans(document.text, list(segments), params, excluded_contributors=excluded)
    if not spans:
        return 0, {}
    spaces = np.flatnonzero(np.frombuffer(normalised, dtype=np.uint8) == 0x20)
    words = len(spaces) + 1
    covered: dict[str, npt.NDArray[np.bool_]] = {}
    for span in spans:
        # Word index of a byte offset: the spaces before it.
        first = int(np.searchsorted(spaces, span.start))
        stop = int(np.searchsorted(spaces, span.end)) + 1
        for holder in span.holders:
            if holder != document.contributor:
                covered.setdefault(holder, np.zeros(words, dtype=np.bool_))[first:stop] = True
    if not covered:
        return 0, {}
    union = np.logical_or.reduce(list(covered.values()))
    return int(union.sum()), {name: int(mask.sum()) for name, mask in sorted(covered.items())}


class _IndexedSignatures:
    """Signatures of the indexed documents, segment by segment, with their credit."""

    def __init__(self, segments: Sequence[Segment], excluded: frozenset[str]) -> None:
        self._parts: list[tuple[Segment, SignatureIndex, npt.NDArray[np.bool_] | None]] = []
        for segment in segments:
            mask = excluded_documents(segment, excluded)
            eligible = None if mask is None else ~mask
            if eligible is None or eligible.any():
                self._parts.append((segment, SignatureIndex(segment.signatures()), eligible))

    def best_match(self, signature: npt.NDArray[np.uint32]) -> tuple[str | None, int]:
        """Credited contributor of the most similar indexed document (earliest on ties)."""
        best: tuple[str | None, int] = (None, 0)
        for segment, index, eligible in self._parts:
            row, similarity = index.best_match(signature, eligible)
            if row >= 0 and similarity > best[1]:
                contributor = segment.document(row)[1]
                best = (segment.duplicate_of.get(row, contributor), similarity)
        return best


class _UploadSignatures:
    """Signatures of the documents screened so far in this upload (LSH in a dict)."""

    def __init__(self) -> None:
        self._signatures: list[npt.NDArray[np.uint32]] = []
        self._credited: list[str] = []
        self._bands: dict[tuple[int, int], list[int]] = {}

    def add(self, signature: npt.NDArray[np.uint32], credited: str) -> None:
        row = len(self._signatures)
        self._signatures.append(signature)
        self._credited.append(credited)
        for band, key in enumerate(band_keys(signature[None, :])[0].tolist()):
            self._bands.setdefault((band, key), []).append(row)

    def best_match(self, signature: npt.NDArray[np.uint32]) -> tuple[str | None, int]:
        keys = band_keys(signature[None, :])[0].tolist()
        rows = sorted({row for band in range(BANDS)
                       for row in self._bands.get((band, keys[band]), ())})
        if not rows:
            return None, 0
        scores = similarity_ppm(signature, np.stack([self._signatures[r] for r in rows]))
        best = int(np.argmax(scores))
        return self._credited[rows[best]], int(scores[best])
