"""Writing ``spans/1`` segments: normalise, concatenate, suffix-sort, hash windows.

The layout is described in ``attribution.span_index``. A segment is written
into a temporary sibling directory and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydivsufsort import divsufsort

from attribution.normalise import normalise_bytes
from attribution.span_format import (
    CORPUS_FILE,
    DATA_FILES,
    DEFAULT_SHINGLE_WORDS,
    DOCS_FILE,
    DOCS_JSON,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MINHASH_FILE,
    SA_FILE,
    SEPARATOR,
    SHINGLES_FILE,
    SPACE,
    CorpusDocument,
    CorpusError,
    SegmentInfo,
    sha256_file,
)
from attribution.span_hashing import shingle_fingerprints, word_window_hashes
from attribution.span_minhash import PERMUTATIONS, corpus_signatures

_PROGRESS_EVERY = 1000  # documents between progress calls
_FILTER_CHUNK = 1 << 24  # suffix-array entries filtered per numpy pass


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
    directory = Path(directory)
    if shingle_words < 1:
        raise CorpusError("shingle_words must be at least 1")
    if directory.exists():
        raise CorpusError(f"segment directory {directory.name!r} already exists")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        manifest, contributors = _write_segment(staging, documents, progress, shingle_words)
        _fsync_directory(staging)
        os.rename(staging, directory)
        _fsync_directory(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SegmentInfo(
        directory=directory,
        format_version=FORMAT_VERSION,
        documents=manifest["documents"],
        contributors=tuple(contributors),
        corpus_bytes=manifest["corpus_bytes"],
        words=manifest["words"],
        shingle_words=shingle_words,
        digest=sha256_file(directory / MANIFEST),
    )


def _write_segment(
    staging: Path,
    documents: Iterable[CorpusDocument],
    progress: Callable[[int], None] | None,
    shingle_words: int,
) -> tuple[dict[str, Any], list[str]]:
    doc_ids: list[str] = []
    seen: set[str] = set()
    contributor_names: list[str] = []
    sizes: list[int] = []
    starts: list[int] = []
    duplicates: list[list[Any]] = []
    offset = 0
    with open(staging / CORPUS_FILE, "wb") as corpus_file:
        for document in documents:
            _check_document(document, seen)
            text = normalise_bytes(document.text)
            if not text:
                raise CorpusError(f"document {document.doc_id!r} is empty after normalisation")
            # Spaces around the text put every word, first and last included, between
            # two spaces, so word-aligned patterns are b" " + words + b" ".
            corpus_file.write(b" " + text + b" " + bytes([SEPARATOR]))
            if document.duplicate_of is not None:
                duplicates.append([len(doc_ids), document.duplicate_of])
            seen.add(document.doc_id)
            doc_ids.append(document.doc_id)
            contributor_names.append(document.contributor)
            sizes.append(len(text))
            starts.append(offset)
            offset += len(text) + 3
            if progress is not None and len(doc_ids) % _PROGRESS_EVERY == 0:
                progress(len(doc_ids))
        _fsync(corpus_file)
    if not doc_ids:
        raise CorpusError("the corpus has no documents")
    if progress is not None:
        progress(len(doc_ids))
    contributors = sorted(set(contributor_names))
    index_of = {name: i for i, name in enumerate(contributors)}
    corpus = (staging / CORPUS_FILE).read_bytes()
    doc_starts = np.asarray(starts, dtype=np.int64)
    suffixes = _word_suffix_array(corpus)
    _save_npy(staging / SA_FILE, suffixes)
    del suffixes
    _save_npy(staging / DOCS_FILE, doc_starts)
    shingles = _shingles(corpus, shingle_words)
    _save_npy(staging / SHINGLES_FILE, shingles)
    _save_npy(staging / MINHASH_FILE, corpus_signatures(corpus, doc_starts).ravel())
    docs_json: dict[str, Any] = {
        "ids": doc_ids,
        "contributors": contributors,
        "contributor_of": [index_of[name] for name in contributor_names],
        "sizes": sizes,
    }
    if duplicates:  # absent when empty, so segments of original documents look as before
        docs_json["duplicate_of"] = duplicates
    with open(staging / DOCS_JSON, "w", encoding="utf-8") as handle:
        json.dump(docs_json, handle, separators=(",", ":"))
        _fsync(handle)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "documents": len(doc_ids),
        "contributors": len(contributors),
        "corpus_bytes": len(corpus),
        "words": _npy_length(staging / SA_FILE),
        "shingles": len(shingles),
        "shingle_words": shingle_words,
        "minhash_permutations": PERMUTATIONS,
        "files": {name: _file_record(staging / name) for name in (*DATA_FILES, MINHASH_FILE)},
    }
    with open(staging / MANIFEST, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        _fsync(handle)
    return manifest, contributors


def _check_document(document: CorpusDocument, seen: set[str]) -> None:
    if not isinstance(document.doc_id, str) or not document.doc_id:
        raise CorpusError("every document needs a non-empty doc_id")
    if document.doc_id in seen:
        raise CorpusError(f"duplicate doc_id {document.doc_id!r}")
    if not isinstance(document.contributor, str) or not document.contributor:
        raise CorpusError(f"document {document.doc_id!r} has no contributor")
    if not isinstance(document.text, str):
        raise CorpusError(f"document {document.doc_id!r}: text must be a string")
    if document.duplicate_of is not None and (
            not isinstance(document.duplicate_of, str) or not document.duplicate_of):
        raise CorpusError(f"document {document.doc_id!r}: duplicate_of must name a contributor")
    try:
        # Ids end up in canonical evidence, which needs them as UTF-8.
        document.doc_id.encode("utf-8")
        document.contributor.encode("utf-8")
        (document.duplicate_of or "").encode("utf-8")
    except UnicodeEncodeError:
        raise CorpusError(f"document {document.doc_id!r}: ids must be valid Unicode") from None


def _word_suffix_array(corpus: bytes) -> npt.NDArray[np.signedinteger[Any]]:
    """Suffix array of ``corpus`` restricted to the spaces that begin a word, in order.

    Filtering the full array keeps the suffix order and shrinks it about sixfold.
    """
    full = divsufsort(corpus)
    data = np.frombuffer(corpus, dtype=np.uint8)
    word_start = data == SPACE
    # The space closing a document is followed by the separator and begins nothing.
    word_start[:-1] &= data[1:] != SEPARATOR
    dtype = np.int32 if len(corpus) < 2**31 else np.int64
    # In slices, so the boolean gather never costs a second corpus-sized temporary.
    kept = [
        full[begin : begin + _FILTER_CHUNK][word_start[full[begin : begin + _FILTER_CHUNK]]]
        for begin in range(0, len(full), _FILTER_CHUNK)
    ]
    del full
    return np.concatenate(kept).astype(dtype, copy=False)


def _shingles(corpus: bytes, words: int) -> npt.NDArray[np.uint32]:
    """Sorted distinct fingerprints of every ``words``-word window inside one document."""
    data = np.frombuffer(corpus, dtype=np.uint8)
    spaces = np.flatnonzero(data == SPACE)
    hashes = word_window_hashes(data, spaces, words)
    # A window crosses documents iff one of its first ``words`` spaces closes a document
    # (is followed by the separator). data[1:][spaces] reads data[spaces + 1].
    closing = np.zeros(len(spaces) + 1, dtype=np.int32)
    np.cumsum(data[1:][spaces] == SEPARATOR, out=closing[1:])
    inside = closing[words : len(hashes) + words] == closing[: len(hashes)]
    del spaces, closing
    fingerprints = np.sort(shingle_fingerprints(hashes[inside]))
    if len(fingerprints) == 0:
        return fingerprints
    # np.unique is far slower than sort + neighbour comparison on large integer arrays.
    distinct = np.empty(len(fingerprints), dtype=bool)
    distinct[0] = True
    np.not_equal(fingerprints[1:], fingerprints[:-1], out=distinct[1:])
    return fingerprints[distinct]


def _save_npy(path: Path, array: npt.NDArray[Any]) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        _fsync(handle)


def _npy_length(path: Path) -> int:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return int(array.shape[0])


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _fsync(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
