"""Benchmark: ONNX predictions through edged's HTTP API (Open Inference Protocol v2).

Two graphs are built with ``onnx.helper`` (FP32, dynamic batch dimension):

- ``mlp``: a compute-bound MLP ``512 -> 2048 -> 2048 -> 10`` with Relu (about 5.3M
  parameters);
- ``tiny``: the 4 -> 3 softmax linear classifier of ``edged/devtools/tiny_onnx.py``,
  where HTTP, JSON and receipts dominate.

Each is registered twice in one ``edged serve`` subprocess (temp data dir,
``--no-demo-model``, ``--threads``): ``<name>-batched`` (``max_batch_size`` 32,
``batch_delay_us`` 2000) and ``<name>-single`` (``max_batch_size`` 1,
``batch_delay_us`` 0: one ``session.run`` per request). The batching fields are not
updatable through ``PATCH /api/models``, so the manifests are written with
:class:`edged.models.ModelStore` before the daemon starts.

Load: closed loop, single-row JSON requests to ``POST /v2/models/{name}/infer`` from
``C`` aiohttp clients in this process (each sends its next request when the previous
one returns), ``--seconds`` per point after a warm-up; reported: requests/s and p50/p99
latency. The ceiling is in-process ONNX Runtime with the same intra-op thread count:
single-row runs/s and batch-32 rows/s. With ``--profile``, the daemon is sampled with
``py-spy record`` while the tiny batched model runs at concurrency 8, and the samples
are summarised by where the time goes (JSON, tensor decode/encode, receipts, ...).

The load generator shares the machine with the daemon: on a small machine the client's
own CPU use lowers the daemon's numbers. Not a test: no asserts on timings.

Run: ``.venv/bin/python bench/bench_predict.py [--seconds 5] [--threads 1] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edged.devtools.daemon import Daemon, clean_environment  # noqa: E402
from edged.devtools.tiny_onnx import IR_VERSION, OPSET, write_linear_classifier  # noqa: E402
from edged.manifest import Manifest  # noqa: E402
from edged.models import ModelStore  # noqa: E402

MLP_LAYERS = (512, 2048, 2048, 10)
CONCURRENCY = (1, 8, 32)
BATCHED = {"max_batch_size": 32, "batch_delay_us": 2000}
SINGLE = {"max_batch_size": 1, "batch_delay_us": 0}
TARGET_SPEEDUP = 3.0
TARGET_P99_MS = 50.0


def write_mlp(path: Path, seed: int = 0) -> int:
    """Write the MLP; returns its parameter count."""
    rng = np.random.default_rng(seed)
    nodes, inits, params, current = [], [], 0, "input"
    for i, (fan_in, fan_out) in enumerate(zip(MLP_LAYERS, MLP_LAYERS[1:], strict=False)):
        w = (rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"l{i}.weight"),
                  numpy_helper.from_array(b, f"l{i}.bias")]
        params += w.size + b.size
        nodes.append(helper.make_node("MatMul", [current, f"l{i}.weight"], [f"mm{i}"]))
        last = i == len(MLP_LAYERS) - 2
        out = "logits" if last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"l{i}.bias"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", MLP_LAYERS[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", MLP_LAYERS[-1]])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edged-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return params


def register(store: ModelStore, name: str, path: Path, batching: dict[str, int]) -> None:
    import hashlib
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not store.has_blob(digest):
        with store.blob_writer(digest) as writer:
            writer.write(data)
    store.add(Manifest(name=name, runtime="onnx", weights=digest, size=len(data),
                       owner="bench", **batching))


# ---------------------------------------------------------------- in-process ceiling

def in_process(path: Path, features: int, threads: int, seconds: float) -> tuple[float, float]:
    """(single-row runs/s, batch-32 rows/s) with ONNX Runtime in this process."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)

    def rate(batch: int) -> float:
        x = rng.normal(size=(batch, features)).astype(np.float32)
        for _ in range(20):
            session.run(None, {"input": x})
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            session.run(None, {"input": x})
            n += 1
        return n / elapsed

    return rate(1), rate(32) * 32


# ---------------------------------------------------------------- HTTP load

@dataclass
class Point:
    model: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def body_for(features: int, seed: int) -> bytes:
    row = np.random.default_rng(seed).normal(size=features).astype(np.float32)
    return json.dumps({"inputs": [{"name": "input", "shape": [1, features], "datatype": "FP32",
                                   "data": [round(float(v), 6) for v in row]}]}).encode()


async def load(url: str, model: str, features: int, concurrency: int, seconds: float,
               warmup: float) -> Point:
    import aiohttp
    endpoint = f"{url}/v2/models/{model}/infer"
    bodies = [body_for(features, i) for i in range(concurrency)]
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t_warm = time.perf_counter() + warmup
        t_end = t_warm + seconds

        async def client(i: int) -> None:
            nonlocal errors
            while True:
                sent = time.perf_counter()
                if sent >= t_end:
                    return
                async with session.post(endpoint, data=bodies[i], headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                done = time.perf_counter()
                if sent >= t_warm:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    lat = sorted(latencies)
    if not lat:
        return Point(model, concurrency, 0.0, float("nan"), float("nan"), errors)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return Point(model, concurrency, len(lat) / seconds, statistics.median(lat) * 1e3,
                 p99 * 1e3, errors)


# ---------------------------------------------------------------- profile

CATEGORIES = [  # (label, substrings of "function (file)" frames; the innermost match wins)
    ("event loop waiting in epoll (idle-ish)", ("select (selectors.py",)),
    ("canonical encoding (manifest digest, receipt body)", ("canonical.py", "_asdict_inner")),
    ("model store lookup (manifest read, realpath)", ("models.py", "posixpath")),
    ("Ed25519 signing", ("crypto_sign", "nacl/")),
    ("receipt commit (ledger, signing, sqlite)", ("append_group", "ledger.py", "_commit ")),
    ("receipt commitments (hash of tensors)", ("commitments.py", "tensor_commitment")),
    ("request JSON parse (read_json/json.loads)", ("read_json", "decode (json/", "loads (json/")),
    ("tensor decode (decode_tensor)", ("decode_tensor",)),
    ("response encode (encode_tensor, json.dumps)", ("encode_tensor", "json_response",
                                                     "dumps (json/", "encode (json/")),
    ("ONNX Runtime run", ("predict (runtimes/", "run (onnxruntime",
                          "onnxruntime_inference_collection")),
    ("scheduler / batching (lease, _flush)", ("scheduler.py", "_flush", "_run_group")),
    ("aiohttp HTTP server (parse, write)", ("aiohttp/",)),
    ("asyncio event loop", ("asyncio/",)),
]


def summarise_profile(raw: Path, top: int = 12) -> tuple[list[tuple[str, float]],
                                                         list[tuple[str, float]], int]:
    """Categorised share of samples (inclusive, first match leaf-up) and top self frames."""
    cats: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = frames[-1] if frames else "?"
        leaves[leaf.split(":")[0]] += count
        label = "other"
        for frame in reversed(frames):  # innermost category wins
            hit = next((name for name, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if hit:
                label = hit
                break
        cats[label] += count
    share = [(name, 100 * n / total) for name, n in cats.most_common()] if total else []
    top_leaves = [(name, 100 * n / total) for name, n in leaves.most_common(top)] if total else []
    return share, top_leaves, total


async def profiled_load(daemon: Daemon, model: str, features: int, seconds: float,
                        out: Path) -> tuple[Point, str]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    assert daemon.process is not None
    proc = subprocess.Popen(
        [py_spy, "record", "--pid", str(daemon.process.pid), "--duration", str(int(seconds)),
         "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    await asyncio.sleep(0.5)
    point = await load(daemon.url, model, features, 8, seconds, 0.0)
    log = proc.communicate(timeout=60)[0].decode(errors="replace")
    return point, log


# ---------------------------------------------------------------- main

def fmt_table(points: list[Point], ceilings: dict[str, tuple[float, float]]) -> str:
    lines = ["| model | variant | C | req/s | p50 ms | p99 ms | errors |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for p in points:
        base, variant = p.model.rsplit("-", 1)
        lines.append(f"| {base} | {variant} | {p.concurrency} | {p.rps:,.0f} | "
                     f"{p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.errors} |")
    lines.append("")
    lines.append("| model | in-process single-row runs/s | in-process batch-32 rows/s |")
    lines.append("|---|---:|---:|")
    for name, (single, batch) in ceilings.items():
        lines.append(f"| {name} | {single:,.0f} | {batch:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per point")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--profile", action="store_true", help="py-spy the tiny model at C=8")
    args = parser.parse_args()

    try:
        load_avg = os.getloadavg()
    except OSError:
        load_avg = (float("nan"),) * 3
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
          f"load {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}; threads={args.threads}")
    with tempfile.TemporaryDirectory(prefix="edged-bench-predict-") as tmp_text:
        tmp = Path(tmp_text)
        params = write_mlp(tmp / "mlp.onnx")
        tiny = write_linear_classifier(tmp / "tiny.onnx").path
        print(f"mlp: {params:,} parameters; tiny: 15 parameters")
        models = {"mlp": (tmp / "mlp.onnx", MLP_LAYERS[0]), "tiny": (tiny, 4)}

        ceilings = {name: in_process(path, features, args.threads, min(args.seconds, 3.0))
                    for name, (path, features) in models.items()}
        for name, (single, batch) in ceilings.items():
            print(f"in-process {name}: {single:,.0f} single-row runs/s, "
                  f"{batch:,.0f} rows/s at batch 32")

        data_dir = tmp / "data"
        store = ModelStore(data_dir / "models")
        for name, (path, _) in models.items():
            register(store, f"{name}-batched", path, BATCHED)
            register(store, f"{name}-single", path, SINGLE)
        daemon = Daemon(data_dir, extra_args=("--no-demo-model", "--threads", str(args.threads)),
                        env=clean_environment(EDGED_LOG_LEVEL="warning"))
        daemon.start()
        points: list[Point] = []
        try:
            for name, (_, features) in models.items():
                for variant in ("single", "batched"):
                    for c in CONCURRENCY:
                        point = asyncio.run(load(daemon.url, f"{name}-{variant}", features, c,
                                                 args.seconds, args.warmup))
                        points.append(point)
                        print(f"  {point.model:13s} C={c:2d}: {point.rps:8,.0f} req/s  "
                              f"p50 {point.p50_ms:7.2f} ms  p99 {point.p99_ms:7.2f} ms  "
                              f"errors {point.errors}", flush=True)
            profile = None
            if args.profile:
                raw = tmp / "profile.txt"
                point, log = asyncio.run(profiled_load(daemon, "tiny-batched", 4,
                                                       max(args.seconds, 5.0), raw))
                print(f"profiled run (tiny-batched, C=8, under py-spy): {point.rps:,.0f} req/s, "
                      f"p50 {point.p50_ms:.2f} ms")
                if raw.is_file():
                    profile = summarise_profile(raw)
                else:
                    print("py-spy wrote nothing:\n" + log[-1500:])
        finally:
            daemon.stop()

    print()
    print(fmt_table(points, ceilings))
    by = {(p.model, p.concurrency): p for p in points}
    single, batched = by[("mlp-single", 32)], by[("mlp-batched", 32)]
    speedup = batched.rps / single.rps if single.rps else float("inf")
    print(f"\nmlp at C=32: batching {speedup:.1f}x throughput (target >= {TARGET_SPEEDUP}x: "
          f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}); batched p99 "
          f"{batched.p99_ms:.1f} ms (target < {TARGET_P99_MS} ms: "
          f"{'met' if batched.p99_ms < TARGET_P99_MS else 'NOT met'})")
    best_tiny = max((p for p in points if p.model.startswith("tiny")), key=lambda p: p.rps)
    print(f"tiny: best {best_tiny.rps:,.0f} req/s ({best_tiny.model}, C={best_tiny.concurrency})"
          f" vs {ceilings['tiny'][0]:,.0f} in-process single-row runs/s "
          f"({ceilings['tiny'][0] / max(best_tiny.rps, 1e-9):,.0f}x)")
    if profile:
        share, leaves, total = profile
        print(f"\nprofile of the daemon ({total} samples, all threads, idle excluded):")
        for name, pct in share:
            print(f"  {pct:5.1f}%  {name}")
        print("top self frames:")
        for name, pct in leaves:
            print(f"  {pct:5.1f}%  {name}")


if __name__ == "__main__":
    main()
