"""Span index segments: building, mapping, counting, and refusing bad input."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution import span_hashing
from attribution.normalise import normalise_bytes
from attribution.span_hashing import shingle_fingerprints
from attribution.span_index import (
    CorpusDocument,
    CorpusError,
    Segment,
    build_segment,
    word_window_hashes,
)

VOCABULARY = ["a", "b", "cc", "a.", "é", "ab"]


def naive_count(haystack: bytes, needle: bytes) -> int:
    """Overlapping occurrences of ``needle`` in ``haystack`` (``bytes.count`` skips overlaps)."""
    count, index = 0, haystack.find(needle)
    while index >= 0:
        count += 1
        index = haystack.find(needle, index + 1)
    return count


def naive_word_count(text: str, words: bytes) -> int:
    """Word-aligned occurrences of normalised ``words`` in one document."""
    return naive_count(b" " + normalise_bytes(text) + b" ", b" " + words + b" ")


def documents_strategy(max_docs: int = 5, max_words: int = 25) -> st.SearchStrategy[
    list[CorpusDocument]
]:
    texts = st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=max_words).map(" ".join)
    contributors = st.sampled_from(["x", "y", "z"])
    return st.lists(st.tuples(contributors, texts), min_size=1, max_size=max_docs).map(
        lambda items: [CorpusDocument(f"doc{i}", c, t) for i, (c, t) in enumerate(items)]
    )


def spaces_of(data: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 32)


def segment_of(documents: list[CorpusDocument], root: Path, name: str = "seg",
               shingle_words: int = 5) -> Segment:
    build_segment(root / name, documents, shingle_words=shingle_words)
    return Segment.open(root / name)


@pytest.fixture
def small_segment(tmp_path: Path) -> Iterator[Segment]:
    documents = [
        CorpusDocument("d1", "alice", "The cat sat on the mat. The cat sat."),
        CorpusDocument("d2", "bob", "A cat sat on the mat, concat sat\n\nthere"),
        CorpusDocument("d3", "bob", "ΣΊΣΥΦΟΣ pushed the ﬁne rock"),
    ]
    with segment_of(documents, tmp_path) as segment:
        yield segment


def test_counts_are_word_aligned(small_segment: Segment) -> None:
    assert small_segment.count(b"cat sat") == 2  # "cat sat." is another word; "concat" no cat
    assert small_segment.count(b"cat") == 3
    assert small_segment.count(b"at") == 0
    assert small_segment.count(b"sat on the") == 2
    assert small_segment.count(b"the mat.") == 1
    assert small_segment.count(b"the fine rock") == 1
    assert small_segment.count(b"there") == 1


def test_no_match_crosses_a_document_boundary(small_segment: Segment) -> None:
    assert small_segment.count(b"cat sat.") == 1
    assert small_segment.count(b"sat. a") == 0  # end of d1 + start of d2
    assert small_segment.count("there σίσυφοσ".encode()) == 0


def test_occurrences_and_documents(small_segment: Segment) -> None:
    assert small_segment.occurrences(b"cat", 10) == [0, 0, 1]
    assert len(small_segment.occurrences(b"cat", 2)) == 2
    assert small_segment.occurrences(b"dog", 10) == []
    assert small_segment.document(2) == ("d3", "bob")
    assert small_segment.documents == 3
    assert small_segment.documents_by_contributor == {"alice": 1, "bob": 2}
    assert small_segment.info.contributors == ("alice", "bob")


def test_document_text_round_trips(small_segment: Segment, tmp_path: Path) -> None:
    texts = [small_segment.document_text(i) for i in range(small_segment.documents)]
    assert texts == ["the cat sat on the mat. the cat sat.",
                     "a cat sat on the mat, concat sat there", "σίσυφοσ pushed the fine rock"]
    # Re-indexing the stored text gives the same corpus: what merging segments relies on.
    again = [CorpusDocument(*small_segment.document(i), texts[i]) for i in range(3)]
    build_segment(tmp_path / "again", again)
    corpus = (small_segment.info.directory / "corpus.bin").read_bytes()
    assert (tmp_path / "again" / "corpus.bin").read_bytes() == corpus


def test_longest_prefix_and_contains(small_segment: Segment) -> None:
    assert small_segment.longest_prefix(b" cat sat on the rug ") == len(b" cat sat on the ")
    assert small_segment.longest_prefix(b" zebra ") == 1  # just the space
    assert small_segment.contains(b" on the mat, ")
    assert not small_segment.contains(b" on the mat; ")


def test_patterns_must_be_normalised_words(small_segment: Segment) -> None:
    for pattern in (b"", b" cat", b"cat "):
        with pytest.raises(ValueError):
            small_segment.count(pattern)


def test_closed_segment_refuses_queries(small_segment: Segment) -> None:
    small_segment.close()
    with pytest.raises(CorpusError):
        small_segment.count(b"cat")


def test_build_reports_progress_and_info(tmp_path: Path) -> None:
    seen: list[int] = []
    documents = (CorpusDocument(f"d{i}", f"c{i % 3}", f"word{i} w x y z") for i in range(2500))
    info = build_segment(tmp_path / "seg", documents, progress=seen.append)
    assert seen == [1000, 2000, 2500]
    assert info.documents == 2500
    assert info.contributors == ("c0", "c1", "c2")
    assert info.words == 2500 * 5
    assert info.digest == Segment.open(tmp_path / "seg").info.digest
    names = sorted(p.name for p in (tmp_path / "seg").iterdir())
    assert names == ["corpus.bin", "docs.json", "docs.npy", "minhash.npy", "sa.npy", "segment.json",
                     "shingles.npy"]
    assert list(tmp_path.iterdir()) == [tmp_path / "seg"]


def test_suffix_array_is_int32_and_memory_mapped(small_segment: Segment) -> None:
    assert small_segment.suffix_array.dtype == np.int32
    # Views over the read-only maps, never copies in process memory.
    for array in (small_segment.suffix_array, small_segment.doc_starts, small_segment.shingles):
        assert not array.flags.writeable
        assert not array.flags.owndata


@settings(max_examples=60, deadline=None)
@given(documents_strategy(), st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=4))
def test_count_agrees_with_naive_count(documents: list[CorpusDocument], words: list[str]) -> None:
    pattern = " ".join(words).encode()
    with tempfile.TemporaryDirectory() as root, segment_of(documents, Path(root)) as segment:
        expected = sum(naive_word_count(doc.text, pattern) for doc in documents)
        assert segment.count(pattern) == expected
        by_doc = [i for i, doc in enumerate(documents) for _ in
                  range(naive_word_count(doc.text, pattern))]
        assert segment.occurrences(pattern, 10_000) == by_doc


@settings(max_examples=40, deadline=None)
@given(documents_strategy(), st.integers(min_value=1, max_value=4))
def test_shingles_hold_exactly_the_windows_inside_documents(
    documents: list[CorpusDocument], width: int
) -> None:
    expected: set[bytes] = set()
    for doc in documents:
        words = normalise_bytes(doc.text).split(b" ")
        expected |= {b" " + b" ".join(words[i : i + width])
                     for i in range(len(words) - width + 1)}
    with tempfile.TemporaryDirectory() as root, segment_of(
        documents, Path(root), shingle_words=width
    ) as segment:
        windows = [w + b" " for w in sorted(expected)]
        hashes = np.array([word_window_hashes(w, spaces_of(w), width)[0] for w in windows],
                          dtype=np.uint64)
        assert segment.shingles.tolist() == sorted(set(shingle_fingerprints(hashes).tolist()))
        assert segment.shingles_present(hashes).all()


def test_window_hashes_do_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b" " + b" ".join(str(i % 7).encode() * (i % 3 + 1) for i in range(300)) + b" "
    spaces = spaces_of(data)
    whole = word_window_hashes(data, spaces, 3)
    for chunk in (1, 7, 64, len(data), len(data) - 1):
        monkeypatch.setattr(span_hashing, "_CHUNK", chunk)
        assert np.array_equal(word_window_hashes(data, spaces, 3), whole)
    # Equal windows hash equally wherever they are.
    words = data.split(b" ")[1:-1]
    first = {}
    for i, h in enumerate(whole.tolist()):
        first.setdefault(b" ".join(words[i : i + 3]), h)
        assert first[b" ".join(words[i : i + 3])] == h


# ------------------------------------------------------------------------- bad input


def assert_no_leftovers(parent: Path) -> None:
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize(
    "documents",
    [
        [],
        [CorpusDocument("d1", "a", "fine"), CorpusDocument("d2", "a", " \n\u00a0 ")],
        [CorpusDocument("d1", "a", "")],
        [CorpusDocument("d1", "a", "x"), CorpusDocument("d1", "b", "y")],
        [CorpusDocument("", "a", "x")],
        [CorpusDocument("d1", "", "x")],
        [CorpusDocument("d\ud800", "a", "x")],
    ],
    ids=["no-documents", "blank-document", "empty-document", "duplicate-id", "empty-id",
         "no-contributor", "surrogate-id"],
)
def test_bad_corpora_are_refused_without_leftovers(
    tmp_path: Path, documents: list[CorpusDocument]
) -> None:
    parent = tmp_path / "segments"
    parent.mkdir()
    with pytest.raises(CorpusError):
        build_segment(parent / "seg", documents)
    assert_no_leftovers(parent)


def test_a_failing_document_source_leaves_nothing(tmp_path: Path) -> None:
    def documents() -> Iterator[CorpusDocument]:
        yield CorpusDocument("d1", "a", "one two three")
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        build_segment(tmp_path / "seg", documents())
    assert_no_leftovers(tmp_path)


def test_existing_directory_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "keep").write_text("x")
    with pytest.raises(CorpusError, match="already exists"):
        build_segment(tmp_path / "seg", [CorpusDocument("d1", "a", "x")])
    assert (tmp_path / "seg" / "keep").read_text() == "x"


@pytest.fixture
def built(tmp_path: Path) -> Path:
    documents = [CorpusDocument(f"d{i}", f"c{i % 2}", f"alpha beta {i} gamma delta epsilon")
                 for i in range(50)]
    build_segment(tmp_path / "seg", documents)
    return tmp_path / "seg"


def test_a_good_segment_verifies(built: Path) -> None:
    with Segment.open(built) as segment:
        segment.verify()


@pytest.mark.parametrize("name", ["sa.npy", "corpus.bin", "docs.npy", "shingles.npy",
                                  "docs.json"])
def test_truncated_files_are_refused_at_open(built: Path, name: str) -> None:
    path = built / name
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CorpusError, match=name):
        Segment.open(built)


@pytest.mark.parametrize("name", ["sa.npy", "corpus.bin", "docs.json", "shingles.npy"])
def test_corrupt_files_fail_verification(built: Path, name: str) -> None:
    path = built / name
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # same size: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match=name), Segment.open(built) as segment:
        segment.verify()


def test_missing_file_is_refused(built: Path) -> None:
    (built / "sa.npy").unlink()
    with pytest.raises(CorpusError, match="sa.npy is missing"):
        Segment.open(built)


@pytest.mark.parametrize(
    "manifest",
    [b"", b"{not json", b"[]", b'{"format": "other"}'],
    ids=["empty", "garbage", "list", "wrong-format"],
)
def test_bad_manifest_is_refused(built: Path, manifest: bytes) -> None:
    (built / "segment.json").write_bytes(manifest)
    with pytest.raises(CorpusError, match="segment.json"):
        Segment.open(built)


def test_missing_manifest_is_refused(built: Path) -> None:
    (built / "segment.json").unlink()
    with pytest.raises(CorpusError, match="not a span segment"):
        Segment.open(built)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("version", 2, "version 2 is not supported"),
        ("words", 3, "sa.npy holds"),
        ("documents", 49, "docs.json does not describe"),
        ("shingles", -1, "non-negative"),
    ],
)
def test_inconsistent_manifest_is_refused(built: Path, key: str, value: int,
                                          message: str) -> None:
    manifest = json.loads((built / "segment.json").read_text())
    manifest[key] = value
    (built / "segment.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match=message):
        Segment.open(built)


def test_array_of_the_wrong_type_is_refused(built: Path) -> None:
    manifest = json.loads((built / "segment.json").read_text())
    array = np.load(built / "sa.npy").astype(np.int64)
    np.save(built / "sa.npy", array)
    manifest["files"]["sa.npy"]["bytes"] = (built / "sa.npy").stat().st_size
    (built / "segment.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match="sa.npy holds int64"):
        Segment.open(built)
