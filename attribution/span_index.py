"""On-disk span index segments for ``spans/1``: a word-level suffix array over a corpus.

A segment is one directory::

    segment.json   format version, counts, sizes, SHA-256 of every other file
    corpus.bin     for each document: b" " + normalised UTF-8 text + b" " + b"\\xff"
    sa.npy         suffix array restricted to word starts (the space before each
                   word), sorted by suffix; int32 when the corpus is < 2 GiB
    docs.npy       int64 start offset of each document in corpus.bin (sorted)
    docs.json      document ids, contributor of each document, sizes
    shingles.npy   sorted distinct uint64 hashes of every ``shingle_words``-word window

Padding each document with spaces makes every word, including the first and the
last, sit between two spaces, so a word-aligned pattern is simply
``b" " + words + b" "`` and only suffixes that start at a space need to be in the
array (about one in six bytes). 0xFF never occurs in UTF-8, so no match crosses a
document boundary.

A reader memory-maps everything; a query touches only the pages it compares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

FORMAT_VERSION = 1
DEFAULT_SHINGLE_WORDS = 5
SEPARATOR = 0xFF


class CorpusError(Exception):
    """A corpus cannot be indexed, or a segment on disk is missing, corrupt or truncated."""


@dataclass(frozen=True)
class CorpusDocument:
    """One contributor document to index. ``doc_id`` must be unique within a segment."""

    doc_id: str
    contributor: str
    text: str


@dataclass(frozen=True)
class SegmentInfo:
    """What ``segment.json`` says about a segment."""

    directory: Path
    format_version: int
    documents: int
    contributors: tuple[str, ...]  # distinct contributor ids, sorted
    corpus_bytes: int  # size of corpus.bin
    words: int  # word starts = entries of the suffix array
    shingle_words: int
    digest: str  # hex SHA-256 of segment.json; it pins every file's SHA-256


def build_segment(
    directory: Path,
    documents: Iterable[CorpusDocument],
    *,
    progress: Callable[[int], None] | None = None,
    shingle_words: int = DEFAULT_SHINGLE_WORDS,
) -> SegmentInfo:
    """Normalise ``documents``, index them and write a segment at ``directory``.

    ``directory`` must not exist yet. Everything is written into a temporary
    sibling directory which is renamed into place only when complete, so a
    crash or an error never leaves a partial segment at ``directory``.
    ``progress`` is called with the number of documents read so far
    (periodically, and once at the end of reading). ``shingle_words`` is the
    window of the pre-filter: queries with ``min_words >= shingle_words`` use it.

    Raises ``CorpusError`` for an empty corpus, a document that is empty after
    normalisation, an empty or duplicate ``doc_id`` or an empty contributor.
    """
    raise NotImplementedError


class Segment:
    """A read-only, memory-mapped segment. Use ``Segment.open``; close it (or use ``with``)."""

    info: SegmentInfo

    @classmethod
    def open(cls, directory: Path) -> Segment:
        """Map a segment; checks the format version, file sizes and array shapes.

        Raises ``CorpusError`` with a clear message when a file is missing,
        truncated or inconsistent. Content checksums are ``verify()``'s job.
        """
        raise NotImplementedError

    def verify(self) -> None:
        """Check the SHA-256 of every file against ``segment.json`` (reads every byte)."""
        raise NotImplementedError

    def close(self) -> None:
        """Unmap the files. Further queries fail."""
        raise NotImplementedError

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
        raise NotImplementedError

    def document(self, index: int) -> tuple[str, str]:
        """``(doc_id, contributor)`` of document ``index``."""
        raise NotImplementedError

    def contributor_of(self, doc_indices: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """Index into ``info.contributors`` of each document in ``doc_indices``."""
        raise NotImplementedError

    # Queries. Patterns are normalised text (``normalise_bytes``) made of whole
    # words; an occurrence counts only where the pattern is word-aligned in the
    # corpus (``b"cat"`` does not occur in ``b"concat"``).

    def count(self, pattern: bytes) -> int:
        """Exact number of word-aligned occurrences of ``pattern`` in the corpus."""
        raise NotImplementedError

    def occurrences(self, pattern: bytes, limit: int) -> list[int]:
        """Document index of up to ``limit`` occurrences of ``pattern``, sorted.

        Which occurrences are returned when there are more than ``limit`` is
        deterministic (evenly spaced over the suffix-array range).
        """
        raise NotImplementedError

    # Low-level primitives used by the span finder. ``padded`` means a byte
    # string that begins with a space, as stored in corpus.bin.

    def suffix_range(self, padded: bytes) -> tuple[int, int]:
        """Half-open range of suffix-array entries whose suffix starts with ``padded``."""
        raise NotImplementedError

    def longest_prefix(self, padded: bytes) -> int:
        """Length in bytes of the longest prefix of ``padded`` found at some word start."""
        raise NotImplementedError

    def range_documents(self, lo: int, hi: int, limit: int) -> npt.NDArray[np.int64]:
        """Document indices of suffix-array entries ``lo:hi`` (evenly sampled down to ``limit``)."""
        raise NotImplementedError

    def shingles_present(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """For each window hash (see ``window_hashes``), whether the corpus holds it."""
        raise NotImplementedError


def window_hashes(
    data: bytes, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """Hash ``data[starts[i]:ends[i]]`` for every i.

    Vectorised; the same function hashes corpus windows at build time and output
    windows at query time, so equal byte strings always get equal hashes.
    """
    raise NotImplementedError
