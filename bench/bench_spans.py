"""Benchmark: ``spans/1`` index build and attribution latency over a large corpus.

A seeded generator writes a multi-contributor corpus (~``--mb`` MB of word-level
text drawn from a Zipf-like vocabulary, each contributor with its own topic
words, and passages copied between documents so that matches happen). Then:

1. a child process builds one segment from it, streaming the documents, and
   reports build throughput and its peak resident memory (``ru_maxrss``);
2. another child process opens the segment and attributes ``--outputs``
   ~256-token (~1 KB) outputs that mix passages copied from the corpus with
   novel text, timing each ``attribute()`` call (p50, p99), then runs a naive
   finder (one longest-prefix binary search per word position, no shingle
   pre-filter, no jump search) on fewer outputs in the same process, checking
   both agree. It reports RSS before and after opening the segment and after
   the queries, split into anonymous memory and mapped file pages.

Numbers come from one machine and one run; ratios are against the naive finder
measured in the same run. Not a test: no asserts on timings.

Run: ``.venv/bin/python bench/bench_spans.py [--mb 100] [--outputs 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attribution.normalise import normalise_bytes  # noqa: E402
from attribution.span_index import CorpusDocument, Segment, build_segment  # noqa: E402
from attribution.span_search import OutputSearch, maximal_spans  # noqa: E402
from attribution.spans import SpanParams, attribute, find_spans  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "shu", "gra", "tol", "bri",
             "dam", "fen", "qua", "xo", "yel", "wen", "sti", "ar", "el", "on", "us"]
CONTRIBUTORS = 40
OUTPUT_BYTES = 1024  # ~256 tokens of English-like text


# ------------------------------------------------------------------------ corpus


def make_vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < size:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        if word not in words:
            words.add(word)
            ordered.append(word)
    return ordered


class TextModel:
    """Zipf-like unigram text over a shared vocabulary plus per-contributor topic words."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = np.random.default_rng(seed)
        self.vocabulary = np.array(make_vocabulary(rng, 30_000), dtype=object)
        ranks = np.arange(1, len(self.vocabulary) + 1, dtype=np.float64)
        weights = 1.0 / (ranks + 2.7) ** 1.07  # Zipf-Mandelbrot, like word frequencies
        self.probabilities = weights / weights.sum()
        self.topics = [np.array(make_vocabulary(rng, 400), dtype=object) + f"{c}"
                       for c in range(CONTRIBUTORS)]

    def words(self, count: int, contributor: int | None = None) -> list[str]:
        ids = self.rng.choice(len(self.vocabulary), size=count, p=self.probabilities)
        words = self.vocabulary[ids]
        if contributor is not None:
            topical = self.rng.random(count) < 0.2
            words[topical] = self.rng.choice(self.topics[contributor], size=int(topical.sum()))
        return list(words)


def generate_corpus(path: Path, megabytes: float, seed: int) -> list[tuple[str, str]]:
    """Write ``contributor\\tdoc_id\\ttext`` lines; return the documents (for outputs)."""
    model = TextModel(seed)
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    documents: list[tuple[str, str]] = []
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            contributor = rng.randrange(CONTRIBUTORS)
            words = model.words(rng.randint(200, 900), contributor)
            # One document in eight quotes passages of earlier ones (any contributor).
            if documents and rng.random() < 0.125:
                for _ in range(rng.randint(1, 3)):
                    source = documents[rng.randrange(len(documents))][1].split(" ")
                    first = rng.randrange(max(1, len(source) - 80))
                    at = rng.randrange(len(words))
                    words[at:at] = source[first : first + rng.randint(20, 80)]
            text = " ".join(words)
            doc_id = f"doc-{len(documents):07d}"
            handle.write(f"contributor-{contributor:02d}\t{doc_id}\t{text}\n")
            documents.append((f"contributor-{contributor:02d}", text))
            written += len(text) + 1
    return documents


def read_corpus(path: Path) -> Iterator[CorpusDocument]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            contributor, doc_id, text = line.rstrip("\n").split("\t")
            yield CorpusDocument(doc_id, contributor, text)


def make_outputs(documents: list[tuple[str, str]], count: int, seed: int) -> list[str]:
    """~1 KB outputs: novel text interleaved with passages copied from the corpus."""
    model = TextModel(seed + 1)
    rng = random.Random(seed + 1)
    outputs = []
    for _ in range(count):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < OUTPUT_BYTES:
            words += model.words(rng.randint(10, 50))
            if rng.random() < 0.7:
                source = documents[rng.randrange(len(documents))][1].split(" ")
                first = rng.randrange(max(1, len(source) - 60))
                words += source[first : first + rng.randint(8, 60)]
        text = " ".join(words)[:OUTPUT_BYTES]
        outputs.append(text.rsplit(" ", 1)[0])
    return outputs


# ------------------------------------------------------------------ child processes


def memory() -> dict[str, int]:
    """Resident memory of this process in KiB: total, anonymous, file-backed (Linux)."""
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0])
    return fields


def child_build(corpus: Path, directory: Path) -> dict[str, Any]:
    before = memory()
    start = time.perf_counter()
    info = build_segment(directory, read_corpus(corpus))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rss_before_kib": before["VmRSS"],
        "documents": info.documents,
        "corpus_bytes": info.corpus_bytes,
        "words": info.words,
    }


def naive_spans(output: str, segment: Segment, min_words: int) -> list[tuple[int, int]]:
    """Baseline: E(a) by one longest-prefix binary search at every word position."""
    data = normalise_bytes(output)
    search = OutputSearch(b" " + data + b" ", [segment], frozenset())
    spaces, found, previous = search.spaces, [], -1
    for first in range(search.words):
        matched = segment.longest_prefix(search.padded[spaces[first] :])
        stop = max(first, bisect_right(spaces, spaces[first] + matched - 1) - 1)
        if stop > previous and stop - first >= min_words:
            found.append((spaces[first], spaces[stop] - 1))
        previous = stop
    return found


def fast_spans(output: str, segment: Segment, min_words: int) -> list[tuple[int, int]]:
    """The optimised finder alone (pre-filter + jump search), without counting."""
    data = normalise_bytes(output)
    search = OutputSearch(b" " + data + b" ", [segment], frozenset())
    spaces = search.spaces
    return [(spaces[first], spaces[stop] - 1) for first, stop in maximal_spans(search, min_words)]


def child_query(directory: Path, outputs_file: Path, naive_count: int) -> dict[str, Any]:
    outputs: list[str] = json.loads(outputs_file.read_text())
    params = SpanParams()
    before_open = memory()
    segment = Segment.open(directory)
    after_open = memory()
    attribute(outputs[0], [segment], params)  # warm-up: lazy imports, first page faults
    checkpoints = {"after 1 query": memory()}
    latencies, spans, matched, credited = [], 0, 0, 0
    for number, output in enumerate(outputs, start=1):
        start = time.perf_counter_ns()
        result = attribute(output, [segment], params)
        latencies.append(time.perf_counter_ns() - start)
        spans += len(result.spans)
        matched += sum(span.text_len for span in result.spans)
        credited += bool(result.weights_ppm)
        if number in (10, 100):
            checkpoints[f"after {number} queries"] = memory()
    checkpoints[f"after {len(outputs)} queries"] = memory()
    naive_latencies, finder_latencies, disagreements = [], [], 0
    for output in outputs[:naive_count]:
        start = time.perf_counter_ns()
        baseline = naive_spans(output, segment, params.min_words)
        naive_latencies.append(time.perf_counter_ns() - start)
        start = time.perf_counter_ns()
        fast = fast_spans(output, segment, params.min_words)
        finder_latencies.append(time.perf_counter_ns() - start)
        disagreements += fast != baseline
        disagreements += fast != [(s.start, s.end) for s in find_spans(output, [segment], params)]
    index_bytes = sum(p.stat().st_size for p in directory.iterdir())
    return {
        "latencies_ns": latencies,
        "naive_latencies_ns": naive_latencies,
        "finder_latencies_ns": finder_latencies,
        "disagreements": disagreements,
        "spans_per_output": spans / len(outputs),
        "matched_fraction": matched / sum(len(o.encode()) for o in outputs),
        "credited_outputs": credited,
        "memory": {"before_open": before_open, "after_open": after_open, **checkpoints},
        "index_bytes": index_bytes,
    }


def run_child(*args: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                            check=True)
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


# --------------------------------------------------------------------------- report


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size in MB")
    parser.add_argument("--outputs", type=int, default=1000, help="outputs to attribute")
    parser.add_argument("--naive", type=int, default=100, help="outputs for the naive baseline")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child-build", nargs=2, metavar=("CORPUS", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--child-query", nargs=3, metavar=("DIR", "OUTPUTS", "NAIVE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_build:
        print(json.dumps(child_build(Path(args.child_build[0]), Path(args.child_build[1]))))
        return
    if args.child_query:
        directory, outputs, naive = args.child_query
        print(json.dumps(child_query(Path(directory), Path(outputs), int(naive))))
        return

    with tempfile.TemporaryDirectory(prefix="bench-spans-") as root:
        corpus_file, segment_dir = Path(root) / "corpus.tsv", Path(root) / "segment"
        start = time.perf_counter()
        documents = generate_corpus(corpus_file, args.mb, args.seed)
        outputs = make_outputs(documents, args.outputs, args.seed)
        del documents
        (Path(root) / "outputs.json").write_text(json.dumps(outputs))
        generated = time.perf_counter() - start
        input_mb = corpus_file.stat().st_size / 1e6
        build = run_child("--child-build", str(corpus_file), str(segment_dir))
        query = run_child("--child-query", str(segment_dir), str(Path(root) / "outputs.json"),
                          str(args.naive))
    report(args, input_mb, generated, build, query)


def report(args: argparse.Namespace, input_mb: float, generated: float,
           build: dict[str, Any], query: dict[str, Any]) -> None:
    fast, naive = query["latencies_ns"], query["naive_latencies_ns"]
    finder = query["finder_latencies_ns"]
    memory_kib = query["memory"]
    index_mib = query["index_bytes"] / 2**20

    def growth(field: str, stage: str) -> float:
        return (memory_kib[stage][field] - memory_kib["before_open"][field]) / 1024

    rows = [
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                    f"{platform.python_version()}"),
        ("corpus", f"{input_mb:.1f} MB input, {build['documents']} documents, "
                   f"{build['words']} words, {CONTRIBUTORS} contributors "
                   f"(generated in {generated:.1f} s)"),
        ("index size", f"{index_mib:.1f} MiB on disk"),
        ("build", f"{build['seconds']:.1f} s = {input_mb / build['seconds']:.2f} MB/s"),
        ("build peak RSS", f"{build['maxrss_kib'] / 1024:.0f} MiB "
                           f"(process at start: {build['rss_before_kib'] / 1024:.0f} MiB)"),
        ("outputs", f"{len(fast)} x ~{OUTPUT_BYTES} B; {query['spans_per_output']:.2f} spans "
                    f"per output, {100 * query['matched_fraction']:.0f}% of bytes matched, "
                    f"{query['credited_outputs']} credited"),
        ("attribute() p50 / p99", f"{percentile(fast, 0.5):.2f} ms / "
                                  f"{percentile(fast, 0.99):.2f} ms "
                                  f"(mean {statistics.fmean(fast) / 1e6:.2f}, "
                                  f"max {max(fast) / 1e6:.2f})"),
        (f"finder only p50 / p99 ({len(finder)})", f"{percentile(finder, 0.5):.2f} ms / "
                                                 f"{percentile(finder, 0.99):.2f} ms"),
        (f"naive finder p50 / p99 ({len(naive)})", f"{percentile(naive, 0.5):.2f} ms / "
                                                 f"{percentile(naive, 0.99):.2f} ms "
                                                 f"({query['disagreements']} disagreements)"),
        ("finder speed-up p50, p99", f"{percentile(naive, 0.5) / percentile(finder, 0.5):.1f}x,"
                                     f" {percentile(naive, 0.99) / percentile(finder, 0.99):.1f}x"),
        *(
            (f"RSS growth: {stage.replace('_', ' ')}",
             f"{growth('VmRSS', stage):6.1f} MiB = {100 * growth('VmRSS', stage) / index_mib:5.1f}%"
             f" of the index (anon {growth('RssAnon', stage):.1f}, "
             f"file-backed {growth('RssFile', stage):.1f})")
            for stage in memory_kib if stage != "before_open"
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"spans/1 benchmark (--mb {args.mb:g}, seed {args.seed})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
