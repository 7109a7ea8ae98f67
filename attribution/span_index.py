"""On-disk span index segments for ``spans/1``: a word-level suffix array over a corpus.

A segment is one directory::

    segment.json   format version, counts, sizes, SHA-256 of every other file
    corpus.bin     for each document: b" " + normalised UTF-8 text + b" " + b"\\xff"
    sa.npy         suffix array restricted to word starts (the space before each
                   word), sorted by suffix; int32 when the corpus is < 2 GiB
    docs.npy       int64 start offset of each document in corpus.bin (sorted)
    docs.json      document ids, contributor of each document, sizes
    shingles.npy   sorted distinct uint32 fingerprints of every ``shingle_words``-word window
    minhash.npy    MinHash signature of each document (``attribution.span_minhash``),
                   documents x ``PERMUTATIONS`` uint32, flattened; absent in older segments

``docs.json`` may list ``duplicate_of``: ``[document index, contributor]`` for the
documents found at ingest to be near-duplicates of earlier ones; the policies of
``attribution.spans`` credit such a document's spans to that contributor.

Padding each document with spaces makes every word, including the first and the
last, sit between two spaces, so a word-aligned pattern is simply
``b" " + words + b" "`` and only suffixes that start at a space need to be in the
array (about one in six bytes). 0xFF never occurs in UTF-8, so no match crosses a
document boundary.

A reader memory-maps everything; a query touches only the pages it compares.
"""

from __future__ import annotations

import contextlib
import mmap
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from attribution.span_build import build_segment
from attribution.span_format import (
    CORPUS_FILE,
    DEFAULT_SHINGLE_WORDS,
    DOCS_FILE,
    DOCS_JSON,
    FORMAT_VERSION,
    MANIFEST,
    MINHASH_FILE,
    SA_FILE,
    SEPARATOR,
    SHINGLES_FILE,
    CorpusDocument,
    CorpusError,
    SegmentInfo,
    read_docs_json,
    read_manifest,
    sha256_file,
)
from attribution.span_hashing import shingle_fingerprints, word_window_hashes
from attribution.span_minhash import PERMUTATIONS, corpus_signatures

__all__ = [
    "DEFAULT_SHINGLE_WORDS",
    "FORMAT_VERSION",
    "CorpusDocument",
    "CorpusError",
    "Segment",
    "SegmentInfo",
    "build_segment",
    "word_window_hashes",
]


class Segment:
    """A read-only, memory-mapped segment. Use ``Segment.open``; close it (or use ``with``).

    Queries only touch the pages they compare: neither the corpus nor the
    arrays are ever read into process memory as a whole.
    """

    info: SegmentInfo

    def __init__(self, directory: Path, manifest: dict[str, Any], docs_json: dict[str, Any]):
        """Use ``Segment.open``."""
        self._maps: list[mmap.mmap] = []
        self._closed = False
        try:
            self._text = self._map(directory / CORPUS_FILE)
            sa_dtype = np.int32 if manifest["corpus_bytes"] < 2**31 else np.int64
            self.suffix_array = self._map_npy(directory / SA_FILE, sa_dtype, manifest["words"])
            self.doc_starts = self._map_npy(directory / DOCS_FILE, np.int64, manifest["documents"])
            self.shingles = self._map_npy(directory / SHINGLES_FILE, np.uint32,
                                          manifest["shingles"])
            self._signatures: npt.NDArray[np.uint32] | None = None
            if MINHASH_FILE in manifest["files"]:
                self._signatures = self._map_npy(
                    directory / MINHASH_FILE, np.uint32, manifest["documents"] * PERMUTATIONS
                ).reshape(manifest["documents"], PERMUTATIONS)
        except BaseException:
            self.close()
            raise
        # memoryview indexing returns Python ints several times faster than numpy
        # scalar indexing, which matters in the binary searches.
        self._sa: memoryview = self.suffix_array.data
        self._words = len(self.suffix_array)
        self._doc_ids: list[str] = docs_json["ids"]
        self._doc_sizes: list[int] = docs_json["sizes"]
        self._doc_id_array = np.array(self._doc_ids, dtype=object)
        self.doc_contributor = np.asarray(docs_json["contributor_of"], dtype=np.int32)
        contributors = tuple(docs_json["contributors"])
        per_contributor = np.bincount(self.doc_contributor, minlength=len(contributors))
        self.documents_by_contributor: dict[str, int] = {
            name: int(n) for name, n in zip(contributors, per_contributor, strict=True)
        }
        #: Document index -> contributor credited instead (near-duplicates found at ingest).
        self.duplicate_of: dict[int, str] = {int(i): str(name)
                                             for i, name in docs_json["duplicate_of"]}
        self.is_duplicate = np.zeros(manifest["documents"], dtype=np.bool_)
        self.is_duplicate[list(self.duplicate_of)] = True
        originals = np.bincount(self.doc_contributor[~self.is_duplicate],
                                minlength=len(contributors))
        #: Documents per contributor that are not near-duplicates (the rarity's N).
        self.original_documents_by_contributor: dict[str, int] = {
            name: int(n) for name, n in zip(contributors, originals, strict=True)
        }
        self.info = SegmentInfo(
            directory=directory,
            format_version=manifest["version"],
            documents=manifest["documents"],
            contributors=contributors,
            corpus_bytes=manifest["corpus_bytes"],
            words=manifest["words"],
            shingle_words=manifest["shingle_words"],
            digest=manifest["digest"],
        )
        self._files: dict[str, str] = {
            name: record["sha256"] for name, record in manifest["files"].items()
        }
        try:
            self._check_layout(docs_json["sizes"])
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, directory: Path) -> Segment:
        """Map a segment; checks the format version, file sizes and array shapes.

        Raises ``CorpusError`` with a clear message when a file is missing,
        truncated or inconsistent. Content checksums are ``verify()``'s job.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        docs_json = read_docs_json(directory / DOCS_JSON, manifest)
        return cls(directory, manifest, docs_json)

    def _map(self, path: Path) -> mmap.mmap:
        try:
            with open(path, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as error:  # ValueError: an empty file cannot be mapped
            raise CorpusError(f"{path.name} cannot be mapped: {error}") from None
        self._maps.append(mapped)
        # Suffix-array lookups jump around: read-ahead would only fill memory.
        if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            mapped.madvise(mmap.MADV_RANDOM)
        return mapped

    def _map_npy(self, path: Path, dtype: type[np.generic], length: int) -> npt.NDArray[Any]:
        with open(path, "rb") as handle:
            try:
                major, _minor = np.lib.format.read_magic(handle)
                if major == 1:
                    shape, fortran, found = np.lib.format.read_array_header_1_0(handle)
                else:
                    shape, fortran, found = np.lib.format.read_array_header_2_0(handle)
            except ValueError as error:
                raise CorpusError(f"{path.name} is not a valid .npy file: {error}") from None
            offset = handle.tell()
        expected = np.dtype(dtype).newbyteorder("<")
        if sys.byteorder != "little":
            raise CorpusError("span segments can only be mapped on little-endian hosts")
        if found != expected or fortran or shape != (length,):
            raise CorpusError(f"{path.name} holds {found}{shape}, expected {expected}({length},)")
        mapped = self._map(path)
        if len(mapped) != offset + length * expected.itemsize:
            raise CorpusError(f"{path.name} is truncated or has trailing data")
        # Native byte order (== little-endian, checked above): the memoryview over the
        # suffix array supports only native formats.
        return np.frombuffer(mapped, dtype=np.dtype(dtype), count=length, offset=offset)

    def _check_layout(self, sizes: list[int]) -> None:
        text, starts = self._text, self.doc_starts
        if len(text) != self.info.corpus_bytes or text[-1] != SEPARATOR:
            raise CorpusError(f"{CORPUS_FILE} does not end with a document separator")
        lengths = np.diff(np.append(starts, len(text)))
        if starts[0] != 0 or not np.array_equal(lengths, np.asarray(sizes, dtype=np.int64) + 3):
            raise CorpusError(f"{DOCS_FILE} does not match the document sizes in {DOCS_JSON}")

    def verify(self) -> None:
        """Check the SHA-256 of every file against ``segment.json`` (reads every byte)."""
        for name, expected in self._files.items():
            if sha256_file(self.info.directory / name) != expected:
                raise CorpusError(f"{name} does not match its SHA-256 in {MANIFEST}")

    def close(self) -> None:
        """Unmap the files. Further queries fail."""
        self._closed = True
        # Views must go before the maps they export from can close.
        for name in ("_sa", "suffix_array", "doc_starts", "shingles", "_signatures"):
            view = self.__dict__.pop(name, None)
            if isinstance(view, memoryview):
                view.release()
        for mapped in self._maps:
            # A caller (or a traceback) may still hold an array view; the map is then
            # released with the last view instead.
            with contextlib.suppress(BufferError):
                mapped.close()
        self._maps.clear()

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def documents(self) -> int:
        """Number of documents."""
        return self.info.documents

    def document(self, index: int) -> tuple[str, str]:
        """``(doc_id, contributor)`` of document ``index``."""
        return self._doc_ids[index], self.info.contributors[int(self.doc_contributor[index])]

    def document_text(self, index: int) -> str:
        """The normalised text of document ``index``, as indexed.

        Normalisation is idempotent, so indexing this text again (to merge
        segments, say) yields the same corpus bytes.
        """
        if self._closed:
            raise CorpusError("segment is closed")
        start = int(self.doc_starts[index]) + 1  # skip the leading pad space
        return self._text[start : start + self._doc_sizes[index]].decode("utf-8")

    def signatures(self) -> npt.NDArray[np.uint32]:
        """MinHash signatures, one row per document (computed from the text, once, for
        segments built before they were stored)."""
        if self._closed:
            raise CorpusError("segment is closed")
        if self._signatures is None:
            self._signatures = corpus_signatures(self._text[:], self.doc_starts)
        return self._signatures

    def doc_id(self, index: int) -> str:
        """Id of document ``index``."""
        return self._doc_ids[index]

    def doc_ids_of(self, doc_indices: npt.NDArray[np.int64]) -> list[str]:
        """Ids of the documents in ``doc_indices`` (vectorised)."""
        ids: list[str] = self._doc_id_array[doc_indices].tolist()
        return ids

    def contributor_of(self, doc_indices: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """Index into ``info.contributors`` of each document in ``doc_indices``."""
        return self.doc_contributor[doc_indices]

    # Queries. Patterns are normalised text (``normalise_bytes``) made of whole
    # words; an occurrence counts only where the pattern is word-aligned in the
    # corpus (``b"cat"`` does not occur in ``b"concat"``).

    def count(self, pattern: bytes) -> int:
        """Exact number of word-aligned occurrences of ``pattern`` in the corpus."""
        lo, hi = self.suffix_range(_padded(pattern))
        return hi - lo

    def occurrences(self, pattern: bytes, limit: int) -> list[int]:
        """Document index of up to ``limit`` occurrences of ``pattern``, sorted.

        Which occurrences are returned when there are more than ``limit`` is
        deterministic (evenly spaced over the suffix-array range).
        """
        lo, hi = self.suffix_range(_padded(pattern))
        return sorted(int(doc) for doc in self.range_documents(lo, hi, limit))

    # Low-level primitives used by the span finder. ``padded`` means a byte
    # string that begins with a space, as stored in corpus.bin.

    def suffix_range(self, padded: bytes) -> tuple[int, int]:
        """Half-open range of suffix-array entries whose suffix starts with ``padded``."""
        if self._closed:
            raise CorpusError("segment is closed")
        sa, text, size = self._sa, self._text, len(padded)
        lo, hi, upper = 0, self._words, self._words
        while lo < hi:
            mid = (lo + hi) >> 1
            start = sa[mid]
            probe = text[start : start + size]
            if probe < padded:
                lo = mid + 1
            else:
                if probe != padded:
                    upper = mid  # a strictly greater suffix bounds the upper search too
                hi = mid
        first, hi = lo, upper
        while lo < hi:
            mid = (lo + hi) >> 1
            start = sa[mid]
            if text[start : start + size] == padded:
                lo = mid + 1
            else:
                hi = mid
        return first, lo

    def _lower_bound(self, padded: bytes) -> int:
        """First suffix-array entry whose suffix is not below ``padded`` (one binary search)."""
        if self._closed:
            raise CorpusError("segment is closed")
        sa, text, size = self._sa, self._text, len(padded)
        lo, hi = 0, self._words
        while lo < hi:
            mid = (lo + hi) >> 1
            start = sa[mid]
            if text[start : start + size] < padded:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def contains(self, padded: bytes) -> bool:
        """Whether ``padded`` occurs at some word start (one binary search)."""
        lo = self._lower_bound(padded)
        if lo == self._words:
            return False
        start = self._sa[lo]
        return self._text[start : start + len(padded)] == padded

    def longest_prefix(self, padded: bytes) -> int:
        """Length in bytes of the longest prefix of ``padded`` found at some word start."""
        lo = self._lower_bound(padded)
        sa, text, size = self._sa, self._text, len(padded)
        # The suffixes sharing the longest prefix with ``padded`` sort next to it.
        best = 0
        for index in (lo - 1, lo):
            if 0 <= index < self._words:
                start = sa[index]
                best = max(best, _common_prefix(text[start : start + size], padded))
        return best

    def range_documents(self, lo: int, hi: int, limit: int) -> npt.NDArray[np.int64]:
        """Document indices of suffix-array entries ``lo:hi`` (evenly sampled down to ``limit``)."""
        total = hi - lo
        if total <= 0 or limit <= 0:
            return np.empty(0, dtype=np.int64)
        if total <= limit:
            positions = self.suffix_array[lo:hi]
        else:
            positions = self.suffix_array[lo + np.arange(limit, dtype=np.int64) * total // limit]
        return np.searchsorted(self.doc_starts, positions, side="right").astype(np.int64) - 1

    def shingles_present(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """For each window hash (see ``word_window_hashes``), whether the corpus holds it."""
        shingles = self.shingles
        if len(shingles) == 0:
            return np.zeros(len(hashes), dtype=np.bool_)
        fingerprints = shingle_fingerprints(hashes)
        index = np.minimum(np.searchsorted(shingles, fingerprints), len(shingles) - 1)
        found: npt.NDArray[np.bool_] = shingles[index] == fingerprints
        return found


def _padded(pattern: bytes) -> bytes:
    if not pattern or pattern[:1] == b" " or pattern[-1:] == b" ":
        raise ValueError("pattern must be non-empty normalised text")
    return b" " + pattern + b" "


def _common_prefix(left: bytes, right: bytes) -> int:
    """Length of the common prefix; slice comparisons keep the work in C."""
    size = min(len(left), len(right))
    if left[:size] == right[:size]:
        return size
    lo, hi = 0, size  # left[:lo] == right[:lo] and left[:hi] != right[:hi]
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if left[lo:mid] == right[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
