"""Datanets: named collections of contributor documents, indexed for ``spans/1``.

Why one module of ~460 lines: every change to a datanet (create, add, remove a
contributor, compact, delete) is the store's one job of rewriting ``datanet.json`` and
its segment list under one lock by the compaction rule below, and the duplicate policy
and state digest are part of that state. Parsing uploads (``edged/datanet_documents.py``)
and the child-process index build (``edged/datanet_build.py``) are apart.

Layout under ``<data_dir>/datanets/<name>/``::

    datanet.json          contributors, segments, removed contributors
    segments/seg-000001/  one immutable span-index segment per add

Adding documents never rebuilds what exists: each add builds one new segment
from just the new documents, and queries search every segment. **Compaction
rule:** when an add would leave more than ``MAX_SEGMENTS`` segments, or on an
explicit compact, all segments are merged into one, dropping the documents of
removed contributors. Removing a contributor takes effect at once (it is
excluded from every query, so the next receipts no longer credit it); its
documents physically go at the next compaction. Adding documents for a removed
contributor compacts first, so their old documents do not come back.

Every change builds into a temporary folder and then replaces ``datanet.json``
atomically: a failed add or a crash leaves the datanet as it was.

**Duplicates.** Every add is screened against what the datanet already holds
(``attribution.span_duplicates``): the report says, per document, how many of its
words other contributors already hold in spans of at least ``span_min_words``
words, and whether it is a near-duplicate (MinHash similarity of word 2-grams of
at least 0.5) of an earlier document, and whose. Near-duplicates are recorded in
the segment; the datanet's ``duplicates`` policy (``first``, the default, or
``split``, fixed at creation) decides who is credited for duplicated spans, and
the policy and a digest of the datanet's state go into every receipt's
attribution parameters. Copies of a removed contributor's documents are excluded
with it and dropped with it at compaction.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from attribution.commitments import digest
from attribution.span_duplicates import DuplicateFinding, screen_documents
from attribution.span_index import CorpusDocument, CorpusError, Segment
from attribution.spans import DUPLICATE_POLICIES, DuplicatePolicy, SpanSource
from edged.datanet_build import build_in_child
from edged.datanet_documents import MAX_DOCUMENT_ID, is_unicode_text
from edged.errors import Conflict, InvalidRequest, NotFound
from edged.files import atomic_write_text
from edged.manifest import validate_name

logger = logging.getLogger(__name__)

MAX_SEGMENTS = 8
CONTRIBUTOR_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}$")
PAYOUT_PATTERN = re.compile(r"^0x[0-9a-fA-F]{40}$")
DEFAULT_DUPLICATES: DuplicatePolicy = "first"


AddProgress = Callable[[str, int], None]
"""``progress(stage, documents_done)`` during ``DatanetStore.add_documents``: stage
``screening`` (0) first, then ``indexing`` with the documents the index build has read
so far (repeated; the last has them all, before the suffix sort), ``indexed`` (all) once
the new segment is complete, and ``compacting`` when the add merges the datanet's
segments."""


class DatanetNotFound(NotFound):
    code = "datanet_not_found"


def validate_contributor(contributor: str) -> str:
    if not isinstance(contributor, str) or not CONTRIBUTOR_PATTERN.fullmatch(contributor) \
            or ".." in contributor:
        raise InvalidRequest("contributor ids are 1-128 characters of letters, digits and "
                             "_ . : @ + -, starting with a letter or digit",
                             param="contributor")
    return contributor


def validate_payout(payout: str | None) -> str | None:
    if payout is not None and not PAYOUT_PATTERN.fullmatch(payout):
        raise InvalidRequest("a payout address is 0x followed by 40 hex digits",
                             param="payout")
    return payout


def validate_duplicates(policy: str) -> DuplicatePolicy:
    """A datanet's duplicate policy: ``first`` or ``split``."""
    if policy == "first":
        return "first"
    if policy == "split":
        return "split"
    raise InvalidRequest(f"duplicates must be one of {list(DUPLICATE_POLICIES)}",
                         param="duplicates")


@dataclass(frozen=True)
class AddReport:
    datanet: str
    documents: int
    bytes: int
    contributors: int  # contributors of the datanet after the add
    segments: int
    seconds: float
    findings: tuple[DuplicateFinding, ...] = ()  # one per document added, in order

    def to_wire(self) -> dict[str, Any]:
        """The API's answer: totals, and the documents found (partly) held already."""
        duplicated = [finding for finding in self.findings if finding.duplicated]
        return {"datanet": self.datanet, "documents": self.documents, "bytes": self.bytes,
                "contributors": self.contributors, "segments": self.segments,
                "seconds": round(self.seconds, 3),
                "duplicates": {
                    "documents": len(duplicated),
                    "near_duplicates": sum(f.near_duplicate_of is not None for f in duplicated),
                    "words": sum(f.words for f in self.findings),
                    "held_words": sum(f.held_words for f in self.findings),
                    "findings": [finding.to_wire() for finding in duplicated]}}


@dataclass
class DatanetState:
    """What ``datanet.json`` holds."""

    name: str
    created: int
    contributors: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    next_segment: int = 1
    duplicates: DuplicatePolicy = DEFAULT_DUPLICATES  # who is credited for duplicated spans

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created": self.created, "contributors": self.contributors,
                "removed": self.removed, "segments": self.segments,
                "next_segment": self.next_segment, "duplicates": self.duplicates}

    def public_view(self) -> dict[str, Any]:
        active = {k: v for k, v in self.contributors.items() if k not in self.removed}
        return {"name": self.name, "created": self.created, "segments": len(self.segments),
                "duplicates": self.duplicates,
                "documents": sum(c["documents"] for c in active.values()),
                "bytes": sum(c["bytes"] for c in active.values()),
                "contributors": [{"id": k, **v} for k, v in sorted(active.items())],
                "removed_contributors": sorted(self.removed)}


class DatanetStore:
    """All datanets of a node. Methods block (index builds): call them from a thread."""

    def __init__(self, root: Path, *, span_min_words: int = 5) -> None:
        self.root = root
        self.span_min_words = span_min_words  # exact duplicates are spans this long
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._open_segments: dict[Path, Segment] = {}
        self._states: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._remove_staging_leftovers()

    def _remove_staging_leftovers(self) -> None:
        """A crash during an index build can leave a hidden staging folder (never a half
        segment under a real name); nothing refers to those, so they go at start-up."""
        for staging in self.root.glob("*/segments/.*"):
            if staging.is_dir() and not staging.is_symlink():
                shutil.rmtree(staging, ignore_errors=True)

    def _dir(self, name: str) -> Path:
        path = self.root / validate_name(name)
        if path.is_symlink() or not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidRequest("path escapes the datanets directory")
        return path

    def _read(self, name: str) -> DatanetState:
        """The datanet's state (a fresh copy; parsed once per file version, since every
        attributed request reads it)."""
        try:
            path = self._dir(name) / "datanet.json"
            stat = path.stat()
        except (InvalidRequest, FileNotFoundError):
            raise DatanetNotFound(f"datanet {name!r} not found", param="datanet") from None
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._states.get(name)
        if cached is None or cached[0] != version:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise DatanetNotFound(f"datanet {name!r} not found", param="datanet") from None
            cached = (version, data)
            self._states[name] = cached
        return DatanetState(**copy.deepcopy(cached[1]))

    def _write(self, state: DatanetState) -> None:
        atomic_write_text(self._dir(state.name) / "datanet.json",
                          json.dumps(state.to_json(), indent=2, sort_keys=True), mode=0o600)

    def create(self, name: str, *, duplicates: str = DEFAULT_DUPLICATES) -> DatanetState:
        """A new, empty datanet; ``duplicates`` is its policy for duplicated spans."""
        policy = validate_duplicates(duplicates)
        with self._lock:
            folder = self._dir(name)
            if (folder / "datanet.json").exists():
                raise Conflict(f"a datanet named {name!r} exists already", param="name")
            (folder / "segments").mkdir(parents=True, exist_ok=True)
            state = DatanetState(name=name, created=int(time.time()), duplicates=policy)
            self._write(state)
            logger.info("datanet %s created", name)
            return state

    def get(self, name: str) -> DatanetState:
        return self._read(name)

    def all(self) -> list[DatanetState]:
        states = []
        for path in sorted(self.root.iterdir()):
            if (path / "datanet.json").is_file():
                try:
                    states.append(self._read(path.name))
                except (InvalidRequest, NotFound, ValueError, TypeError):
                    logger.warning("skipping an unreadable datanet: %s", path.name)
        return states

    def remove(self, name: str, *, in_use_by: Sequence[str] = ()) -> None:
        """Delete a datanet; refused while models (``in_use_by``) still attribute to it."""
        if in_use_by:
            raise Conflict(f"datanet {name!r} is used by models {sorted(in_use_by)}; update "
                           "them first", param="name")
        with self._lock:
            folder = self._dir(name)
            self._read(name)
            self._forget_segments(folder)
            shutil.rmtree(folder)
            logger.info("datanet %s removed", name)

    def add_documents(self, name: str, contributor: str, documents: Sequence[tuple[str, str]],
                      *, payout: str | None = None,
                      progress: AddProgress | None = None) -> AddReport:
        """Index ``(document id, text)`` pairs of one contributor as a new segment.

        The documents are first screened against the datanet (exact spans other
        contributors hold, near-duplicate documents); near-duplicates are recorded
        in the new segment, and the report carries one finding per document.
        ``progress`` (see ``AddProgress``) is called from this thread as it goes."""
        validate_contributor(contributor)
        validate_payout(payout)
        if not documents:
            raise InvalidRequest("no documents to add", param="documents")
        for doc_id, text in documents:
            if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_DOCUMENT_ID:
                raise InvalidRequest("document ids are 1-256 characters", param="documents")
            if not isinstance(text, str) or not text.strip():
                raise InvalidRequest(f"document {doc_id!r} is empty", param="documents")
            if "\x00" in text:
                raise InvalidRequest(f"document {doc_id!r} is binary", param="documents")
            if not is_unicode_text(doc_id) or not is_unicode_text(text):
                raise InvalidRequest(f"document {doc_id!r} is not valid Unicode text",
                                     param="documents")
        started = time.perf_counter()
        with self._lock:  # reserve a segment name; the build itself runs without the lock
            state = self._read(name)
            if contributor in state.removed:
                state = self._compact(state)
            segment_name = f"seg-{state.next_segment:06d}"
            state.next_segment += 1
            self._write(state)
        corpus = [CorpusDocument(doc_id, contributor, text)
                  for doc_id, text in _unique_ids(contributor, documents)]
        # Queries (attribution on every request) keep running while this screens and builds.
        segment_dir = self._dir(name) / "segments" / segment_name
        try:
            if progress is not None:
                progress("screening", 0)
            held, excluded = self.segments_for([name])
            findings = screen_documents(corpus, held, min_words=self.span_min_words,
                                        excluded_contributors=excluded)
            corpus = [CorpusDocument(doc.doc_id, doc.contributor, doc.text,
                                     duplicate_of=finding.near_duplicate_of)
                      for doc, finding in zip(corpus, findings, strict=True)]
            self._build(segment_dir, corpus, None if progress is None
                        else functools.partial(progress, "indexing"))
        except BaseException:
            shutil.rmtree(segment_dir, ignore_errors=True)  # never leave half a segment
            raise
        if progress is not None:
            progress("indexed", len(corpus))
        size = sum(len(text.encode("utf-8")) for _, text in documents)
        with self._lock:
            state = self._read(name)
            entry = state.contributors.setdefault(contributor, {"payout": None, "documents": 0,
                                                                "bytes": 0})
            entry["documents"] += len(documents)
            entry["bytes"] += size
            if payout is not None:
                entry["payout"] = payout
            state.segments.append(segment_name)
            self._write(state)
            if len(state.segments) > MAX_SEGMENTS:
                if progress is not None:
                    progress("compacting", len(documents))
                state = self._compact(state)
        logger.info("datanet %s: %d documents added as %s (%d near-duplicates)", name,
                    len(documents), segment_name,
                    sum(f.near_duplicate_of is not None for f in findings))
        return AddReport(name, len(documents), size, len(state.contributors),
                         len(state.segments), time.perf_counter() - started, tuple(findings))

    def remove_contributor(self, name: str, contributor: str) -> DatanetState:
        with self._lock:
            state = self._read(name)
            if contributor not in state.contributors or contributor in state.removed:
                raise NotFound(f"no contributor {contributor!r} in {name!r}",
                               param="contributor")
            state.removed.append(contributor)
            self._write(state)
            logger.info("datanet %s: a contributor was removed", name)
            return state

    def compact(self, name: str) -> DatanetState:
        with self._lock:
            return self._compact(self._read(name))

    def _compact(self, state: DatanetState) -> DatanetState:
        """Merge every segment into one, without removed contributors' documents (and the
        near-duplicates of theirs). Document order, hence ``first``, is kept."""
        folder = self._dir(state.name) / "segments"
        removed = set(state.removed)
        documents = [doc for doc in self._iter_documents(folder, state.segments)
                     if doc.contributor not in removed and doc.duplicate_of not in removed]
        old = list(state.segments)
        state.segments = []
        if documents:
            segment_name = f"seg-{state.next_segment:06d}"
            self._build(folder / segment_name, documents, None)
            state.segments = [segment_name]
            state.next_segment += 1
        for contributor in removed:
            state.contributors.pop(contributor, None)
        state.removed = []
        self._write(state)
        for segment_name in old:
            self._forget_segments(folder / segment_name)
            shutil.rmtree(folder / segment_name, ignore_errors=True)
        logger.info("datanet %s compacted into %d segment(s)", state.name, len(state.segments))
        return state

    def _iter_documents(self, folder: Path, names: Iterable[str]) -> Iterator[CorpusDocument]:
        seen: set[str] = set()
        for segment_name in names:
            segment = self._segment(folder / segment_name)
            for index in range(segment.documents):
                doc_id, contributor = segment.document(index)
                if doc_id in seen:  # the same file name added twice, in two segments
                    doc_id = f"{doc_id}#{segment_name}"
                seen.add(doc_id)
                yield CorpusDocument(doc_id, contributor, segment.document_text(index),
                                     duplicate_of=segment.duplicate_of.get(index))

    # Every build runs in a child process (edged/datanet_build.py); an attribute, so that
    # a test can make one fail.
    _build = staticmethod(build_in_child)


    def _segment(self, directory: Path) -> Segment:
        with self._lock:
            segment = self._open_segments.get(directory)
            if segment is None:
                try:
                    segment = Segment.open(directory)
                except CorpusError as exc:
                    raise InvalidRequest(f"datanet index is damaged: {exc}") from None
                self._open_segments[directory] = segment
            return segment

    def _forget_segments(self, under: Path) -> None:
        # Dropped, not closed: an attribution running right now may still hold them. Their
        # maps close when the last reference goes (unlinked files stay readable till then).
        for path in [p for p in self._open_segments if p.is_relative_to(under)]:
            self._open_segments.pop(path)

    def segments_for(self, names: Iterable[str]) -> tuple[list[Segment], frozenset[str]]:
        """Open segments of the named datanets, and the contributors to leave out."""
        segments: list[Segment] = []
        removed: set[str] = set()
        with self._lock:
            for name in names:
                state = self._read(name)
                folder = self._dir(name) / "segments"
                segments += [self._segment(folder / s) for s in state.segments]
                removed.update(state.removed)
        return segments, frozenset(removed)

    def sources_for(self, names: Iterable[str]) -> tuple[list[SpanSource], frozenset[str]]:
        """One ``SpanSource`` per named datanet (its segments oldest first, its duplicate
        policy and state digest), and the contributors to leave out."""
        sources: list[SpanSource] = []
        removed: set[str] = set()
        with self._lock:
            for name in names:
                state = self._read(name)
                folder = self._dir(name) / "segments"
                segments = tuple(self._segment(folder / s) for s in state.segments)
                sources.append(SpanSource(segments, state.duplicates, name,
                                          state_digest(state, segments)))
                removed.update(state.removed)
        return sources, frozenset(removed)

    def payout_addresses(self, names: Iterable[str]) -> dict[str, str]:
        addresses: dict[str, str] = {}
        for name in names:
            for contributor, entry in self._read(name).contributors.items():
                if entry.get("payout"):
                    addresses[contributor] = entry["payout"]
        return addresses

    def close(self) -> None:
        with self._lock:
            for segment in self._open_segments.values():
                segment.close()
            self._open_segments.clear()


def state_digest(state: DatanetState, segments: Sequence[Segment]) -> str:
    """Hex SHA-256 of what decides a datanet's credit: its name, duplicate policy,
    segments (each ``segment.json`` digest pins every file) and removed contributors."""
    return digest({"name": state.name, "duplicates": state.duplicates,
                   "segments": [segment.info.digest for segment in segments],
                   "removed": sorted(state.removed)}).hex()


def _unique_ids(contributor: str, documents: Sequence[tuple[str, str]]
                ) -> list[tuple[str, str]]:
    """Document ids unique within the datanet: ``<contributor>/<id>``, with ``#n`` added to
    repeats inside one add (ids stay data; no path is ever built from them)."""
    seen: dict[str, int] = {}
    unique = []
    for doc_id, text in documents:
        full = f"{contributor}/{doc_id}"
        seen[full] = seen.get(full, 0) + 1
        unique.append((full if seen[full] == 1 else f"{full}#{seen[full]}", text))
    return unique


DATANETS = web.AppKey("datanets", DatanetStore)
"""The node's datanets: ``app[DATANETS]``."""
