"""Benchmark: what ``spans/1`` attribution costs end to end in the real daemon.

One run starts ``edged serve`` (demo Gemma 3 270M and demo datanet ``demo-classics``) in a
temp data dir, then:

1. creates the datanet ``bench-corpus`` over the HTTP API and fills it with the seeded
   multi-contributor corpus of ``bench_spans.py`` (``--mb`` MB, one
   ``POST /api/datanets/bench-corpus/documents`` per contributor), plus one contributor,
   ``bench-quotes``, whose documents quote the demo texts inside generated filler (so the
   greedy output also matches inside the big index, not only in ``demo-classics``);
2. toggles the model between ``owner/1`` (``PATCH /api/models/gemma3-270m`` with no
   datanets, no data share) and ``spans/1`` (``demo-classics`` + ``bench-corpus``, 30% data
   share) and runs ``--reps`` streaming ``/v1/completions`` per mode, alternating modes
   (greedy, ``--max-tokens`` 128, ``stream_options.include_usage``), checking each receipt's
   ``attr.method`` through ``GET /v1/receipts/{id}``;
3. records the daemon's resident memory (``/proc/<pid>/status``: VmRSS, RssAnon, RssFile)
   before the datanet exists, after indexing and after the timed runs, against the index's
   size on disk.

*total* is from sending the request to ``[DONE]``; *tail* is from the last content chunk to
the chunk that carries the receipt: the attribution (spans/1 only), the receipt's signature
and its durable SQLite commit all happen there. Not a test: no asserts on timings.

Run: ``.venv/bin/python bench/bench_attribution_e2e.py [--mb 20] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_spans import CONTRIBUTORS, TextModel, generate_corpus  # noqa: E402

MODEL = "gemma3-270m"
DEMO_DATANET = "demo-classics"
DATANET = "bench-corpus"
QUOTES_CONTRIBUTOR = "bench-quotes"
DATA_SHARE_PPM = 300_000
# Greedy Gemma 3 270M continues the Declaration of Independence for a while, so part of its
# output is corpus text (demo-classics, and bench-quotes inside bench-corpus).
PROMPT = "We hold these truths to be self-evident,"
MODES = {
    "owner/1": {"datanets": [], "data_share_ppm": 0},
    "spans/1": {"datanets": [DEMO_DATANET, DATANET], "data_share_ppm": DATA_SHARE_PPM},
}
TARGET_SHARE = 0.03  # attribution plus receipt <= 3% of a 128-token response
TARGET_RSS = 0.10  # daemon RSS growth < 10% of the index size
SETTLE_S = 0.3  # idle gap before each timed run (as bench_generation.py)


class BenchError(Exception):
    """The bench cannot go on; main() prints the message and edged's log tail."""


@dataclass(frozen=True)
class Run:
    """One timed streaming completion; times in seconds from sending the request."""

    mode: str
    tokens: int
    ttft: float
    last: float  # last chunk with text
    receipt_at: float  # the chunk carrying the receipt
    done: float  # [DONE]
    text: str
    receipt_id: str
    method: str = ""
    data_payees: int = 0
    rss: dict[str, int] = dataclasses.field(default_factory=dict)  # the daemon's, after it

    @property
    def tail(self) -> float:
        return self.receipt_at - self.last


# -- the daemon -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Daemon:
    """``python -m edged serve`` in a subprocess, logging to a file in its temp dir."""

    def __init__(self, base: Path, threads: int) -> None:
        self.data_dir = base / "data"
        self.log_path = base / "edged.log"
        self.port = free_port()
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
        env["EDGED_LOG_LEVEL"] = "warning"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        # --keep-alive -1: indexing may take longer than the default 300 s idle unload.
        args = [sys.executable, "-m", "edged", "--data-dir", str(self.data_dir), "serve",
                "--port", str(self.port), "--threads", str(self.threads), "--keep-alive", "-1"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"edged exited with {self.process.returncode}")
            try:
                if self.request("GET", "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError("edged did not become ready in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def memory(self) -> dict[str, int]:
        """The daemon's resident memory in KiB: VmRSS, RssAnon, RssFile, RssShmem."""
        assert self.process is not None
        fields: dict[str, int] = {}
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    fields[name] = int(value.split()[0])
        return fields

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str = "application/json",
                timeout: float = 600) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body))
            conn.request(method, path, body=data, headers={"Content-Type": content_type})
            response = conn.getresponse()
            payload = response.read()
            return response.status, json.loads(payload) if payload else None
        finally:
            conn.close()

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, answer = self.request(method, path, body, **kwargs)
        if status >= 300:
            raise BenchError(f"{method} {path} answered {status}: {answer}")
        return answer

    def stream(self, mode: str, max_tokens: int) -> Run:
        """One streaming completion, timed from the request to each chunk."""
        body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens,
                           "temperature": 0, "stream": True,
                           "stream_options": {"include_usage": True}})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        pieces: list[str] = []
        first = last = receipt_at = 0.0
        usage: dict[str, int] | None = None
        receipt_id = ""
        try:
            start = time.perf_counter()
            conn.request("POST", "/v1/completions", body=body,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise BenchError(f"edged answered {response.status}: {response.read()[:500]!r}")
            while line := response.readline():
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                event = json.loads(payload)
                if "error" in event:
                    raise BenchError(f"edged stream failed: {event['error']}")
                now = time.perf_counter() - start
                for choice in event.get("choices", []):
                    if choice.get("text"):
                        first = first or now
                        last = now
                        pieces.append(choice["text"])
                usage = event.get("usage", usage)
                if "receipt" in event:
                    receipt_at = now
                    receipt_id = event["receipt"]["id"]
            done = time.perf_counter() - start
        finally:
            conn.close()
        if usage is None or not receipt_id:
            raise BenchError("edged sent no usage or no receipt in its final chunks")
        return Run(mode, usage["completion_tokens"], first, last, receipt_at, done,
                   "".join(pieces), receipt_id)

    def check_receipt(self, run: Run) -> Run:
        """Fetch the receipt (untimed) and record its attribution method and data payees."""
        receipt = self.call("GET", f"/v1/receipts/{run.receipt_id}")
        data = sum(1 for payee in receipt["payees"] if payee[1] == "data")
        return dataclasses.replace(run, method=receipt["attr"]["method"], data_payees=data)


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
    """(apparent size, allocated size) of every file under ``folder``, like ``du -b``/``du``."""
    apparent = allocated = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            apparent += stat.st_size
            allocated += stat.st_blocks * 512
    return apparent, allocated


# -- running and reporting ------------------------------------------------------------------


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def set_mode(daemon: Daemon, mode: str) -> None:
    daemon.call("PATCH", f"/api/models/{MODEL}", MODES[mode])


def timed(daemon: Daemon, mode: str, max_tokens: int) -> Run:
    set_mode(daemon, mode)
    gc.collect()
    time.sleep(SETTLE_S)
    run = daemon.check_receipt(daemon.stream(mode, max_tokens))
    return dataclasses.replace(run, rss=daemon.memory())


def alternating(reps: int) -> Iterator[str]:
    """owner, spans, spans, owner, owner, spans, ...: each mode follows each mode equally
    often after the first pair; strict ABAB with an odd count would favour one side."""
    order = list(MODES)
    for rep in range(reps):
        yield from (order if rep % 2 == 0 else order[::-1])


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_memory(stages: dict[str, dict[str, int]], control_requests: int,
                 index_bytes: int) -> None:
    """RSS per stage against the reading before the datanet, and two deltas: the requests
    after indexing, and the control (as many owner/1 requests before the datanet existed)."""
    index_mib = index_bytes / 2**20
    loaded, base, indexed, final = stages.values()
    fields = ("VmRSS", "RssAnon", "RssFile")

    def growth(later: dict[str, int], earlier: dict[str, int]) -> dict[str, float]:
        return {k: (later[k] - earlier[k]) / 1024 for k in fields}

    def row(label: str, grown: dict[str, float], reading: dict[str, int] | None = None) -> None:
        absolute = (f"{reading['VmRSS'] / 1024:>8.1f}{reading['RssAnon'] / 1024:>9.1f}"
                    f"{reading['RssFile'] / 1024:>9.1f}" if reading else f"{'':>26}")
        print(f"{label:<40}{absolute}{grown['VmRSS']:>+9.1f}{grown['RssAnon']:>+8.1f}"
              f"{grown['RssFile']:>+8.1f}{100 * grown['VmRSS'] / index_mib:>13.1f}%")

    print(f"{'daemon RSS, MiB (growth: vs before)':<40}{'VmRSS':>8}{'RssAnon':>9}{'RssFile':>9}"
          f"{'growth':>9}{'anon':>8}{'file':>8}{'growth/index':>14}")
    for stage, reading in stages.items():
        row(stage, growth(reading, base), reading)
    row("delta: the requests after indexing", growth(final, indexed))
    row(f"delta: control, {control_requests} owner/1 reqs, no datanet", growth(base, loaded))
    share = growth(final, base)["VmRSS"] / index_mib
    print(f"index on disk {index_mib:.1f} MiB; target RSS growth < {100 * TARGET_RSS:.0f}% of "
          f"the index: {100 * share:.1f}% {'met' if share < TARGET_RSS else 'NOT met'}")
    print("RssFile: mapped pages (the index's), clean page cache the kernel can drop and read "
          "back; RssAnon: heap, not reclaimable; the control shows what requests alone add")


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

            daemon = Daemon(base, args.threads)
            load_start = loadavg()
            start = time.perf_counter()
            daemon.start()
            start_s = time.perf_counter() - start
            if DATANET in {d["name"] for d in daemon.call("GET", "/api/datanets")["datanets"]}:
                raise BenchError(f"a fresh data dir already has {DATANET!r}")
            # Load the model, then the control: as many owner/1 requests as will follow the
            # index, so that what requests alone add to the RSS shows (see the README).
            set_mode(daemon, "owner/1")
            first = daemon.stream("owner/1", args.max_tokens)
            time.sleep(1.0)
            memory = {"model loaded (1 request)": daemon.memory()}
            control_requests = len(MODES) * (args.reps + 1)
            for _ in range(control_requests):
                daemon.stream("owner/1", args.max_tokens)
            time.sleep(1.0)
            memory["before the datanet"] = daemon.memory()

            daemon.call("POST", "/api/datanets", {"name": DATANET})
            start = time.perf_counter()
            for contributor, documents in sorted(uploads.items()):
                daemon.call("POST", f"/api/datanets/{DATANET}/documents?contributor={contributor}",
                            raw=jsonl(documents), content_type="application/x-ndjson")
            index_s = time.perf_counter() - start
            state = daemon.call("GET", f"/api/datanets/{DATANET}")
            time.sleep(1.0)
            memory["after indexing"] = daemon.memory()
            index_apparent, index_allocated = folder_bytes(
                daemon.data_dir / "datanets" / DATANET)
            del uploads

            load_before = loadavg()
            warm = {mode: timed(daemon, mode, args.max_tokens) for mode in MODES}
            runs: list[Run] = [timed(daemon, mode, args.max_tokens)
                               for mode in alternating(args.reps)]
            load_after = loadavg()
            time.sleep(1.0)
            memory[f"after warm-ups + {len(runs)} timed runs"] = daemon.memory()
            evidence = daemon.call("GET", f"/v1/receipts/{warm['spans/1'].receipt_id}/evidence")
        except BenchError as exc:
            print(f"bench failed: {exc}")
            if daemon is not None:
                daemon.stop()
                print("edged log (tail):\n" + daemon.log_tail())
            raise SystemExit(1) from None
        finally:
            if daemon is not None:
                daemon.stop()

    by_mode = {mode: [r for r in runs if r.mode == mode] for mode in MODES}
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
          f"model {MODEL}, {args.threads} threads; greedy, max_tokens {args.max_tokens}; "
          f"{args.reps} reps per mode, alternating, after 1 warm-up each")
    print(f"loadavg {load_start} at start, {load_before} before the timed runs, "
          f"{load_after} after")
    print(f"corpus: {corpus_bytes / 1e6:.1f} MB generated ({CONTRIBUTORS} contributors, seed "
          f"{args.seed}, {generated_s:.1f} s) + {QUOTES_CONTRIBUTOR}; {DATANET}: "
          f"{state['documents']} documents, {len(state['contributors'])} contributors, "
          f"{state['segments']} segment(s), indexed in {index_s:.1f} s "
          f"({corpus_bytes / 1e6 / index_s:.2f} MB/s, {len(MODES['spans/1']['datanets'])} "
          f"datanets queried)")
    print(f"daemon ready in {start_s:.1f} s (installs the demo model and datanet); first "
          f"request (loads the model) {first.done:.1f} s")
    print(f"index on disk: {index_apparent / 2**20:.1f} MiB apparent, "
          f"{index_allocated / 2**20:.1f} MiB allocated")
    texts = {r.text for r in [*warm.values(), *runs]}
    methods_ok = all(r.method == r.mode for r in [*warm.values(), *runs])
    tokens = sorted({r.tokens for r in runs})
    spans = evidence["evidence"].get("spans", [])
    matched_words = sum(span["words"] for span in spans)
    contributors = sorted({c for span in spans for c in span["by_contributor"]})
    print("warm-up tails (first request per mode after indexing): " + ", ".join(
        f"{mode} {run.tail * 1e3:.1f} ms" for mode, run in warm.items()))
    print(f"identical text in every run: {'yes' if len(texts) == 1 else 'NO'}; tokens "
          f"{'/'.join(map(str, tokens))}; attr.method as the mode in every receipt: "
          f"{'yes' if methods_ok else 'NO'}")
    print(f"spans/1 evidence: {len(spans)} spans, {matched_words} words matched, credited: "
          f"{', '.join(contributors) or 'nobody'}; data payees per spans/1 receipt: "
          f"{warm['spans/1'].data_payees}")
    if args.per_run:
        print()
        print(f"{'run':>3} {'mode':<9}{'tokens':>7}{'TTFT ms':>9}{'total ms':>10}"
              f"{'tail ms':>9}{'method':>9}{'RSS anon MiB':>14}{'file MiB':>10}")
        for number, r in enumerate(runs):
            print(f"{number:>3} {r.mode:<9}{r.tokens:>7}{r.ttft * 1e3:>9.1f}"
                  f"{r.done * 1e3:>10.1f}{r.tail * 1e3:>9.2f}{r.method:>9}"
                  f"{r.rss['RssAnon'] / 1024:>14.1f}{r.rss['RssFile'] / 1024:>10.1f}")
    print()
    header = (f"{'mode':<10}{'total ms':>10}{'tail ms':>9}{'tail share':>12}"
              f"{'min-max total':>17}{'min-max tail':>15}")
    print(header)
    print("-" * len(header))
    medians = {}
    for mode, mode_runs in by_mode.items():
        total = median([r.done * 1e3 for r in mode_runs])
        tail = median([r.tail * 1e3 for r in mode_runs])
        medians[mode] = (total, tail)
        totals = [r.done * 1e3 for r in mode_runs]
        tails = [r.tail * 1e3 for r in mode_runs]
        print(f"{mode:<10}{total:>10.1f}{tail:>9.2f}{100 * tail / total:>11.2f}%"
              f"{min(totals):>8.0f} - {max(totals):<6.0f}{min(tails):>6.1f} - {max(tails):<6.1f}")
    (owner_total, owner_tail), (spans_total, spans_tail) = medians["owner/1"], medians["spans/1"]
    overhead = (spans_total - owner_total) / owner_total
    pairs = list(zip(by_mode["owner/1"], by_mode["spans/1"], strict=True))
    paired_tail = median([(s.tail - o.tail) * 1e3 for o, s in pairs])
    paired_total = median([(s.done - o.done) / o.done for o, s in pairs])
    spread = (max(r.done for r in runs) - min(r.done for r in runs)) / min(r.done for r in runs)
    print()
    print(f"spans/1 vs owner/1, end to end: {100 * overhead:+.2f}% of the median total "
          f"({spans_total - owner_total:+.1f} ms; paired per-rep median "
          f"{100 * paired_total:+.2f}%; all totals spread {100 * spread:.1f}%)")
    print(f"spans/1 vs owner/1, tail: {spans_tail - owner_tail:+.2f} ms "
          f"(paired per-rep median {paired_tail:+.2f} ms)")
    share = spans_tail / spans_total
    added = (spans_tail - owner_tail) / owner_total
    print(f"target attribution + receipt <= {100 * TARGET_SHARE:.0f}% of a {args.max_tokens}-"
          f"token response: spans/1 tail {100 * share:.2f}% of its total "
          f"{'met' if share <= TARGET_SHARE else 'NOT met'}; tail added by spans/1 "
          f"{100 * added:.2f}% of the owner/1 total {'met' if added <= TARGET_SHARE else 'NOT met'}"
          f"; median totals {100 * overhead:+.2f}% "
          f"{'met' if overhead <= TARGET_SHARE else 'NOT met'} (noise-limited: see the spread)")
    print()
    print_memory(memory, control_requests, index_apparent)


if __name__ == "__main__":
    main()
