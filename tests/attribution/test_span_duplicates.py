"""Copying cannot buy credit: duplicate screening at ingest and the first/split policies.

Planted corpus: an honest contributor indexes a text first; a copier then uploads it
1, 9 or 100 times (as separate documents, or repeated inside one), whole or lightly
edited (case, whitespace, one word changed per sentence). Whatever the copy count,
the copier earns nothing under ``first`` and never more than the honest contributor
under ``split``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from attribution.normalise import normalise
from attribution.span_duplicates import screen_documents
from attribution.span_index import CorpusDocument, Segment, build_segment
from attribution.span_minhash import (
    NEAR_DUPLICATE_PPM,
    SignatureIndex,
    corpus_signatures,
    signature,
    similarity_ppm,
)
from attribution.spans import SpanParams, SpanSource, attribute, find_spans

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "shu", "gra", "tol", "bri",
             "dam", "fen", "qua", "xo", "yel", "wen", "sti"]


def made_up_words(rng: random.Random, count: int) -> list[str]:
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(3)))
    return sorted(words)


RNG = random.Random(1313)
VOCABULARY = made_up_words(RNG, 400)
HONEST_SENTENCES = [[RNG.choice(VOCABULARY[:200]) for _ in range(12)] for _ in range(6)]
OTHER_SENTENCES = [[RNG.choice(VOCABULARY[200:]) for _ in range(12)] for _ in range(6)]
HONEST_TEXT = " ".join(" ".join(words) + "." for words in HONEST_SENTENCES)
OTHER_TEXT = " ".join(" ".join(words) + "." for words in OTHER_SENTENCES)


def edited(kind: str) -> str:
    """The honest text, lightly edited as a copier would."""
    if kind == "whole":
        return HONEST_TEXT
    if kind == "case":
        return HONEST_TEXT.upper()
    if kind == "whitespace":
        return HONEST_TEXT.replace(" ", "  \n\t ")
    assert kind == "word"  # one word changed per sentence
    return " ".join(" ".join([*words[:6], f"changed{number}", *words[7:]]) + "."
                    for number, words in enumerate(HONEST_SENTENCES))


def copier_documents(kind: str, copies: int, layout: str) -> list[tuple[str, str]]:
    text = edited(kind)
    if layout == "documents":
        return [(f"copy{i}", text) for i in range(copies)]
    return [("copies", "\n".join([text] * copies))]


def index(root: Path, stack: ExitStack, uploads: list[tuple[str, list[tuple[str, str]]]],
          min_words: int = 5) -> list[Segment]:
    """Index each upload as one segment, screened against the earlier ones first (as
    ``edged.datanets.DatanetStore.add_documents`` does)."""
    segments: list[Segment] = []
    for number, (contributor, documents) in enumerate(uploads):
        corpus = [CorpusDocument(f"{contributor}/{doc_id}", contributor, text)
                  for doc_id, text in documents]
        findings = screen_documents(corpus, segments, min_words=min_words)
        corpus = [CorpusDocument(doc.doc_id, doc.contributor, doc.text,
                                 duplicate_of=finding.near_duplicate_of)
                  for doc, finding in zip(corpus, findings, strict=True)]
        build_segment(root / f"seg{number}", corpus)
        segments.append(stack.enter_context(Segment.open(root / f"seg{number}")))
    return segments


@pytest.mark.parametrize("layout", ["documents", "one-document"])
@pytest.mark.parametrize("kind", ["whole", "case", "whitespace", "word"])
@pytest.mark.parametrize("copies", [1, 9, 100])
def test_a_copier_earns_nothing_under_first_and_never_more_than_the_original_under_split(
        tmp_path: Path, copies: int, kind: str, layout: str) -> None:
    with ExitStack() as stack:
        segments = index(tmp_path, stack, [
            ("honest", [("text", HONEST_TEXT)]),
            ("other", [("text", OTHER_TEXT)]),
            ("copier", copier_documents(kind, copies, layout)),
        ])
        outputs = {
            "the original": HONEST_TEXT,
            "the copy": edited(kind),
            "one sentence": " ".join(HONEST_SENTENCES[2]),
            "original and other": f"{HONEST_TEXT} and then {OTHER_TEXT}",
        }
        baseline = {}  # the same outputs before the copier uploaded anything
        for name, output in outputs.items():
            baseline[name] = attribute(output, [SpanSource(tuple(segments[:2]), "first")],
                                       SpanParams()).weights_ppm
        for name, output in outputs.items():
            first = attribute(output, [SpanSource(tuple(segments), "first")], SpanParams())
            assert "copier" not in first.weights_ppm, name
            assert first.weights_ppm["honest"] > 0, name
            # Copies change nobody's credit: not the honest contributor's, not a third's.
            assert first.weights_ppm == baseline[name], name
            split = attribute(output, [SpanSource(tuple(segments), "split")], SpanParams())
            assert split.weights_ppm.get("copier", 0) <= split.weights_ppm["honest"], name


def test_the_measured_attack_no_longer_pays(tmp_path: Path) -> None:
    """Before: 9 copies of another contributor's sentence took 900,001 ppm."""
    sentence = " ".join(HONEST_SENTENCES[0])
    with ExitStack() as stack:
        segments = index(tmp_path, stack, [
            ("honest", [("s", sentence)]),
            ("copier", [(f"c{i}", sentence) for i in range(9)]),
        ])
        split = attribute(sentence, [SpanSource(tuple(segments), "split")], SpanParams())
        assert split.weights_ppm == {"copier": 500_000, "honest": 500_000}
        first = attribute(sentence, [SpanSource(tuple(segments), "first")], SpanParams())
        assert first.weights_ppm == {"honest": 1_000_000}
        (span,) = first.spans
        assert span.count == 10 and span.documents == 1 and span.holders == ("honest",)


def test_a_shared_quote_goes_to_whoever_indexed_it_first_or_is_split(tmp_path: Path) -> None:
    quote = "to be or not to be that is the question"
    with ExitStack() as stack:
        segments = index(tmp_path, stack, [
            ("bob", [("b", f"bob quotes {quote} in a letter about {OTHER_TEXT}")]),
            ("alice", [("a", f"alice writes {quote} in her notes about {HONEST_TEXT}")]),
        ])
        # Not near-duplicates (the documents differ), but the quote is an exact span.
        findings = screen_documents(
            [CorpusDocument("x", "alice", f"alice writes {quote} in her notes")],
            segments[:1], min_words=5)
        assert findings[0].near_duplicate_of is None
        # The quote's 10 words and the "in" after it, in both texts.
        assert findings[0].held_by == {"bob": 11} and findings[0].held_words == 11
        output = f"He said {quote}!"
        first = attribute(output, [SpanSource(tuple(segments), "first")], SpanParams())
        assert first.weights_ppm == {"bob": 1_000_000}
        split = attribute(output, [SpanSource(tuple(segments), "split")], SpanParams())
        assert split.weights_ppm == {"alice": 500_000, "bob": 500_000}


def test_first_survives_compaction_order(tmp_path: Path) -> None:
    """Merging segments keeps document order, so ``first`` names the same holder."""
    quote = "to be or not to be that is the question"
    documents = [CorpusDocument("b", "bob", f"bob quotes {quote} in a letter"),
                 CorpusDocument("a", "alice", f"alice writes {quote} in her notes")]
    with ExitStack() as stack:
        build_segment(tmp_path / "merged", documents)
        merged = stack.enter_context(Segment.open(tmp_path / "merged"))
        result = attribute(quote, [SpanSource((merged,), "first")], SpanParams())
        assert result.weights_ppm == {"bob": 1_000_000}


def test_repeating_text_inside_ones_own_documents_adds_nothing(tmp_path: Path) -> None:
    output = f"{HONEST_SENTENCES[0][0]} {' '.join(HONEST_SENTENCES[1])} and " \
             f"{' '.join(OTHER_SENTENCES[1])}"
    weights = []
    for repeats in (1, 9):
        with ExitStack() as stack:
            segments = index(tmp_path / str(repeats), stack, [
                ("honest", [("t", "\n".join([HONEST_TEXT] * repeats))]
                 + [(f"again{i}", HONEST_TEXT) for i in range(repeats - 1)]),
                ("other", [("t", OTHER_TEXT)]),
            ])
            for policy in ("first", "split"):
                source = SpanSource(tuple(segments), policy)  # type: ignore[arg-type]
                weights.append(attribute(output, [source], SpanParams()).weights_ppm)
    assert weights[0] == weights[1] == weights[2] == weights[3]
    assert weights[0] == {"honest": 500_000, "other": 500_000}


def test_screening_reports_counts_and_ids_never_text(tmp_path: Path) -> None:
    with ExitStack() as stack:
        segments = index(tmp_path, stack, [("honest", [("text", HONEST_TEXT)])])
        documents = [CorpusDocument("c/1", "copier", edited("word")),
                     CorpusDocument("c/2", "copier", OTHER_TEXT),
                     CorpusDocument("c/3", "copier", OTHER_TEXT.upper())]
        first, fresh, again = screen_documents(documents, segments, min_words=5)
    assert first.near_duplicate_of == "honest"
    assert NEAR_DUPLICATE_PPM <= first.similarity_ppm < 1_000_000
    # One word changed in each 12-word sentence leaves runs of 6 and 5 words held.
    assert first.words == 72 and first.held_words == 66 and first.held_by == {"honest": 66}
    assert not fresh.duplicated and fresh.to_wire()["near_duplicate_of"] is None
    # A copy of a document earlier in the same upload is found too (credited to its owner).
    assert again.near_duplicate_of == "copier" and again.similarity_ppm == 1_000_000
    assert again.held_words == 0  # exact spans are checked against what was indexed before
    wire = str([f.to_wire() for f in (first, fresh, again)])
    assert not any(word in wire for word in VOCABULARY)


def test_excluded_contributors_and_their_copies_count_as_absent(tmp_path: Path) -> None:
    with ExitStack() as stack:
        segments = index(tmp_path, stack, [
            ("honest", [("text", HONEST_TEXT)]),
            ("copier", [("copy", edited("case"))]),
        ])
        assert segments[1].duplicate_of == {0: "honest"}
        gone = frozenset({"honest"})
        for policy in ("first", "split"):
            source = SpanSource(tuple(segments), policy)  # type: ignore[arg-type]
            assert find_spans(HONEST_TEXT, [source], SpanParams(),
                              excluded_contributors=gone) == []
        (finding,) = screen_documents([CorpusDocument("n", "new", HONEST_TEXT)], segments,
                                      min_words=5, excluded_contributors=gone)
        assert not finding.duplicated


# ------------------------------------------------------------------------------ MinHash


@pytest.fixture
def near_duplicates() -> Iterator[list[str]]:
    yield [HONEST_TEXT, edited("word"), edited("case"), OTHER_TEXT, "one", "one two"]


def test_similarity_catches_light_edits_and_separates_unrelated_text(
        near_duplicates: list[str]) -> None:
    signatures = np.stack([signature(text) for text in near_duplicates])
    scores = similarity_ppm(signatures[0], signatures).tolist()
    assert scores[0] == scores[2] == 1_000_000  # case and whitespace: identical shingles
    # One word changed per 12-word sentence: true Jaccard (12 - 3) / (12 + 1) ~ 0.69.
    assert NEAR_DUPLICATE_PPM <= scores[1] < 1_000_000
    assert scores[3] < 100_000


def test_corpus_signatures_equal_one_document_signatures(near_duplicates: list[str]) -> None:
    normalised = [normalise(text).encode() for text in near_duplicates]
    corpus = b"".join(b" " + text + b" \xff" for text in normalised)
    starts = np.cumsum([0] + [len(text) + 3 for text in normalised[:-1]]).astype(np.int64)
    together = corpus_signatures(corpus, starts)
    assert (together == np.stack([signature(text) for text in near_duplicates])).all()


def test_lsh_finds_the_best_match_without_comparing_everything(
        near_duplicates: list[str]) -> None:
    index = SignatureIndex(np.stack([signature(text) for text in near_duplicates[1:]]))
    row, similarity = index.best_match(signature(HONEST_TEXT))
    assert row == 1 and similarity == 1_000_000  # the case-edited copy: identical
    eligible = np.array([True, False, True, True, True])
    assert index.best_match(signature(HONEST_TEXT), eligible)[0] == 0
    assert index.best_match(signature("nothing like the rest at all")) == (-1, 0)


def test_segments_without_stored_signatures_still_open_and_screen(tmp_path: Path) -> None:
    """Segments built before signatures were stored compute them from their text."""
    import json

    documents = [CorpusDocument("h", "honest", HONEST_TEXT), CorpusDocument("o", "other",
                                                                           OTHER_TEXT)]
    build_segment(tmp_path / "seg", documents)
    with Segment.open(tmp_path / "seg") as segment:
        stored = np.array(segment.signatures())
    manifest_path = tmp_path / "seg" / "segment.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]["minhash.npy"]
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "seg" / "minhash.npy").unlink()
    with Segment.open(tmp_path / "seg") as old:
        assert (old.signatures() == stored).all()
        (finding,) = screen_documents([CorpusDocument("c", "copier", edited("word"))], [old],
                                      min_words=5)
        assert finding.near_duplicate_of == "honest"
