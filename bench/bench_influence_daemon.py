"""Benchmark: the cost of influence/1 per prediction inside the daemon.

Starts ``edged serve`` (which installs the demo classifier: breast cancer, 8 hospitals
bound), then times single-row ``/v2/models/demo-classifier/infer`` requests with the
data share on (``influence/1``) and off (``owner/1``), alternating blocks of requests so
machine noise hits both, and reports the median latency of each and the difference as
a share of the prediction's latency (target: under 5%). Run:
``.venv/bin/python bench/bench_influence_daemon.py [--requests 400]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edged.demo_classifier import demo_rows  # noqa: E402
from edged.devtools.daemon import Daemon  # noqa: E402

MODEL = "demo-classifier"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per mode")
    parser.add_argument("--block", type=int, default=50, help="requests per alternation")
    args = parser.parse_args()
    row = demo_rows(1)
    body = {"inputs": [{"name": "features", "shape": list(row.shape), "datatype": "FP32",
                        "data": row.ravel().tolist()}]}
    with tempfile.TemporaryDirectory() as folder:
        node = Daemon(Path(folder) / "data", extra_args=()).start(timeout=180)
        try:
            client = httpx.Client(base_url=node.url, timeout=30)
            timings: dict[str, list[float]] = {"influence/1": [], "owner/1": []}
            methods: dict[str, set[str]] = {"influence/1": set(), "owner/1": set()}
            for _ in range(5):  # warm-up: load the model and the binding
                client.post(f"/v2/models/{MODEL}/infer", json=body).raise_for_status()
            while min(len(t) for t in timings.values()) < args.requests:
                for mode, share in (("influence/1", 500_000), ("owner/1", 0)):
                    client.patch(f"/api/models/{MODEL}",
                                 json={"data_share_ppm": share}).raise_for_status()
                    for _ in range(args.block):
                        start = time.perf_counter()
                        response = client.post(f"/v2/models/{MODEL}/infer", json=body)
                        timings[mode].append(time.perf_counter() - start)
                        response.raise_for_status()
                    receipt = client.get(f"/v1/receipts/{response.json()['receipt']['id']}")
                    methods[mode].add(receipt.json()["attr"]["method"])
        finally:
            node.stop()
    medians = {mode: statistics.median(t) * 1000 for mode, t in timings.items()}
    print(f"{'mode':<14}{'requests':>10}{'median ms':>12}{'p99 ms':>10}  receipts' method")
    for mode, values in timings.items():
        p99 = sorted(values)[int(len(values) * 0.99) - 1] * 1000
        print(f"{mode:<14}{len(values):>10}{medians[mode]:>12.3f}{p99:>10.3f}  "
              f"{','.join(sorted(methods[mode]))}")
    extra = medians["influence/1"] - medians["owner/1"]
    share = extra / medians["owner/1"] * 100
    verdict = "met" if share < 5 else "not met"
    print(f"influence/1 adds {extra:+.3f} ms per prediction = {share:+.2f}% of its latency "
          f"(target < 5%: {verdict})")


if __name__ == "__main__":
    main()
