"""Benchmark: a routed stream against the same stream asked of the serving node directly.

Two real ``edged serve`` processes on loopback with ``federation`` on, trusting each
other: S serves the tiny GGUF (edged/devtools/tiny_gguf.py), R holds no model and routes
to S. Each round asks S directly and then R (order alternating) for the same streamed
completion (greedy, ``max_tokens`` tokens, ``ignore_eos``-free prompt chosen so the model
runs to the limit), timing on the client: TTFT = request sent to the first event with
text; tok/s = text events after the first over the time from the first to the last.
Reports medians, the TTFT the hop adds and the tok/s ratio (targets: at most +10 ms,
at least 0.97x). Not a test: asserts nothing about timings. From the repository root:
``.venv/bin/python bench/bench_federation.py`` (``--rounds``, ``--max-tokens``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import cpu_model, loadavg  # noqa: E402
from edged.devtools.daemon import Daemon, clean_environment  # noqa: E402
from edged.devtools.tiny_gguf import write_tiny_llama_gguf  # noqa: E402

CONTEXT = 4096


def one_stream(client: httpx.Client, url: str, max_tokens: int) -> tuple[float, float, int]:
    """(TTFT s, tokens/s after the first, text events) of one streamed completion."""
    body = {"model": "tiny", "prompt": "bench", "max_tokens": max_tokens, "stream": True,
            "temperature": 0}
    started = time.perf_counter()
    first = last = 0.0
    events = 0
    with client.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                now = time.perf_counter()
                if not events:
                    first = now
                last = now
                events += 1
    rate = (events - 1) / (last - first) if events > 1 and last > first else 0.0
    return first - started, rate, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = write_tiny_llama_gguf(root / "tiny.gguf", context_length=CONTEXT)
        serving, routing = Daemon(root / "s" / "data"), Daemon(root / "r" / "data")
        base = {"EDGED_FEDERATION": "1", "EDGED_SYNC_INTERVAL": "600", "EDGED_LOG_LEVEL": "info"}
        serving.env = clean_environment(**base)
        routing.env = clean_environment(**base, EDGED_PEERS=serving.url)
        try:
            serving.start()
            routing.start()
            keys = [json.loads(n.cli("keys", "show").stdout)["public_key"]
                    for n in (serving, routing)]
            serving.cli("peers", "trust", keys[1])
            routing.cli("peers", "trust", keys[0])
            serving.cli("models", "add", str(model), "--name", "tiny", "--context-length",
                        str(CONTEXT), "--chat-format", "none")
            routing.cli("sync", "now")
            results: dict[str, list[tuple[float, float, int]]] = {"direct": [], "routed": []}
            with httpx.Client(timeout=60) as client:
                for url in (serving.url, routing.url):  # warm up: load, connections
                    one_stream(client, url, 8)
                for number in range(args.rounds):
                    order = [("direct", serving.url), ("routed", routing.url)]
                    for name, url in order if number % 2 == 0 else order[::-1]:
                        results[name].append(one_stream(client, url, args.max_tokens))
        finally:
            routing.stop()
            serving.stop()
    ttft = {name: statistics.median(r[0] for r in runs) * 1000 for name, runs in
            results.items()}
    rate = {name: statistics.median(r[1] for r in runs) for name, runs in results.items()}
    events = {name: statistics.median(r[2] for r in runs) for name, runs in results.items()}
    print(f"CPU: {cpu_model()}; load {loadavg()}; {args.rounds} rounds of "
          f"{args.max_tokens} tokens, tiny GGUF, loopback")
    print(f"{'path':<8} {'TTFT ms':>9} {'tok/s':>10} {'events':>7}")
    for name in ("direct", "routed"):
        print(f"{name:<8} {ttft[name]:>9.2f} {rate[name]:>10.1f} {events[name]:>7.0f}")
    print(f"hop adds {ttft['routed'] - ttft['direct']:+.2f} ms TTFT (target <= +10 ms); "
          f"tok/s ratio {rate['routed'] / rate['direct']:.3f}x (target >= 0.97x)")


if __name__ == "__main__":
    main()
