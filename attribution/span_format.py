"""Shared definitions of the ``spans/1`` segment format (see ``attribution.span_index``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "edged/span-segment"
FORMAT_VERSION = 1
DEFAULT_SHINGLE_WORDS = 5
SEPARATOR = 0xFF
SPACE = 0x20
CORPUS_FILE = "corpus.bin"
SA_FILE = "sa.npy"
DOCS_FILE = "docs.npy"
DOCS_JSON = "docs.json"
SHINGLES_FILE = "shingles.npy"
MINHASH_FILE = "minhash.npy"
MANIFEST = "segment.json"
DATA_FILES = (CORPUS_FILE, SA_FILE, DOCS_FILE, DOCS_JSON, SHINGLES_FILE)
# Written by every build since near-duplicate detection; segments without it still open
# (their signatures are computed from the text when needed).
OPTIONAL_FILES = (MINHASH_FILE,)
_MANIFEST_INTS = ("version", "documents", "contributors", "corpus_bytes", "words", "shingles",
                  "shingle_words")


class CorpusError(Exception):
    """A corpus cannot be indexed, or a segment on disk is missing, corrupt or truncated."""


@dataclass(frozen=True)
class CorpusDocument:
    """One contributor document to index. ``doc_id`` must be unique within a segment.

    ``duplicate_of`` names the contributor credited for a document found at ingest
    to be a near-duplicate of one indexed earlier (``attribution.span_duplicates``);
    ``None`` for original documents.
    """

    doc_id: str
    contributor: str
    text: str
    duplicate_of: str | None = None


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


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse and check ``segment.json`` and the sizes of the files it lists."""
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"{directory.name}: not a span segment ({MANIFEST} missing)") from None
    except OSError as error:
        raise CorpusError(f"{MANIFEST} cannot be read: {error.strerror}") from None
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise CorpusError(f"{MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorpusError(f"{MANIFEST} is not a span segment manifest")
    for key in _MANIFEST_INTS:
        value = manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CorpusError(f"{MANIFEST}: {key!r} must be a non-negative integer")
    if manifest["version"] != FORMAT_VERSION:
        raise CorpusError(f"segment format version {manifest['version']} is not supported "
                          f"(this build reads version {FORMAT_VERSION})")
    if manifest["documents"] < 1:
        raise CorpusError(f"{MANIFEST}: a segment holds at least one document")
    if manifest["shingle_words"] < 1:
        raise CorpusError(f"{MANIFEST}: shingle_words must be at least 1")
    if manifest["corpus_bytes"] < 4 * manifest["documents"]:  # b" x \xff" is the shortest
        raise CorpusError(f"{MANIFEST}: corpus too small for {manifest['documents']} documents")
    files = manifest.get("files")
    if not isinstance(files, dict) or not set(DATA_FILES) <= set(files) \
            or not set(files) <= set(DATA_FILES + OPTIONAL_FILES):
        raise CorpusError(f"{MANIFEST}: 'files' must list {', '.join(DATA_FILES)} "
                          f"(and optionally {', '.join(OPTIONAL_FILES)})")
    for name in files:
        record = files[name]
        if not (isinstance(record, dict) and isinstance(record.get("bytes"), int)
                and isinstance(record.get("sha256"), str)):
            raise CorpusError(f"{MANIFEST}: bad record for {name}")
        try:
            size = (directory / name).stat().st_size
        except FileNotFoundError:
            raise CorpusError(f"{name} is missing from the segment") from None
        if size != record["bytes"]:
            raise CorpusError(f"{name} is {size} bytes, {MANIFEST} says {record['bytes']}: "
                              "truncated or modified")
    if files[CORPUS_FILE]["bytes"] != manifest["corpus_bytes"]:
        raise CorpusError(f"{MANIFEST}: corpus size disagrees with its file record")
    manifest["digest"] = hashlib.sha256(raw).hexdigest()
    return manifest


def read_docs_json(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Parse and check ``docs.json`` against the manifest."""
    try:
        docs = json.loads(path.read_bytes())
    except ValueError:
        raise CorpusError(f"{DOCS_JSON} is not valid JSON") from None
    count = manifest["documents"]
    if not isinstance(docs, dict) or not all(
        isinstance(docs.get(key), list) for key in ("ids", "contributors", "contributor_of",
                                                     "sizes")
    ):
        raise CorpusError(f"{DOCS_JSON} lacks ids, contributors, contributor_of or sizes")
    names = docs["contributors"]
    if (len(docs["ids"]) != count or len(docs["contributor_of"]) != count
            or len(docs["sizes"]) != count or len(names) != manifest["contributors"]):
        raise CorpusError(f"{DOCS_JSON} does not describe {count} documents")
    if not all(isinstance(i, int) and 0 <= i < len(names) for i in docs["contributor_of"]):
        raise CorpusError(f"{DOCS_JSON}: contributor_of out of range")
    if not all(isinstance(s, int) for s in docs["sizes"]) or not all(
        isinstance(x, str) for x in docs["ids"] + names
    ):
        raise CorpusError(f"{DOCS_JSON}: ids and contributors must be strings, sizes integers")
    duplicates = docs.setdefault("duplicate_of", [])
    if not isinstance(duplicates, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int)
        and 0 <= pair[0] < count and isinstance(pair[1], str) and pair[1]
        for pair in duplicates
    ):
        raise CorpusError(f"{DOCS_JSON}: duplicate_of must be [document index, contributor] "
                          "pairs")
    return docs
