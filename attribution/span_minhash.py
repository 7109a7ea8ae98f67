"""Near-duplicate documents for datanet ingest: MinHash over normalised word 2-grams.

A document's *shingles* are the distinct windows of ``SHINGLE_WORDS`` consecutive
words of its normalised text (``attribution.normalise``: NFKC, casefold, single
spaces), so case and whitespace edits change nothing, and repeating text inside
a document adds no shingle. Two documents are near-duplicates when the Jaccard
similarity of their shingle sets is at least ``NEAR_DUPLICATE_PPM`` / 1e6
(0.5), estimated from ``PERMUTATIONS`` min-hashes.

Why 2-grams and 0.5: changing one word of a sentence of ``L`` words removes at
most 2 of its ``L - 1`` bigrams and adds 2, so its similarity is ``(L - 3) / (L + 1)``:
0.56 at 8 words, 0.69 at 12, 0.78 at 17. "One word changed per sentence" is
caught for sentences of 8 words or more; unrelated texts on one subject share a
few common bigrams ("of the") and stay far below 0.5.

Candidates are found by locality-sensitive hashing (``BANDS`` bands of ``ROWS``
min-hashes; a pair at similarity 0.5 shares a band with probability 0.995, one at
0.1 with 0.04) and then confirmed on the full signatures, so ingest never
compares a new document with every stored one.

Hashes are deterministic (fixed seed), so a segment's stored signatures stay
comparable with new ones on any machine.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from attribution.normalise import normalise_bytes
from attribution.span_format import SEPARATOR, SPACE
from attribution.span_hashing import word_window_hashes

SHINGLE_WORDS = 2
PERMUTATIONS = 120
BANDS, ROWS = 40, 3
NEAR_DUPLICATE_PPM = 500_000  # estimated Jaccard similarity, parts per million

# Multiply-add hash family over uint64 (wrapping): odd multipliers, fixed seed.
_RNG = np.random.default_rng(0x5EED_D0C5)
_MULTIPLIERS = _RNG.integers(0, 2**63, PERMUTATIONS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_OFFSETS = _RNG.integers(0, 2**63, PERMUTATIONS, dtype=np.uint64)


def corpus_signatures(corpus: bytes | npt.NDArray[np.uint8],
                      doc_starts: npt.NDArray[np.int64]) -> npt.NDArray[np.uint32]:
    """``[documents, PERMUTATIONS]`` signatures of a segment corpus (``corpus.bin`` layout:
    each document is ``b" " + normalised text + b" " + b"\\xff"``, starting at
    ``doc_starts``). Vectorised over the whole corpus, one pass per permutation.

    A document's shingles are its word 2-grams, or its one word when it has only one.
    The minimum over a set ignores repeats, so repeated text changes nothing.
    """
    data = np.frombuffer(corpus, dtype=np.uint8) if isinstance(corpus, bytes) else corpus
    documents = len(doc_starts)
    if documents == 0:
        return np.empty((0, PERMUTATIONS), dtype=np.uint32)
    spaces = np.flatnonzero(data == SPACE)
    # A space that closes a document is followed by the separator and begins no word.
    closing = data[np.minimum(spaces + 1, len(data) - 1)] == SEPARATOR
    opening = ~closing  # word i begins at spaces[i] when opening[i]
    word_doc = np.searchsorted(doc_starts, spaces, side="right") - 1
    pairs = word_window_hashes(data, spaces, 2)  # window i: words at spaces[i], spaces[i + 1]
    pair_ok = opening[: len(pairs)] & opening[1 : len(pairs) + 1]
    singles = word_window_hashes(data, spaces, 1)
    words_per_doc = np.bincount(word_doc[opening], minlength=documents)
    single_ok = opening[: len(singles)] & (words_per_doc[word_doc[: len(singles)]] == 1)
    values = np.concatenate([pairs[pair_ok], singles[single_ok]])
    owners = np.concatenate([word_doc[: len(pairs)][pair_ok], word_doc[: len(singles)][single_ok]])
    order = np.argsort(owners, kind="stable")
    values, owners = values[order], owners[order]
    firsts = np.searchsorted(owners, np.arange(documents))
    result = np.empty((documents, PERMUTATIONS), dtype=np.uint32)
    for i in range(PERMUTATIONS):  # one permutation at a time: memory stays O(shingles)
        hashed = values * _MULTIPLIERS[i] + _OFFSETS[i]
        result[:, i] = (np.minimum.reduceat(hashed, firsts) >> np.uint64(32)).astype(np.uint32)
    return result


def signature(text: str) -> npt.NDArray[np.uint32]:
    """The MinHash signature of ``text`` (normalised first): ``PERMUTATIONS`` uint32."""
    return signature_of_normalised(normalise_bytes(text))


def signature_of_normalised(normalised: bytes) -> npt.NDArray[np.uint32]:
    """``signature`` of non-empty text that is already normalised."""
    if not normalised:
        raise ValueError("an empty document has no signature")
    corpus = b" " + normalised + b" " + bytes([SEPARATOR])
    return corpus_signatures(corpus, np.zeros(1, dtype=np.int64))[0]


def similarity_ppm(signature_a: npt.NDArray[np.uint32],
                   signatures: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64]:
    """Estimated Jaccard similarity (ppm) of ``signature_a`` with each row of ``signatures``."""
    agree = (signatures == signature_a[None, :]).sum(axis=1, dtype=np.int64)
    return agree * 1_000_000 // PERMUTATIONS


def band_keys(signatures: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint64]:
    """``[n, BANDS]`` keys: each band's ``ROWS`` min-hashes folded into one uint64."""
    rows = signatures[:, : BANDS * ROWS].astype(np.uint64).reshape(-1, BANDS, ROWS)
    keys = np.zeros(rows.shape[:2], dtype=np.uint64)
    for row in range(ROWS):
        keys = keys * np.uint64(0x100000001B3) + rows[:, :, row]
    return keys


class SignatureIndex:
    """Signatures of stored documents with their LSH bands, for near-duplicate look-ups."""

    def __init__(self, signatures: npt.NDArray[np.uint32]) -> None:
        self.signatures = signatures.reshape(-1, PERMUTATIONS)
        keys = band_keys(self.signatures)
        self._order = np.argsort(keys, axis=0, kind="stable")  # [n, BANDS]
        self._sorted = np.take_along_axis(keys, self._order, axis=0)

    def __len__(self) -> int:
        return len(self.signatures)

    def best_match(self, query: npt.NDArray[np.uint32],
                   eligible: npt.NDArray[np.bool_] | None = None) -> tuple[int, int]:
        """``(row, similarity ppm)`` of the most similar stored document sharing a band
        with ``query`` (ties: the earliest row), or ``(-1, 0)`` when none does.
        ``eligible`` (one flag per row) leaves rows out."""
        if not len(self.signatures):
            return -1, 0
        keys = band_keys(query[None, :])[0]
        found: list[npt.NDArray[np.int64]] = []
        for band in range(BANDS):
            column = self._sorted[:, band]
            lo = np.searchsorted(column, keys[band], side="left")
            hi = np.searchsorted(column, keys[band], side="right")
            if hi > lo:
                found.append(self._order[lo:hi, band])
        if not found:
            return -1, 0
        rows = np.unique(np.concatenate(found))
        if eligible is not None:
            rows = rows[eligible[rows]]
        if not len(rows):
            return -1, 0
        scores = similarity_ppm(query, self.signatures[rows])
        best = int(np.argmax(scores))  # argmax takes the first maximum: the earliest row
        return int(rows[best]), int(scores[best])
