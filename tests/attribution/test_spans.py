"""The spans/1 finder and weights, checked against a brute-force reference."""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution import canonical
from attribution.commitments import digest
from attribution.normalise import normalise_bytes, word_bounds
from attribution.span_index import CorpusDocument, Segment, build_segment
from attribution.spans import (
    SpanMatch,
    SpanParams,
    attribute,
    contributor_weights,
    find_spans,
    rarity,
    to_ppm,
)
from tests.attribution.test_span_index import VOCABULARY, documents_strategy, naive_count

SpanKey = tuple[int, int, int, int, dict[str, int], dict[str, int]]


def reference_spans(
    output: str, documents: list[CorpusDocument], min_words: int, excluded: frozenset[str]
) -> list[SpanKey]:
    """Enumerate every word-aligned substring of the output, count it naively in every
    document, keep the maximal ones of at least ``min_words`` words."""
    data = normalise_bytes(output)
    bounds = word_bounds(data)
    texts = [(doc, b" " + normalise_bytes(doc.text) + b" ") for doc in documents
             if doc.contributor not in excluded]
    found: dict[tuple[int, int], SpanKey] = {}
    for first in range(len(bounds)):
        for stop in range(first + min_words, len(bounds) + 1):
            start, end = bounds[first][0], bounds[stop - 1][1]
            pattern = b" " + data[start:end] + b" "
            by_contributor: dict[str, int] = {}
            by_document: dict[str, int] = {}
            for doc, text in texts:
                if n := naive_count(text, pattern):
                    by_contributor[doc.contributor] = by_contributor.get(doc.contributor, 0) + n
                    by_document[doc.doc_id] = n
            if by_document:
                found[(first, stop)] = (start, end, stop - first, sum(by_document.values()),
                                        by_contributor, by_document)
    return sorted(
        span for (first, stop), span in found.items()
        if not any(f <= first and stop <= s and (f, s) != (first, stop) for f, s in found)
    )


def keys(spans: list[SpanMatch]) -> list[SpanKey]:
    return [(s.start, s.end, s.words, s.count, s.by_contributor, s.by_document) for s in spans]


@st.composite
def corpus_and_output(draw: st.DrawFn) -> tuple[list[CorpusDocument], str]:
    documents = draw(documents_strategy(max_docs=5, max_words=20))
    pieces: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if draw(st.booleans()):
            words = normalise_bytes(draw(st.sampled_from(documents)).text).decode().split(" ")
            first = draw(st.integers(min_value=0, max_value=len(words) - 1))
            stop = draw(st.integers(min_value=first + 1, max_value=len(words)))
            pieces.extend(words[first:stop])
        else:
            pieces.extend(draw(st.lists(st.sampled_from([*VOCABULARY, "zz"]), max_size=5)))
    return documents, " ".join(pieces)


def open_segments(stack: ExitStack, root: Path, parts: list[list[CorpusDocument]],
                  shingle_words: int) -> list[Segment]:
    segments = []
    for i, part in enumerate(parts):
        build_segment(root / f"seg{i}", part, shingle_words=shingle_words)
        segments.append(stack.enter_context(Segment.open(root / f"seg{i}")))
    return segments


@settings(max_examples=150, deadline=None)
@given(
    corpus_and_output(),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=5),
    st.frozensets(st.sampled_from(["x", "y", "z"]), max_size=2),
)
def test_finder_agrees_with_brute_force(
    case: tuple[list[CorpusDocument], str], min_words: int, shingle_words: int,
    excluded: frozenset[str],
) -> None:
    documents, output = case
    params = SpanParams(min_words=min_words)
    expected = reference_spans(output, documents, min_words, excluded)
    with tempfile.TemporaryDirectory() as root, ExitStack() as stack:
        segments = open_segments(stack, Path(root), [documents], shingle_words)
        spans = find_spans(output, segments, params, excluded_contributors=excluded)
        assert keys(spans) == expected
        for span in spans:
            assert sum(span.by_contributor.values()) == span.count
            assert sum(span.by_document.values()) == span.count
            assert span.text_len == span.end - span.start
            assert not excluded & set(span.by_contributor)
            assert not span.sampled


@settings(max_examples=60, deadline=None)
@given(corpus_and_output(), st.integers(min_value=1, max_value=4), st.data())
def test_split_segments_equal_one_merged_segment(
    case: tuple[list[CorpusDocument], str], min_words: int, data: st.DataObject
) -> None:
    documents, output = case
    cut = data.draw(st.integers(min_value=0, max_value=len(documents)))
    params = SpanParams(min_words=min_words)
    with tempfile.TemporaryDirectory() as root, ExitStack() as stack:
        merged = open_segments(stack, Path(root) / "merged", [documents], 2)
        split = open_segments(stack, Path(root) / "split",
                              [part for part in (documents[:cut], documents[cut:]) if part], 2)
        assert find_spans(output, split, params) == find_spans(output, merged, params)
        whole = attribute(output, merged, params)
        parts = attribute(output, split, params)
        assert parts.weights_ppm == whole.weights_ppm


@settings(max_examples=60, deadline=None)
@given(corpus_and_output(), st.integers(min_value=1, max_value=3),
       st.frozensets(st.sampled_from(["x", "y", "z"]), min_size=1, max_size=2))
def test_excluding_a_contributor_equals_never_indexing_it(
    case: tuple[list[CorpusDocument], str], min_words: int, excluded: frozenset[str]
) -> None:
    documents, output = case
    kept = [doc for doc in documents if doc.contributor not in excluded]
    params = SpanParams(min_words=min_words)
    with tempfile.TemporaryDirectory() as root, ExitStack() as stack:
        everyone = open_segments(stack, Path(root) / "all", [documents], 3)
        excluding = attribute(output, everyone, params, excluded)
        assert not excluded & set(excluding.weights_ppm)
        if kept:
            without = open_segments(stack, Path(root) / "kept", [kept], 3)
            reference = attribute(output, without, params)
            assert excluding.spans == reference.spans
            assert excluding.weights_ppm == reference.weights_ppm
        else:
            assert excluding.spans == [] and excluding.weights_ppm == {}


@pytest.fixture
def two_documents(tmp_path: Path) -> Iterator[Segment]:
    documents = [CorpusDocument("d1", "alice", "one two three four five six"),
                 CorpusDocument("d2", "bob", "seven eight nine ten eleven twelve")]
    build_segment(tmp_path / "seg", documents)
    with Segment.open(tmp_path / "seg") as segment:
        yield segment


def test_spans_never_cross_document_boundaries(two_documents: Segment) -> None:
    output = "one two three four five six seven eight nine ten eleven twelve"
    spans = find_spans(output, [two_documents], SpanParams(min_words=5))
    assert [(s.words, s.by_document) for s in spans] == [(6, {"d1": 1}), (6, {"d2": 1})]
    joined = "four five six seven eight nine"
    assert find_spans(joined, [two_documents], SpanParams(min_words=4)) == []


def test_offsets_point_into_the_normalised_output(two_documents: Segment) -> None:
    output = "Hello  THERE one TWO three\tfour five, bye"
    (span,) = find_spans(output, [two_documents], SpanParams(min_words=4))
    assert normalise_bytes(output)[span.start : span.end] == b"one two three four"


def test_frequent_spans_are_sampled_but_counted_exactly(tmp_path: Path) -> None:
    documents = [CorpusDocument(f"d{i}", ["a", "b", "c"][i % 3], "p q r s t") for i in range(30)]
    build_segment(tmp_path / "seg", documents)
    with Segment.open(tmp_path / "seg") as segment:
        (span,) = find_spans("x p q r s t y", [segment], SpanParams(max_enumerated=7))
        assert span.sampled and span.count == 30
        # An estimate from 7 evenly spaced occurrences, scaled to the exact count.
        assert set(span.by_contributor) == {"a", "b", "c"}
        assert sum(span.by_contributor.values()) == 30
        assert sum(span.by_document.values()) == 7
        (exact,) = find_spans("x p q r s t y", [segment], SpanParams(max_enumerated=30))
        assert not exact.sampled and len(exact.by_document) == 30
        assert exact.by_contributor == {"a": 10, "b": 10, "c": 10}


# ----------------------------------------------------------------------------- scoring


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_rarity_is_fixed_point_log2(count: int, documents: int) -> None:
    exact = 2**16 * math.log2(1 + documents / count)
    assert abs(rarity(count, documents) - exact) <= 1.01


def test_rarity_falls_as_spans_get_common() -> None:
    values = [rarity(count, 1000) for count in (1, 2, 10, 100, 1000, 10_000)]
    assert values == sorted(values, reverse=True)
    assert rarity(1000, 1000) == 2**16  # a span in "every" document is worth 1 per word
    with pytest.raises(ValueError):
        rarity(0, 10)


def span(words: int, by_contributor: dict[str, int], documents: int | None = None
         ) -> SpanMatch:
    count = sum(by_contributor.values())
    return SpanMatch(0, 1, 1, words, count, by_contributor, {},
                     documents=count if documents is None else documents,
                     holders=tuple(sorted(by_contributor)))


def test_weights_split_each_span_equally_among_distinct_holders() -> None:
    # Three occurrences of "a" (in two documents) earn what one occurrence of "b" does.
    weights = contributor_weights([span(10, {"a": 3, "b": 1}, documents=3)], 100)
    credit = 10 * rarity(3, 100)
    assert weights == {"a": credit // 2, "b": credit // 2}
    assert contributor_weights([], 100) == {}


def test_longer_and_rarer_spans_weigh_more() -> None:
    weights = contributor_weights([span(20, {"long": 1}), span(5, {"short": 1})], 100)
    assert weights["long"] == 4 * weights["short"]
    weights = contributor_weights([span(8, {"rare": 1}), span(8, {"common": 50})], 100)
    assert weights["rare"] > 4 * weights["common"]  # log2(101) vs log2(3)


@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                       st.integers(min_value=0, max_value=10**15)))
def test_ppm_sums_to_a_million(weights: dict[str, int]) -> None:
    ppm = to_ppm(weights)
    if any(weights.values()):
        assert sum(ppm.values()) == 1_000_000
        assert all(v > 0 for v in ppm.values())
        assert set(ppm) <= {name for name, w in weights.items() if w}
    else:
        assert ppm == {}


def test_params_digest_is_canonical_and_distinguishes_params() -> None:
    assert SpanParams().digest() == digest(SpanParams().to_wire())
    assert SpanParams().digest() == SpanParams(min_words=5).digest()
    assert SpanParams().digest() != SpanParams(min_words=6).digest()
    with pytest.raises(ValueError):
        SpanParams(min_words=0)


def test_evidence_is_canonical_integers_and_strings(two_documents: Segment) -> None:
    output = "Secret prefix one two three four five six and more"
    result = attribute(output, [two_documents], SpanParams())
    assert result.weights_ppm == {"alice": 1_000_000}
    assert result.evidence_digest() == digest(result.evidence)
    canonical.encode(result.evidence)  # raises on floats or other types

    def leaves(value: Any) -> Iterator[Any]:
        if isinstance(value, dict):
            for key, item in value.items():
                yield key
                yield from leaves(item)
        elif isinstance(value, list):
            for item in value:
                yield from leaves(item)
        else:
            yield value

    assert all(type(leaf) in (int, str) for leaf in leaves(result.evidence))
    assert not any(isinstance(leaf, str) and "secret" in leaf for leaf in leaves(result.evidence))
    (evidence_span,) = result.evidence["spans"]
    assert evidence_span["by_document"] == {"d1": 1} and evidence_span["words"] == 6
    assert result.evidence["segments"] == [two_documents.info.digest]


def test_nothing_matched_gives_empty_weights(two_documents: Segment) -> None:
    for output in ("", "   ", "entirely novel words here and there again", "one two three"):
        result = attribute(output, [two_documents], SpanParams())
        assert result.weights_ppm == {} and result.spans == []
    assert attribute("one two three four five", [], SpanParams()).weights_ppm == {}


# ---------------------------------------------------------------------------- fidelity

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "shu", "gra", "tol", "bri",
             "dam", "fen", "qua", "xo", "yel", "wen", "sti"]
COMMON = ["the", "of", "and", "a", "to", "in", "is", "that", "it", "for", "on", "with"]


def vocabulary(rng: random.Random, size: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < size:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def sentence_words(rng: random.Random, own: list[str], length: int) -> list[str]:
    words = [rng.choice(COMMON) if rng.random() < 0.15 else rng.choice(own)
             for _ in range(length)]
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    words[-1] += rng.choice([".", ",", "", "!"])
    return words


def test_fidelity_on_known_passages(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    taken = set(COMMON)
    contributors = {f"contributor-{i}": vocabulary(rng, 150, taken) for i in range(5)}
    novel = vocabulary(rng, 150, taken)
    corpus: dict[str, list[list[str]]] = {}
    documents = []
    for name, own in contributors.items():
        corpus[name] = []
        for d in range(25):
            words = [w for _ in range(8) for w in sentence_words(rng, own, rng.randint(8, 20))]
            corpus[name].append(words)
            documents.append(CorpusDocument(f"{name}/{d}", name, " ".join(words)))
    build_segment(tmp_path / "seg", documents)
    true_positive = predicted = expected = 0
    with Segment.open(tmp_path / "seg") as segment:
        for _ in range(200):
            chosen = rng.sample(sorted(contributors), rng.randint(1, 3))
            pieces = sentence_words(rng, novel, rng.randint(3, 12))
            for name in chosen:
                words = rng.choice(corpus[name])
                first = rng.randrange(len(words) - 20)
                pieces += words[first : first + rng.randint(6, 20)]
                pieces += sentence_words(rng, novel, rng.randint(3, 12))
            weights = attribute(" ".join(pieces), [segment], SpanParams()).weights_ppm
            true_positive += len(set(weights) & set(chosen))
            predicted += len(weights)
            expected += len(chosen)
        assert true_positive / predicted >= 0.95
        assert true_positive / expected >= 0.95
        for _ in range(50):
            text = " ".join(sentence_words(rng, novel, rng.randint(20, 200)))
            assert attribute(text, [segment], SpanParams()).weights_ppm == {}


def test_a_passage_held_by_two_contributors_is_shared(tmp_path: Path) -> None:
    quote = "to be or not to be that is the question"
    documents = [CorpusDocument("a1", "alice", f"alice writes {quote} in her notes"),
                 CorpusDocument("b1", "bob", f"bob quotes {quote} too"),
                 CorpusDocument("c1", "carol", "carol writes something else entirely here")]
    build_segment(tmp_path / "seg", documents)
    with Segment.open(tmp_path / "seg") as segment:
        result = attribute(f"He said {quote}!", [segment], SpanParams())
        assert result.weights_ppm == {"alice": 500_000, "bob": 500_000}
