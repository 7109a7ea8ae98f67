"""Benchmark: fleet ingest from simulated nodes into SQLite and PostgreSQL, and epochs.

Ingest: a real ``edged fleet serve`` subprocess (SQLite in its data dir, or a database
of a throwaway, durable PostgreSQL cluster); ``--nodes`` simulated nodes (real Ed25519
receipts, Merkle rows, signed checkpoints and batches: ``edged/devtools/simulated_node.py``)
are enrolled over ``POST /fleet/nodes`` and push signed batches to ``/v1/sync/push``
concurrently from this process (asyncio + httpx, like ``edged.exchange.push_peer``).
Receipts are signed before the timed phase; in it, a receipt is *committed at its node*
at its release time (all at t0 for ``backlog`` runs; at ``--rate`` receipts/s over all
nodes for ``paced`` runs), and each node pushes what has been committed and not yet
pushed, up to B receipts, as soon as its previous push answered. Lag = the client's
time of the HTTP 200 for the batch carrying a receipt (the fleet answers after its
transaction committed) minus the receipt's release time. Baselines in the same run:
one receipt per push (B=1, few receipts) and the ``floor``: the same rows written
straight through the store's own bulk path (``Database.insert_rows``: COPY on
PostgreSQL, executemany on SQLite), B rows per transaction, no HTTP, no verification.

Epochs: a store filled directly (``--epoch-receipts`` rows under ``--epoch-origins``
origins, the raw bytes reused from the receipts signed for the ingest runs), then
``Epochs.close()`` and the reads the API serves (epoch list, summary, dashboard).

``--profile`` adds two PostgreSQL runs with the fleet under cProfile (per-thread CPU
time, every thread): backlog with the largest B (the per-receipt costs) and B=1 (the
per-push costs), and prints where the fleet process spends its CPU; it also profiles
the ``Epochs.close()`` of the filled stores (those rows are marked, their times inflated).

Not a test: prints tables, asserts nothing about timings. Run from the repository root:
``.venv/bin/python bench/bench_fleet.py`` (``--quick`` for a smoke run).

Why one script of ~770 lines: a benchmark is read and run as one file; the simulated
nodes, both stores, the paced and backlog runs and the report describe one experiment.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import hashlib
import math
import multiprocessing
import os
import platform
import pstats
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from nacl.signing import SigningKey  # noqa: E402

from attribution.payees import split_ppm  # noqa: E402
from attribution.receipt import leaf_hash  # noqa: E402
from bench.harness import (  # noqa: E402
    CLOCK_TICKS,
    ROOT,
    BenchError,
    ServerProcess,
    free_port,
    loadavg,
)
from edged.devtools.simulated_node import SimulatedNode  # noqa: E402
from edged.fleet.db import Database  # noqa: E402
from edged.fleet.epochs import Epochs  # noqa: E402
from edged.fleet.service import FleetService  # noqa: E402
from edged.fleet.settle import Settler  # noqa: E402
from edged.fleet.store import FleetStore  # noqa: E402
from edged.http.sync_endpoint import MSGPACK  # noqa: E402
from edged.keys import load_or_create_keys  # noqa: E402
from edged.settings import Settings  # noqa: E402
from sync.auth import sign_request  # noqa: E402
from sync.batch import MAX_BATCH_RECEIPTS  # noqa: E402
from sync.checkpoint import Checkpoint  # noqa: E402
from sync.clock import unix_millis as now_ms  # noqa: E402

PUSH = "/v1/sync/push"
WARMUP_RECEIPTS = 16  # per node, pushed before the timed phase (connections, code paths)
PAYEE_SETS = 64
OWNER = "0x" + "11" * 20
OPERATOR = "operator-a"
OPERATOR_ADDRESS = "0x" + "33" * 20
FILL_CHUNK = 50_000


# --- receipts ----------------------------------------------------------------------------

def payee_sets() -> list[tuple[Any, ...]]:
    """64 payee lists: one model owner, one of 64 data contributors, the operator."""
    return [split_ppm([(OWNER, "owner", 60), (f"0x{0xd0000 + i:040x}", "data", 30),
                       (OPERATOR, "operator", 10)]) for i in range(PAYEE_SETS)]


def node_key(index: int) -> SigningKey:
    return SigningKey(hashlib.sha256(f"bench-fleet-node-{index}".encode()).digest())


def _make_node(job: tuple[int, int]) -> tuple[list[bytes], dict[tuple[int, int], bytes]]:
    """Worker process: ``count`` chained receipts of node ``index`` and its Merkle rows.
    Fees vary per receipt (1,000-5,990 units) and payees cycle through 64 lists, so the
    epoch code's split cache sees ~64k distinct (fee, payees) pairs, not one."""
    index, count = job
    sets = payee_sets()
    node = SimulatedNode(node_key(index))
    for seq in range(count):
        node.append(1, fee=1000 + (seq * 37 + index) % 4991,
                    payees=sets[(seq + 7 * index) % PAYEE_SETS])
    return node.raws, node._tree.rows


def make_nodes(count: int, per_node: int, workers: int) -> list[SimulatedNode]:
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        made = list(pool.map(_make_node, [(i, per_node) for i in range(count)]))
    nodes = []
    for index, (raws, rows) in enumerate(made):
        node = SimulatedNode(node_key(index))
        node.raws = raws
        node._tree.rows = rows  # the log as the worker built it (leaves and subtrees)
        nodes.append(node)
    return nodes


def merkle_rows_by_end(node: SimulatedNode) -> dict[int, list[tuple[int, int, bytes]]]:
    """The node's stored subtrees above the leaves, keyed by the log size completing them
    (exactly the rows the fleet stores for a batch ending at or after that size)."""
    by_end: dict[int, list[tuple[int, int, bytes]]] = {}
    for (level, index), value in node._tree.rows.items():
        if level:
            by_end.setdefault((index + 1) << level, []).append((level, index, value))
    return by_end


# --- processes: PostgreSQL and the fleet -------------------------------------------------

def proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu(root_pid: int) -> float:
    """CPU seconds of ``root_pid`` and its live children (the PostgreSQL cluster)."""
    total = proc_cpu(root_pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == root_pid:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


PROFILE_PATH = [  # (file, function, what) in the order a push goes through them
    ("edged/http/exchange.py", "_authenticate", "request signature, nonce, is_enrolled"),
    ("edged/fleet/store.py", "is_enrolled", "a read transaction per request"),
    ("edged/fleet/store.py", "ingest", "everything below, in the executor thread"),
    ("sync/batch.py", "decode", "Batch.decode: msgpack, depth and canonical checks"),
    ("sync/batch.py", "_check_depth", "  walks every receipt of the batch"),
    ("attribution/canonical.py", "encode", "  canonical re-encoding (and checkpoints)"),
    ("edged/fleet/db.py", "lock_node", "SELECT ... FOR UPDATE of the node row"),
    ("edged/fleet/store.py", "_latest_checkpoint", "SELECT + decode of its checkpoint"),
    ("sync/batch.py", "verify_batch", "verify_batch"),
    ("sync/batch.py", "_receipt_fields", "  msgpack decode of each receipt"),
    ("attribution/receipt.py", "leaf_hash", "  SHA-256 leaf of each receipt"),
    ("sync/merkle.py", "completed_subtrees", "  Merkle rows to store"),
    ("edged/fleet/store.py", "subtree", "  stored subtrees: one SELECT each"),
    ("edged/fleet/store.py", "_store", "_store: COPY rows, checkpoint, node row"),
    ("edged/fleet/db.py", "insert_rows", "  COPY/executemany of receipts, Merkle rows"),
    ("edged/fleet/db.py", "transaction", "transaction incl. COMMIT"),
]


# Runs the fleet: ``python -c BOOTSTRAP --data-dir D fleet serve ...`` is ``python -m edged``
# under cProfile (every thread), for --profile.
BOOTSTRAP = r"""
import os, runpy, sys, threading, time

out = os.environ.pop("BENCH_FLEET_PROFILE_OUT", "")
profiles = []
if out:
    import cProfile

    original_run = threading.Thread.run

    def run(self):
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()
        try:
            original_run(self)
        finally:
            profile.disable()

    threading.Thread.run = run
    main = cProfile.Profile(time.thread_time)
    main.enable()
sys.argv = ["edged", *sys.argv[1:]]
try:
    runpy.run_module("edged", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    if out:
        import pstats

        main.disable()
        stats = pstats.Stats(main)
        for profile in profiles:
            profile.create_stats()
            stats.add(profile)
        stats.dump_stats(out)
"""


class Fleet(ServerProcess):
    """``python -m edged --data-dir D fleet serve --port P`` in a subprocess."""

    def __init__(self, base: Path, database_url: str, profile_out: Path | None = None) -> None:
        self.data_dir = base / "data"
        self.log_path = base / "fleet.log"
        self.database_url = database_url
        self.profile_out = profile_out
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        env = self.environment(EDGED_FLEET_DATABASE=self.database_url)
        tail = ["--data-dir", str(self.data_dir), "fleet", "serve", "--port", str(self.port)]
        if self.profile_out is not None:
            env["BENCH_FLEET_PROFILE_OUT"] = str(self.profile_out)
        if self.profile_out is not None:
            args = [sys.executable, "-c", BOOTSTRAP, *tail]
        else:
            args = [sys.executable, "-m", "edged", *tail]
        self.launch(args, env, self._ready, timeout, "the fleet")

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class Stores:
    """Fresh, empty databases: a SQLite file in a temp dir, or a new PostgreSQL database."""

    def __init__(self, base: Path, cluster: Any) -> None:
        self.base = base
        self.cluster = cluster
        self.count = 0

    def fresh(self, store: str) -> tuple[Path, str]:
        """A new working dir and the fleet's database URL there ("" = the default SQLite)."""
        self.count += 1
        work = self.base / f"run{self.count}"
        work.mkdir()
        if store == "postgresql":
            return work, self.cluster.create_database(f"fleet_{self.count}")
        return work, ""

    def connect(self, url: str) -> Any:
        import psycopg

        return psycopg.connect(url, autocommit=True)

    @staticmethod
    def sqlite_url(work: Path) -> str:
        return "sqlite:" + str(work / "data" / "fleet" / "fleet.sqlite3")

    def drop(self, store: str, work: Path, url: str) -> None:
        shutil.rmtree(work, ignore_errors=True)
        if store == "postgresql":
            self.cluster.drop_database(url.rsplit("/", 1)[1])


# --- ingest runs -------------------------------------------------------------------------

@dataclass
class Run:
    store: str
    mode: str
    max_batch: int
    receipts: int
    wall: float
    batches: int
    batch_ms: list[float] = field(default_factory=list)
    lags_ms: np.ndarray | None = None
    cpu_fleet: float = 0.0
    cpu_db: float = 0.0
    cpu_client: float = 0.0
    offered: float | None = None

    @property
    def rate(self) -> float:
        return self.receipts / self.wall


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else 0.0


async def enroll_and_warm(client: httpx.AsyncClient, nodes: list[SimulatedNode],
                          audience: bytes) -> None:
    for index, node in enumerate(nodes):
        reply = await client.post("/fleet/nodes", json={"node": node.origin.hex(),
                                                        "label": f"sim-{index}"})
        if reply.status_code != 201:
            raise BenchError(f"enrolling node {index}: {reply.status_code} {reply.text}")
    # Every executor thread of the fleet opens its database connection on first use.
    await asyncio.gather(*(client.get("/fleet/nodes") for _ in range(24)))
    await asyncio.gather(*(push(client, node, audience, 0, WARMUP_RECEIPTS)
                           for node in nodes))


async def push(client: httpx.AsyncClient, node: SimulatedNode, audience: bytes, have: int,
               end: int) -> None:
    body = node.batch(have, end).encode()
    headers = sign_request(node.key, "POST", PUSH, body, now_ms(), secrets.token_bytes(16),
                           audience)
    reply = await client.post(PUSH, content=body, headers={**headers,
                                                           "Content-Type": MSGPACK})
    if reply.status_code != 200 or reply.json().get("stored") != end - have:
        raise BenchError(f"push [{have}, {end}) answered {reply.status_code}: {reply.text}")


async def push_run(fleet: Fleet, cluster_pid: int | None, nodes: list[SimulatedNode],
                   per_node: int, max_batch: int, rate: float | None,
                   store: str, mode: str) -> Run:
    """Each node pushes receipts [WARMUP, WARMUP + per_node); ``rate`` None: all
    committed at t0 (backlog), else released at ``rate``/s over all nodes (paced)."""
    count = len(nodes)
    node_rate = None if rate is None else rate / count
    limits = httpx.Limits(max_connections=2 * count, max_keepalive_connections=2 * count)
    async with httpx.AsyncClient(base_url=fleet.url, timeout=600, limits=limits) as client:
        summary = (await client.get("/fleet/summary")).json()
        audience = bytes.fromhex(summary["fleet"])
        await enroll_and_warm(client, nodes, audience)
        records: list[tuple[int, int, int, float, float]] = []  # node, have, end, sent, done
        cpu0 = (proc_cpu(fleet.pid), tree_cpu(cluster_pid) if cluster_pid else 0.0,
                time.process_time())
        t0 = time.monotonic() + 0.05

        def released(k: int, now: float) -> int:
            """Receipts of node k committed by ``now`` (timed ones, counted from 0)."""
            if node_rate is None:
                return per_node if now >= t0 else 0
            return max(0, min(per_node, math.floor((now - t0) * node_rate - k / count) + 1))

        async def run_node(k: int) -> None:
            node = nodes[k]
            pushed = 0
            while pushed < per_node:
                now = time.monotonic()
                ready = released(k, now)
                if ready <= pushed:
                    due = t0 if node_rate is None else t0 + (pushed + k / count) / node_rate
                    await asyncio.sleep(max(0.0, due - now))
                    continue
                end = min(ready, pushed + max_batch)
                sent = time.monotonic()
                await push(client, node, audience, WARMUP_RECEIPTS + pushed,
                           WARMUP_RECEIPTS + end)
                records.append((k, pushed, end, sent, time.monotonic()))
                pushed = end

        await asyncio.gather(*(run_node(k) for k in range(count)))
        t_end = max(done for *_, done in records)
        cpu1 = (proc_cpu(fleet.pid), tree_cpu(cluster_pid) if cluster_pid else 0.0,
                time.process_time())
    lags: list[np.ndarray] = []
    for k, first, end, _sent, done in records:
        seqs = np.arange(first, end, dtype=float)
        release = np.full(len(seqs), t0) if node_rate is None \
            else t0 + (seqs + k / count) / node_rate
        lags.append((done - release) * 1000)
    return Run(store, mode, max_batch, per_node * count, t_end - t0, len(records),
               [(done - sent) * 1000 for *_, sent, done in records], np.concatenate(lags),
               cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], cpu1[2] - cpu0[2], rate)


def ingest_run(stores: Stores, cluster: Any, nodes: list[SimulatedNode], store: str,
               per_node: int, max_batch: int, rate: float | None, mode: str,
               after: Callable[[str], Any] | None = None,
               profile_out: Path | None = None) -> tuple[Run, Any]:
    work, url = stores.fresh(store)
    fleet = Fleet(work, url, profile_out)
    extra = None
    try:
        fleet.start()
        cluster_pid = cluster.process.pid if store == "postgresql" else None
        run = asyncio.run(push_run(fleet, cluster_pid, nodes, per_node, max_batch, rate,
                                   store, mode))
        fleet.stop()
        if after is not None:
            extra = after(url or stores.sqlite_url(work))
    except BaseException:
        print(fleet.log_tail(), file=sys.stderr)
        raise
    finally:
        fleet.stop()
        stores.drop(store, work, url)
    return run, extra


def floor_run(stores: Stores, cluster: Any, nodes: list[SimulatedNode], store: str,
              per_node: int, max_batch: int) -> Run:
    """The same receipt and Merkle rows through ``Database.insert_rows``, one connection,
    ``max_batch`` receipts per transaction, node after node: no HTTP, no verification."""
    work, url = stores.fresh(store)
    db = Database(url or "sqlite:" + str(work / "fleet.sqlite3"))
    try:
        prepared = []
        for node in nodes:
            by_end = merkle_rows_by_end(node)
            for first in range(WARMUP_RECEIPTS, WARMUP_RECEIPTS + per_node, max_batch):
                end = min(first + max_batch, WARMUP_RECEIPTS + per_node)
                prepared.append((node, first, end,
                                 [row for size in range(first + 1, end + 1)
                                  for row in by_end.get(size, ())]))
        cpu0 = (tree_cpu(cluster.process.pid) if store == "postgresql" else 0.0,
                time.process_time())
        t0 = time.monotonic()
        batch_ms = []
        for node, first, end, merkle in prepared:
            sent = time.monotonic()
            stamp = now_ms()
            origin, tree = node.origin, node._tree.rows
            with db.transaction() as tx:
                tx.insert_rows("fleet_receipts", ("origin", "seq", "leaf", "raw", "received_ms"),
                               [(origin, seq, tree[(0, seq)], node.raws[seq], stamp)
                                for seq in range(first, end)])
                tx.insert_rows("fleet_merkle", ("origin", "level", "idx", "hash"),
                               [(origin, level, index, value) for level, index, value in merkle])
            batch_ms.append((time.monotonic() - sent) * 1000)
        wall = time.monotonic() - t0
        cpu1 = (tree_cpu(cluster.process.pid) if store == "postgresql" else 0.0,
                time.process_time())
    finally:
        db.close()
        stores.drop(store, work, url)
    return Run(store, "floor (insert_rows)", max_batch, per_node * len(nodes), wall,
               len(prepared), batch_ms, None, cpu1[1] - cpu0[1], cpu1[0] - cpu0[0], 0.0)


# --- epochs ------------------------------------------------------------------------------

@dataclass
class EpochResult:
    store: str
    what: str
    receipts: int
    origins: int
    fill_s: float
    close_s: float
    list_ms: float
    summary_ms: float
    dashboard_ms: float
    payees: int
    total: int
    malformed: int = 0


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def epoch_reads(store: str, what: str, url: str, fill_s: float, origins: int,
                work: Path, profile: bool = False) -> EpochResult:
    db = Database(url)
    try:
        fleet_store = FleetStore(db, now_ms)
        epochs = Epochs(fleet_store)
        epochs.set_address(OPERATOR, OPERATOR_ADDRESS)
        settings = Settings(data_dir=work / "epoch-settings", install_demo_model=False)
        service = FleetService(store=fleet_store, epochs=epochs,
                               settler=Settler(epochs, settings, None),
                               keys=load_or_create_keys(work / "epoch-keys"), clock_ms=now_ms)
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        closed, close_s = timed(epochs.close)
        if profiler:
            profiler.disable()
            print(f"\ncProfile of Epochs.close() on {store}, {closed['receipts']:,} receipts "
                  "(wall-clock timer, inflated by profiling):")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
        _, list_s = timed(service.epoch_list)
        summary, summary_s = timed(lambda: service.epoch(closed["epoch"]))
        _, dashboard_s = timed(service.summary)
        if summary["root"] is None:
            raise BenchError(f"epoch summary has no payout root: {summary['unresolved']}")
    finally:
        db.close()
    return EpochResult(store, what, closed["receipts"], origins, fill_s, close_s,
                       list_s * 1000, summary_s * 1000, dashboard_s * 1000,
                       len(summary["payees"]), closed["total"])


def fill_rows(pool: list[bytes], leaves: list[bytes], origins: list[bytes],
              per_origin: int, stamp: int) -> Iterator[tuple[bytes, int, bytes, bytes, int]]:
    index = 0
    for origin in origins:
        for seq in range(per_origin):
            position = index % len(pool)
            yield origin, seq, leaves[position], pool[position], stamp
            index += 1


def epoch_fill(stores: Stores, store: str, pool: list[bytes], receipts: int,
               origin_count: int, profile: bool) -> EpochResult:
    work, url = stores.fresh(store)
    url = url or "sqlite:" + str(work / "fleet.sqlite3")
    try:
        db = Database(url)
        leaves = [leaf_hash(raw) for raw in pool]
        per_origin = receipts // origin_count
        keys = [SigningKey(hashlib.sha256(f"bench-epoch-origin-{i}".encode()).digest())
                for i in range(origin_count)]
        origins = [bytes(key.verify_key) for key in keys]
        stamp = now_ms()
        start = time.perf_counter()
        with db.transaction() as tx:
            for key, origin in zip(keys, origins, strict=True):
                root = hashlib.sha256(b"placeholder root" + origin).digest()
                encoded = Checkpoint(origin, per_origin, root, stamp).sign(key).encode()
                tx.execute("INSERT INTO fleet_nodes (node, label, enrolled_ms, size, checkpoint,"
                           " checkpoint_ts, last_ingest_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (origin, "bench", stamp - 1, per_origin, encoded, stamp, stamp))
                tx.execute("INSERT INTO fleet_checkpoints (origin, size, root, ts, encoded) "
                           "VALUES (?, ?, ?, ?, ?)", (origin, per_origin, root, stamp, encoded))
        rows = fill_rows(pool, leaves, origins, per_origin, stamp)
        while True:
            chunk = [row for _, row in zip(range(FILL_CHUNK), rows, strict=False)]
            if not chunk:
                break
            with db.transaction() as tx:
                tx.insert_rows("fleet_receipts",
                               ("origin", "seq", "leaf", "raw", "received_ms"), chunk)
        db.close()
        if store == "postgresql":  # what autovacuum would have done by then
            with stores.connect(url) as connection:
                connection.execute("VACUUM (ANALYZE) fleet_receipts")
        fill_s = time.perf_counter() - start
        what = f"filled, raws reused x{receipts / len(pool):.0f}" + (" (cProfile)" if profile
                                                                      else "")
        return epoch_reads(store, what, url, fill_s, origin_count, work, profile)
    finally:
        stores.drop(store, work, url)


# --- output ------------------------------------------------------------------------------

def print_ingest(runs: list[Run], cores: int) -> None:
    print(f"\n{'store':11} {'mode':22} {'max B':>5} {'receipts':>8} {'wall s':>6} "
          f"{'receipts/s':>10} {'xB=1':>6} {'/floor':>6} {'mean B':>6} "
          f"{'push ms p50/p95':>16} {'lag ms p50/p95/max':>19} {'cores f/db/cl':>14} "
          f"{'us/r f/db':>10}")
    print("-" * 157)
    for run in runs:
        same = [r for r in runs if r.store == run.store]
        naive = next((r for r in same if r.max_batch == 1), None)
        floor = next((r for r in same if r.mode.startswith("floor")), None)
        vs_naive = f"{run.rate / naive.rate:5.1f}x" if naive else "-"
        vs_floor = f"{run.rate / floor.rate:5.0%}" if floor else "-"
        push = f"{pct(run.batch_ms, 50):7.1f}/{pct(run.batch_ms, 95):.1f}"
        lag = "-" if run.lags_ms is None or run.offered is None else (
            f"{pct(run.lags_ms, 50):.0f}/{pct(run.lags_ms, 95):.0f}/{run.lags_ms.max():.0f}")
        busy = (f"{run.cpu_fleet / run.wall:.2f}/{run.cpu_db / run.wall:.2f}/"
                f"{run.cpu_client / run.wall:.2f}")
        per = f"{run.cpu_fleet / run.receipts * 1e6:.1f}/"
        per += f"{run.cpu_db / run.receipts * 1e6:.1f}" if run.store == "postgresql" else "-"
        print(f"{run.store:11} {run.mode:22} {run.max_batch:5} {run.receipts:8,} "
              f"{run.wall:6.2f} {run.rate:10,.0f} {vs_naive:>6} {vs_floor:>6} "
              f"{run.receipts / run.batches:6.0f} {push:>16} {lag:>19} {busy:>14} {per:>10}")
    print(f"cores: CPUs kept busy on average ({cores} here) by the fleet process / the "
          "PostgreSQL server processes / this client process; us/r: CPU microseconds per "
          "receipt, fleet / PostgreSQL; floor rows: this process inserting, in the fleet slot")


def print_epochs(results: list[EpochResult]) -> None:
    print(f"\n{'store':11} {'data':34} {'receipts':>10} {'origins':>7} {'fill s':>7} "
          f"{'close s':>8} {'receipts/s':>10} {'list ms':>8} {'summary ms':>10} "
          f"{'dashboard ms':>12} {'payees':>6}")
    print("-" * 135)
    for r in results:
        fill = f"{r.fill_s:7.1f}" if r.fill_s else "      -"
        print(f"{r.store:11} {r.what:34} {r.receipts:10,} {r.origins:7} {fill} "
              f"{r.close_s:8.2f} {r.receipts / r.close_s:10,.0f} {r.list_ms:8.1f} "
              f"{r.summary_ms:10.1f} {r.dashboard_ms:12.1f} {r.payees:6}")


def print_profile(path: Path, run: Run, top: int = 24) -> None:
    stats = pstats.Stats(str(path))
    total = sum(tt for _cc, _nc, tt, _ct, _callers in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\nfleet process under cProfile, {run.mode} (mean {run.receipts / run.batches:.0f} "
          f"receipts per push): {total:.2f} CPU-s (per-thread CPU time, all threads) over "
          f"{run.wall:.2f} s; top functions by own time:")
    print(f"{'own %':>6} {'own s':>7} {'cum s':>7} {'calls':>9}  function")
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])  # type: ignore[attr-defined]
    for (filename, line, name), (_cc, calls, tt, ct, _callers) in rows[:top]:
        short = filename.replace(str(ROOT) + "/", "")
        short = short.split("site-packages/")[-1]
        print(f"{tt / total:6.1%} {tt:7.2f} {ct:7.2f} {calls:9,}  {short}:{line}({name})")
    print("\nthe ingest path, cumulative (a function's own time plus its callees'):")
    for suffix, name, what in PROFILE_PATH:
        found = [(ct, calls, line) for (filename, line, function), (_cc, calls, _tt, ct, _c)
                 in stats.stats.items()  # type: ignore[attr-defined]
                 if function == name and filename.endswith(suffix)]
        if found:  # Transaction.insert_rows calls Database.insert_rows: show the outer one
            ct, calls, line = max(found)
            print(f"{ct / total:6.1%} {ct:7.2f} {calls:9,}  {suffix}:{line}({name}): {what}")


# --- main --------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--receipts", type=int, help="receipts per ingest run, all nodes "
                        "(default 200,000; --quick 10,000)")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--batches", default=f"1000,{MAX_BATCH_RECEIPTS}",
                        help="max receipts per push for the backlog runs")
    parser.add_argument("--rate", default="20000,40000",
                        help="offered receipts/s (all nodes) of the paced runs, comma-separated")
    parser.add_argument("--baseline-receipts", type=int,
                        help="receipts of the B=1 run (default 2,000; --quick 200)")
    parser.add_argument("--epoch-receipts", type=int,
                        help="receipts in the epoch store (default 1,000,000; --quick 50,000; "
                        "0 skips it)")
    parser.add_argument("--epoch-origins", type=int, default=50)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--shared-buffers", default="256MB", help="PostgreSQL shared_buffers")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the fleet process (PostgreSQL, B=max and B=1) "
                        "and Epochs.close()")
    args = parser.parse_args()
    receipts = args.receipts or (10_000 if args.quick else 200_000)
    baseline = args.baseline_receipts or (200 if args.quick else 2_000)
    epoch_receipts = args.epoch_receipts if args.epoch_receipts is not None else (
        50_000 if args.quick else 1_000_000)
    stores_wanted = [s.strip() for s in args.stores.split(",") if s.strip()]
    if set(stores_wanted) - {"sqlite", "postgresql"}:
        parser.error("--stores takes sqlite and/or postgresql")
    batches = [min(int(b), MAX_BATCH_RECEIPTS) for b in args.batches.split(",")]
    rates = [float(r) for r in args.rate.split(",")]
    per_node = receipts // args.nodes
    base_per_node = max(1, baseline // args.nodes)
    cores = os.cpu_count() or 1

    print(f"python {platform.python_version()}, {platform.machine()}, {cores} CPUs, "
          f"SQLite {sqlite3.sqlite_version}; loadavg {loadavg()} at start; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    start = time.perf_counter()
    nodes = make_nodes(args.nodes, WARMUP_RECEIPTS + per_node, min(cores, args.nodes))
    made = time.perf_counter() - start
    wire = len(nodes[0].batch(0, min(MAX_BATCH_RECEIPTS, nodes[0].size)).encode())
    print(f"{args.nodes} simulated nodes x {WARMUP_RECEIPTS + per_node:,} signed receipts "
          f"({WARMUP_RECEIPTS} per node pushed untimed first) made in {made:.1f} s on "
          f"{min(cores, args.nodes)} processes; a {min(MAX_BATCH_RECEIPTS, nodes[0].size)}-"
          f"receipt batch is {wire:,} bytes on the wire")

    base = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    cluster = None
    runs: list[Run] = []
    epochs: list[EpochResult] = []
    try:
        if "postgresql" in stores_wanted:
            from edged.devtools.postgres import PostgresCluster

            cluster = PostgresCluster(durable=True, shared_buffers=args.shared_buffers).start()
            with Stores(base, cluster).connect(cluster.dsn()) as connection:
                version = connection.execute("SHOW server_version").fetchone()[0]
            print(f"PostgreSQL {version}: durable (fsync, synchronous_commit, "
                  f"full_page_writes on), shared_buffers {args.shared_buffers}; "
                  f"started in {cluster.startup_seconds:.1f} s")
        stores = Stores(base, cluster)
        for store in stores_wanted:
            print(f"\n[{store}] floor ...", flush=True)
            runs.append(floor_run(stores, cluster, nodes, store, per_node, max(batches)))
            print(f"[{store}] one receipt per push, {base_per_node * args.nodes:,} receipts ...",
                  flush=True)
            runs.append(ingest_run(stores, cluster, nodes, store, base_per_node, 1, None,
                                   "naive: B=1, backlog")[0])
            for size in batches:
                print(f"[{store}] backlog, B={size} ...", flush=True)
                last = size == max(batches)
                after = (lambda url, s=store: epoch_reads(
                    s, "ingested over HTTP (real)", url, 0.0, args.nodes,
                    base)) if last else None
                run, extra = ingest_run(stores, cluster, nodes, store, per_node, size, None,
                                        "backlog", after)
                runs.append(run)
                if extra is not None:
                    epochs.append(extra)
            for rate in rates:
                print(f"[{store}] paced at {rate:,.0f}/s, B<={max(batches)} ...", flush=True)
                runs.append(ingest_run(stores, cluster, nodes, store, per_node, max(batches),
                                       rate, f"paced {rate:,.0f}/s")[0])
            capacity = max(r.rate for r in runs if r.store == store and r.mode == "backlog")
            if capacity < min(rates):
                slower = round(0.75 * capacity, -2)
                print(f"[{store}] paced at {slower:,.0f}/s (75% of its backlog rate) ...",
                      flush=True)
                runs.append(ingest_run(stores, cluster, nodes, store, per_node,
                                       max(batches), slower, f"paced {slower:,.0f}/s")[0])
        profiles: list[tuple[Run, Path]] = []
        if args.profile and cluster is not None:
            for size, count in ((max(batches), per_node), (1, base_per_node)):
                mode = f"{'naive: B=1' if size == 1 else 'backlog'}, cProfile"
                print(f"[postgresql] {mode} ...", flush=True)
                out = base / f"fleet-{len(profiles)}.prof"
                run, _ = ingest_run(stores, cluster, nodes, "postgresql", count, size, None,
                                    mode, profile_out=out)
                runs.append(run)
                profiles.append((run, out))
        print("\nINGEST: " + f"{args.nodes} nodes, receipts signed beforehand; backlog = all "
              "committed at t0, paced = committed at the offered rate; lag = commit at the "
              "node -> HTTP 200 of its batch")
        print_ingest(runs, cores)
        for run, out in profiles:
            print_profile(out, run)
        pool = [raw for node in nodes for raw in node.raws]
        for store in stores_wanted if epoch_receipts else []:
            print(f"\n[{store}] epoch over {epoch_receipts:,} receipts: filling ...", flush=True)
            epochs.append(epoch_fill(stores, store, pool, epoch_receipts, args.epoch_origins,
                                     args.profile))
        print(f"\nEPOCHS: Epochs.close() and the API's reads; filled stores reuse the "
              f"{len(pool):,} signed receipts above (fees and payees vary per receipt)")
        print_epochs(epochs)
        postgres = [r for r in runs if r.store == "postgresql" and r.mode == "backlog"]
        if postgres:
            best = max(r.rate for r in postgres)
            print(f"\ntarget >= 20,000 receipts/s into PostgreSQL: {best:,.0f}/s "
                  f"{'met' if best >= 20_000 else 'NOT met'}")
        print(f"loadavg {loadavg()} at the end; total {time.perf_counter() - start:.0f} s")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        print(f"bench failed: {exc}")
        sys.exit(1)
