"""Benchmark: what ``spans/1`` attribution costs end to end in the real daemon.

One run starts ``edged serve`` (demo Gemma 3 270M and demo datanet ``demo-classics``) in a
temp data dir, then:

1. loads the model without generating and creates the datanet ``bench-corpus`` over the
   HTTP API, filled with the seeded multi-contributor corpus of ``bench_spans.py`` (``--mb``
   MB, one ``POST /api/datanets/bench-corpus/documents`` per contributor) plus one
   contributor, ``bench-quotes``, whose documents quote the demo texts inside generated
   filler (so the greedy output also matches inside the big index);
2. toggles the model between ``owner/1`` (``PATCH /api/models/gemma3-270m`` with no
   datanets and no data share) and ``spans/1`` (``demo-classics`` + ``bench-corpus``, 30%
   data share), one warm-up each, then ``--reps`` streaming ``/v1/completions`` per mode in
   ABBA order (greedy, ``--max-tokens`` 128, ``stream_options.include_usage``), checking
   each receipt's ``attr.method`` through ``GET /v1/receipts/{id}``;
3. reads the daemon's resident memory (``/proc/<pid>/status``: VmRSS, RssAnon, RssFile)
   before the datanet exists, after indexing, after the timed runs and after a control of
   short ``owner/1`` requests, against the index's size on disk, and the index's own
   resident pages from ``/proc/<pid>/smaps``.

*total* is from sending the request to ``[DONE]``; *tail* is from the last content chunk to
the chunk that carries the receipt: the attribution (spans/1 only), the receipt's signature
and its durable SQLite commit all happen there. Not a test: no asserts on timings.

Run: ``.venv/bin/python bench/bench_attribution_e2e.py [--mb 20] [--reps 5] [--per-run]``.

Why one script of ~460 lines: a benchmark is read and run as one file; its set-up,
phases and report table describe one experiment.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import harness  # noqa: E402
from bench_spans import CONTRIBUTORS, TextModel, generate_corpus  # noqa: E402
from harness import CLOCK_TICKS, BenchError, loadavg  # noqa: E402

MODEL = "gemma3-270m"
DEMO_DATANET = "demo-classics"
DATANET = "bench-corpus"
QUOTES_CONTRIBUTOR = "bench-quotes"
DATA_SHARE_PPM = 300_000
# Greedy Gemma 3 270M continues the Declaration of Independence for a while, so part of its
# output is corpus text (demo-classics, and bench-quotes inside bench-corpus).
PROMPT = "We hold these truths to be self-evident,"
MODES: dict[str, dict[str, Any]] = {
    "owner/1": {"datanets": [], "data_share_ppm": 0},
    "spans/1": {"datanets": [DEMO_DATANET, DATANET], "data_share_ppm": DATA_SHARE_PPM},
}
TARGET_SHARE = 0.03  # attribution plus receipt <= 3% of a 128-token response
TARGET_RSS = 0.10  # daemon RSS growth < 10% of the index size
SETTLE_S = 0.3  # idle gap before each timed run (as bench_generation.py)
CONTROL_MAX_TOKENS = 8  # the control requests: what a request alone leaves in the heap
DISTURBED_CPU_S = 0.5  # a run during which other processes used more CPU than this


@dataclasses.dataclass(frozen=True)
class Run:
    """One timed streaming completion; times in seconds from sending the request."""

    mode: str
    tokens: int
    ttft: float
    last: float  # the last chunk with text
    receipt_at: float  # the chunk carrying the receipt
    done: float  # [DONE]
    text: str
    receipt_id: str
    method: str = ""  # attr.method of the stored receipt
    others_cpu: float = 0.0  # CPU seconds other processes used during the request

    @property
    def tail(self) -> float:
        return self.receipt_at - self.last

    @property
    def decode_rate(self) -> float:
        """Tokens per second between the first and the last content chunk."""
        span = self.last - self.ttft
        return (self.tokens - 1) / span if span > 0 and self.tokens > 1 else float("nan")


# -- the daemon -----------------------------------------------------------------------------


class Daemon(harness.Daemon):
    """The shared daemon, plus memory readings and the timed stream."""

    def memory(self) -> dict[str, int]:
        """The daemon's resident memory in KiB: VmRSS, RssAnon, RssFile."""
        fields: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssFile"):
                    fields[name] = int(value.split()[0])
        return fields

    def mapped(self, under: Path) -> dict[str, tuple[int, int]]:
        """(mapped size, resident KiB) per file name, over the daemon's mappings of files
        under ``under`` (summed over segments; unlinked files keep a ``(deleted)`` mark)."""
        prefix = f"{under}/"
        result: dict[str, tuple[int, int]] = {}
        current: str | None = None
        size = 0
        with open(f"/proc/{self.pid}/smaps") as handle:
            for line in handle:
                parts = line.split(maxsplit=5)
                if parts and not parts[0].endswith(":"):  # a mapping's header line
                    path = parts[5].strip() if len(parts) > 5 else ""
                    current = None
                    if path.startswith(prefix):
                        deleted = path.endswith(" (deleted)")
                        current = Path(path.removesuffix(" (deleted)")).name + (
                            " (deleted)" if deleted else "")
                        low, high = (int(x, 16) for x in parts[0].split("-"))
                        size = (high - low) // 1024
                elif current is not None and parts[0] == "Rss:":
                    mapped, resident = result.get(current, (0, 0))
                    result[current] = (mapped + size, resident + int(parts[1]))
        return result

    def stream(self, mode: str, max_tokens: int) -> Run:
        """One streaming completion, timed from the request to each chunk."""
        events, done = self.timed_stream(MODEL, PROMPT, max_tokens)
        pieces: list[str] = []
        first = last = receipt_at = 0.0
        usage: dict[str, int] | None = None
        receipt_id = ""
        for now, event in events:
            for choice in event.get("choices", []):
                if choice.get("text"):
                    first = first or now
                    last = now
                    pieces.append(choice["text"])
            usage = event.get("usage", usage)
            if "receipt" in event:
                receipt_at = now
                receipt_id = event["receipt"]["id"]
        if usage is None or not receipt_id:
            raise BenchError("edged sent no usage or no receipt in its final chunks")
        return Run(mode, usage["completion_tokens"], first, last, receipt_at, done,
                   "".join(pieces), receipt_id)


# -- corpus ---------------------------------------------------------------------------------


def corpus_by_contributor(corpus_file: Path) -> dict[str, list[tuple[str, str]]]:
    """bench_spans's ``contributor\\tdoc_id\\ttext`` lines, grouped by contributor."""
    grouped: dict[str, list[tuple[str, str]]] = {}
    with corpus_file.open(encoding="utf-8") as handle:
        for line in handle:
            contributor, doc_id, text = line.rstrip("\n").split("\t")
            grouped.setdefault(contributor, []).append((doc_id, text))
    return grouped


def quote_documents(seed: int) -> list[tuple[str, str]]:
    """Each demo text quoted inside ~300 words of generated filler, one document each."""
    model = TextModel(seed + 2)
    folder = resources.files("edged").joinpath("demo_data")
    documents = []
    for item in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if item.name.endswith(".txt"):
            quoted = " ".join(item.read_text(encoding="utf-8").split())
            text = " ".join([*model.words(150), quoted, *model.words(150)])
            documents.append((f"quotes-{item.name.removesuffix('.txt')}", text))
    return documents


def jsonl(documents: list[tuple[str, str]]) -> bytes:
    return b"".join(json.dumps({"id": doc_id, "text": text}).encode() + b"\n"
                    for doc_id, text in documents)


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(apparent size, allocated size) of the files under ``folder``: ``du -sb``, ``du -s``."""
    apparent = allocated = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            apparent += stat.st_size
            allocated += stat.st_blocks * 512
    return apparent, allocated


# -- running --------------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def own_cpu_seconds(daemon: Daemon) -> float:
    times = os.times()
    return daemon.cpu_seconds() + times.user + times.system


def set_mode(daemon: Daemon, mode: str) -> None:
    daemon.call("PATCH", f"/api/models/{MODEL}", MODES[mode])


def timed(daemon: Daemon, mode: str, max_tokens: int) -> Run:
    set_mode(daemon, mode)
    gc.collect()
    time.sleep(SETTLE_S)
    busy, own = machine_busy_seconds(), own_cpu_seconds(daemon)
    run = daemon.stream(mode, max_tokens)
    others = machine_busy_seconds() - busy - (own_cpu_seconds(daemon) - own)
    receipt = daemon.call("GET", f"/v1/receipts/{run.receipt_id}")
    return dataclasses.replace(run, method=receipt["attr"]["method"], others_cpu=others)


def abba(reps: int) -> Iterator[str]:
    """owner, spans, spans, owner, owner, spans, ...: each rep is one run per mode, and the
    order flips every rep, so neither mode always goes first through a slow drift."""
    order = list(MODES)
    for rep in range(reps):
        yield from (order if rep % 2 == 0 else order[::-1])


# -- reporting ------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_runs(runs: list[Run]) -> None:
    print(f"{'run':>3} {'mode':<9}{'tokens':>7}{'TTFT ms':>9}{'decode':>8}{'total ms':>10}"
          f"{'tail ms':>9}{'attr.method':>13}{'others CPU-s':>14}")
    for number, r in enumerate(runs):
        print(f"{number:>3} {r.mode:<9}{r.tokens:>7}{r.ttft * 1e3:>9.1f}{r.decode_rate:>8.2f}"
              f"{r.done * 1e3:>10.1f}{r.tail * 1e3:>9.2f}{r.method:>13}{r.others_cpu:>14.2f}")


def print_timing(runs: list[Run], max_tokens: int) -> None:
    by_mode = {mode: [r for r in runs if r.mode == mode] for mode in MODES}
    header = (f"{'mode':<10}{'total ms':>10}{'tail ms':>9}{'tail share':>12}{'TTFT ms':>9}"
              f"{'decode tok/s':>14}{'min-max total ms':>19}{'min-max tail ms':>17}")
    print(header)
    print("-" * len(header))
    medians: dict[str, tuple[float, float]] = {}
    for mode, mode_runs in by_mode.items():
        totals = [r.done * 1e3 for r in mode_runs]
        tails = [r.tail * 1e3 for r in mode_runs]
        total, tail = median(totals), median(tails)
        medians[mode] = (total, tail)
        print(f"{mode:<10}{total:>10.1f}{tail:>9.2f}{100 * tail / total:>11.2f}%"
              f"{median([r.ttft * 1e3 for r in mode_runs]):>9.1f}"
              f"{median([r.decode_rate for r in mode_runs]):>14.2f}"
              f"{min(totals):>10.0f} - {max(totals):<6.0f}{min(tails):>8.1f} - {max(tails):<6.1f}")
    (owner_total, owner_tail), (spans_total, spans_tail) = medians["owner/1"], medians["spans/1"]
    overhead = (spans_total - owner_total) / owner_total
    pairs = list(zip(by_mode["owner/1"], by_mode["spans/1"], strict=True))
    paired_total = median([(s.done - o.done) / o.done for o, s in pairs])
    paired_tail = median([(s.tail - o.tail) * 1e3 for o, s in pairs])
    totals = [r.done for r in runs]
    spread = (max(totals) - min(totals)) / min(totals)
    disturbed = sum(r.others_cpu > DISTURBED_CPU_S for r in runs)
    print()
    print(f"end-to-end overhead spans/1 vs owner/1 (median totals): {100 * overhead:+.2f}% "
          f"({spans_total - owner_total:+.1f} ms); paired per rep: {100 * paired_total:+.2f}%; "
          f"the totals of all runs spread {100 * spread:.1f}%; {disturbed} of {len(runs)} runs "
          f"shared the CPUs (other processes > {DISTURBED_CPU_S} CPU-s during the run)")
    quiet = {mode: [r.done for r in mode_runs if r.others_cpu <= DISTURBED_CPU_S]
             for mode, mode_runs in by_mode.items()}
    if all(quiet.values()):
        owner_quiet, spans_quiet = median(quiet["owner/1"]), median(quiet["spans/1"])
        print(f"the same over the undisturbed runs only ({len(quiet['owner/1'])} owner/1, "
              f"{len(quiet['spans/1'])} spans/1): {1e3 * owner_quiet:.1f} vs "
              f"{1e3 * spans_quiet:.1f} ms, {100 * (spans_quiet / owner_quiet - 1):+.2f}%")
    print(f"tail spans/1 - owner/1: {spans_tail - owner_tail:+.2f} ms (medians), "
          f"{paired_tail:+.2f} ms (paired per rep)")
    share = spans_tail / spans_total
    added = (spans_tail - owner_tail) / owner_total

    def verdict(value: float) -> str:
        return "met" if value <= TARGET_SHARE else "NOT met"

    print(f"target attribution + receipt <= {100 * TARGET_SHARE:.0f}% of a {max_tokens}-token "
          f"response: spans/1 tail {100 * share:.2f}% of its total, {verdict(share)}; "
          f"attribution alone (tail difference) {100 * added:.2f}%, {verdict(added)}; median "
          f"totals {100 * overhead:+.2f}%, {verdict(overhead)} (within the noise above)")


def print_memory(stages: dict[str, dict[str, int]], index_bytes: int,
                 mapped: dict[str, tuple[int, int]]) -> None:
    """RSS per stage, growth against the reading before the datanet, and the deltas."""
    index_mib = index_bytes / 2**20
    base, indexed, after_runs, after_control = stages.values()
    fields = ("VmRSS", "RssAnon", "RssFile")

    def growth(later: dict[str, int], earlier: dict[str, int]) -> dict[str, float]:
        return {k: (later[k] - earlier[k]) / 1024 for k in fields}

    def row(label: str, grown: dict[str, float], reading: dict[str, int] | None = None) -> None:
        absolute = (f"{reading['VmRSS'] / 1024:>8.1f}{reading['RssAnon'] / 1024:>9.1f}"
                    f"{reading['RssFile'] / 1024:>9.1f}" if reading else f"{'':>26}")
        print(f"{label:<44}{absolute}{grown['VmRSS']:>+9.1f}{grown['RssAnon']:>+8.1f}"
              f"{grown['RssFile']:>+8.1f}{100 * grown['VmRSS'] / index_mib:>9.1f}%")

    print(f"{'daemon RSS, MiB':<44}{'VmRSS':>8}{'RssAnon':>9}{'RssFile':>9}{'growth':>9}"
          f"{'anon':>8}{'file':>8}{'/index':>10}")
    for stage, reading in stages.items():
        row(stage, growth(reading, base), reading)
    row("delta: indexing", growth(indexed, base))
    row("delta: warm-ups + timed runs", growth(after_runs, indexed))
    row("delta: control requests", growth(after_control, after_runs))
    resident = sum(kib for _, kib in mapped.values()) / 1024
    print(f"index pages resident in the daemon after the runs (smaps): {resident:.1f} MiB = "
          f"{100 * resident / index_mib:.1f}% of the index: " + ", ".join(
              f"{name} {kib / 1024:.1f}/{size / 1024:.1f}" for name, (size, kib)
              in sorted(mapped.items())) + " MiB resident/mapped")
    share = growth(after_runs, base)["VmRSS"] / index_mib
    anon = growth(after_runs, base)["RssAnon"] / index_mib
    print(f"target RSS growth < {100 * TARGET_RSS:.0f}% of the index ({index_mib:.1f} MiB) after "
          f"the runs: {100 * share:.1f}% {'met' if share < TARGET_RSS else 'NOT met'} "
          f"(anon {100 * anon:.1f}%, file-backed {100 * (share - anon):.1f}%)")
    print("file-backed (RssFile) pages are mapped page cache: clean, the kernel can drop them "
          "under memory pressure and read them back; anonymous (RssAnon) memory is the heap")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="generated corpus MB (20)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per mode (5)")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens (128)")
    parser.add_argument("--threads", type=int, default=2, help="daemon CPU threads (2)")
    parser.add_argument("--seed", type=int, default=7, help="corpus seed (7)")
    parser.add_argument("--per-run", action="store_true", help="print every timed run")
    args = parser.parse_args()
    if args.reps < 1 or args.max_tokens < 2 or args.threads < 1 or args.mb <= 0:
        parser.error("--reps, --threads >= 1, --max-tokens >= 2, --mb > 0")

    daemon: Daemon | None = None
    with tempfile.TemporaryDirectory(prefix="edged-attrbench-") as tmp:
        base = Path(tmp)
        try:
            start = time.perf_counter()
            corpus_file = base / "corpus.tsv"
            generate_corpus(corpus_file, args.mb, args.seed)
            uploads = corpus_by_contributor(corpus_file)
            uploads[QUOTES_CONTRIBUTOR] = quote_documents(args.seed)
            corpus_bytes = corpus_file.stat().st_size
            corpus_file.unlink()
            generated_s = time.perf_counter() - start

            load_start = loadavg()
            daemon = Daemon(base, args.threads)
            start = time.perf_counter()
            daemon.start()
            ready_s = time.perf_counter() - start
            if DATANET in {d["name"] for d in daemon.call("GET", "/api/datanets")["datanets"]}:
                raise BenchError(f"a fresh data dir already has {DATANET!r}")
            # Load without generating: every generation leaves garbage in the daemon's heap
            # until Python's cyclic GC runs (see bench/README.md), so none runs before the
            # indexing delta is read.
            set_mode(daemon, "owner/1")
            start = time.perf_counter()
            daemon.call("POST", f"/api/models/{MODEL}/load", {})
            load_s = time.perf_counter() - start
            time.sleep(1.0)
            memory = {"model loaded, before the datanet": daemon.memory()}

            daemon.call("POST", "/api/datanets", {"name": DATANET})
            start = time.perf_counter()
            for contributor, documents in sorted(uploads.items()):
                daemon.call("POST", f"/api/datanets/{DATANET}/documents?contributor={contributor}",
                            raw=jsonl(documents), content_type="application/x-ndjson")
            index_s = time.perf_counter() - start
            del uploads
            state = daemon.call("GET", f"/api/datanets/{DATANET}")
            time.sleep(1.0)
            memory["after indexing"] = daemon.memory()
            index_dir = daemon.data_dir / "datanets" / DATANET
            index_apparent, index_allocated = folder_bytes(index_dir)

            load_before = loadavg()
            busy, own, wall = machine_busy_seconds(), own_cpu_seconds(daemon), time.monotonic()
            warm = {mode: timed(daemon, mode, args.max_tokens) for mode in MODES}
            runs = [timed(daemon, mode, args.max_tokens) for mode in abba(args.reps)]
            wall = time.monotonic() - wall
            others = machine_busy_seconds() - busy - (own_cpu_seconds(daemon) - own)
            load_after = loadavg()
            time.sleep(1.0)
            memory[f"after 2 warm-ups + {len(runs)} timed runs"] = daemon.memory()
            mapped = daemon.mapped(index_dir)
            evidence = daemon.call("GET", f"/v1/receipts/{runs[-1].receipt_id}/evidence"
                                   if runs[-1].mode == "spans/1" else
                                   f"/v1/receipts/{runs[-2].receipt_id}/evidence")
            set_mode(daemon, "owner/1")
            control = len(runs) + len(warm)
            for _ in range(control):
                daemon.stream("owner/1", CONTROL_MAX_TOKENS)
            time.sleep(1.0)
            memory[f"after {control} control requests (owner/1)"] = daemon.memory()
        except BenchError as exc:
            print(f"bench failed: {exc}")
            if daemon is not None:
                daemon.stop()
                print("edged log (tail):\n" + daemon.log_tail())
            raise SystemExit(1) from None
        finally:
            if daemon is not None:
                daemon.stop()

    cpus = os.cpu_count() or 1
    print(f"python {platform.python_version()}, {platform.machine()}, {cpus} CPUs, kernel "
          f"{platform.release()}; model {MODEL}, {args.threads} threads; greedy, max_tokens "
          f"{args.max_tokens}; {args.reps} reps per mode (ABBA) after 1 warm-up each")
    print(f"loadavg {load_start} at start, {load_before} before the timed runs, "
          f"{load_after} after; other processes used {others:.1f} CPU-s during the "
          f"{wall:.0f} s of runs ({100 * others / (wall * cpus):.0f}% of the machine)")
    print(f"corpus: {corpus_bytes / 1e6:.1f} MB generated ({CONTRIBUTORS} contributors, seed "
          f"{args.seed}, {generated_s:.1f} s) + {QUOTES_CONTRIBUTOR}; {DATANET}: "
          f"{state['documents']} documents, {len(state['contributors'])} contributors, "
          f"{state['segments']} segment(s), indexed over HTTP in {index_s:.1f} s "
          f"({corpus_bytes / 1e6 / index_s:.2f} MB/s)")
    print(f"index on disk: {index_apparent / 2**20:.1f} MiB (du -sb), "
          f"{index_allocated / 2**20:.1f} MiB allocated; daemon ready in {ready_s:.1f} s, "
          f"model load {load_s:.1f} s")
    texts = {r.text for r in [*warm.values(), *runs]}
    methods_ok = all(r.method == r.mode for r in [*warm.values(), *runs])
    spans = evidence["evidence"].get("spans", [])
    contributors = sorted({c for span in spans for c in span["by_contributor"]})
    print(f"identical text in every run: {'yes' if len(texts) == 1 else 'NO'}; tokens "
          f"{'/'.join(map(str, sorted({r.tokens for r in runs})))}; attr.method as the mode "
          f"in every receipt: {'yes' if methods_ok else 'NO'}")
    print(f"spans/1 evidence: {len(spans)} spans, {sum(s['words'] for s in spans)} words "
          f"matched, credited {', '.join(contributors) or 'nobody'}; warm-up tails: " +
          ", ".join(f"{mode} {run.tail * 1e3:.1f} ms" for mode, run in warm.items()))
    if args.per_run:
        print()
        print_runs(runs)
    print()
    print_timing(runs, args.max_tokens)
    print()
    print_memory(memory, index_apparent, mapped)


if __name__ == "__main__":
    main()
