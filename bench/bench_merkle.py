"""Benchmark: Merkle proofs at 10 million receipts, and batch ingest verification.

Part 1 builds the store of perfect aligned subtrees for ``--leaves`` (10M) random
leaf hashes in memory, one numpy array per level (what a SQLite table of
``(level, index, hash)`` rows would hold), and reports the build time apart.
Then it times ``--samples`` inclusion and consistency proofs at random sizes up
to the full log (generation and verification separately, p50/p99), ``root()``,
and appends on top of the 10M log. Baseline: without stored subtrees a proof
needs the whole tree rehashed, which is what the build does.

Part 2 makes ``--receipts`` (100k) real signed, chained receipts of one origin and
times two ways of accepting them: verify the checkpoint signature and recompute
the root from the receipts' leaf hashes (one checkpoint for the stream, or one per
``--batch`` receipts with a consistency proof each), versus verifying every
receipt's Ed25519 signature (``verify_receipt``). Rates are receipts per CPU
second of this single-threaded process, i.e. per core.

Not a test: no asserts on timings. Run: ``.venv/bin/python bench/bench_merkle.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nacl.signing import SigningKey  # noqa: E402

from attribution import canonical  # noqa: E402
from attribution.payees import split_ppm  # noqa: E402
from attribution.receipt import (  # noqa: E402
    ZERO_HASH,
    AttributionRef,
    ModelRef,
    ReceiptDraft,
    SignedReceipt,
    leaf_hash,
    verify_receipt,
)
from sync import merkle  # noqa: E402
from sync.checkpoint import Checkpoint, SignedCheckpoint, consistent  # noqa: E402


class NumpySubtrees:
    """Perfect aligned subtrees in one ``(count, 32)`` uint8 array per level, plus new rows."""

    def __init__(self, levels: list[np.ndarray]) -> None:
        self.levels = levels
        self.extra: dict[tuple[int, int], bytes] = {}

    def subtree(self, level: int, index: int) -> bytes:
        if level < len(self.levels) and 0 <= index < len(self.levels[level]):
            return self.levels[level][index].tobytes()
        return self.extra[(level, index)]


def build_levels(leaves: np.ndarray) -> list[np.ndarray]:
    """Hash every perfect aligned subtree, level by level (single thread)."""
    sha256, prefix = hashlib.sha256, b"\x01"
    levels = [leaves]
    while len(levels[-1]) >= 2:
        below = levels[-1]
        pairs = len(below) // 2
        data = below[: 2 * pairs].tobytes()
        digests = b"".join([sha256(prefix + data[j:j + 64]).digest()
                            for j in range(0, 64 * pairs, 64)])
        levels.append(np.frombuffer(digests, dtype=np.uint8).reshape(pairs, 32))
    return levels


def percentiles(samples_ns: Sequence[int]) -> tuple[float, float, float]:
    """p50, p99 and max in milliseconds."""
    ordered = sorted(samples_ns)
    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6
    return pick(0.50), pick(0.99), ordered[-1] / 1e6


def bench_proofs(n: int, samples: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    leaves = np.frombuffer(rng.bytes(32 * n), dtype=np.uint8).reshape(n, 32)
    levels = build_levels(leaves)
    build_s = time.perf_counter() - start
    store = NumpySubtrees(levels)
    rows = sum(len(level) for level in levels)
    nbytes = sum(level.nbytes for level in levels)

    # Cross-check against the dict-backed store built by completed_subtrees.
    check_size = min(n, (1 << 17) + 12_345)
    memory = merkle.MemorySubtrees(leaves[i].tobytes() for i in range(check_size))
    if memory.root() != merkle.root(check_size, store):
        raise SystemExit("numpy store disagrees with completed_subtrees")

    pick = random.Random(seed)
    root_ns: list[int] = []
    gen_inc: list[int] = []
    ver_inc: list[int] = []
    gen_con: list[int] = []
    ver_con: list[int] = []
    inc_len = con_len = 0
    clock = time.perf_counter_ns
    for k in range(samples):
        size = n if k % 4 == 0 else pick.randint(1, n)
        t0 = clock()
        tree_root = merkle.root(size, store)
        t1 = clock()
        index = pick.randrange(size)
        leaf = leaves[index].tobytes()
        t2 = clock()
        proof = merkle.inclusion_proof(index, size, store)
        t3 = clock()
        merkle.verify_inclusion(leaf, index, size, proof, tree_root)
        t4 = clock()
        first = pick.randint(1, size)
        first_root = merkle.root(first, store)
        t5 = clock()
        cproof = merkle.consistency_proof(first, size, store)
        t6 = clock()
        merkle.verify_consistency(first, size, first_root, tree_root, cproof)
        t7 = clock()
        root_ns.append(t1 - t0)
        gen_inc.append(t3 - t2)
        ver_inc.append(t4 - t3)
        gen_con.append(t6 - t5)
        ver_con.append(t7 - t6)
        inc_len += len(proof)
        con_len += len(cproof)

    # Appends on top of the full log: only the frontier is read, new rows go to `extra`.
    append_rows: list[tuple[str, float]] = []
    size = n
    for batch in (1, 100, 10_000):
        new = [hashlib.sha256(b"new%d" % i).digest() for i in range(batch)]
        reps = max(1, 20_000 // batch)
        start_ns = time.perf_counter_ns()
        for _ in range(reps):
            for level, index, value in merkle.completed_subtrees(size, new, store):
                store.extra[(level, index)] = value
            size += batch
            merkle.root(size, store)
        per_leaf_us = (time.perf_counter_ns() - start_ns) / (reps * batch) / 1e3
        append_rows.append((f"append batch of {batch} + root", per_leaf_us))

    print(f"\n== Merkle proofs at {n:,} leaves (python {platform.python_version()}, "
          f"numpy {np.__version__}, {platform.machine()})")
    print(f"build: {build_s:.1f} s for {rows:,} subtree rows ({nbytes / 2**20:.0f} MiB in "
          f"{len(levels)} numpy arrays), single thread; checked against completed_subtrees "
          f"at {check_size:,} leaves")
    print(f"{samples} samples, sizes uniform in 1..{n:,} (every 4th: the full log); "
          f"mean proof length: inclusion {inc_len / samples:.1f}, "
          f"consistency {con_len / samples:.1f} hashes")
    header = f"{'operation':<34}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'vs rehash':>12}"
    print(header)
    print("-" * len(header))
    for name, data in (("root(size)", root_ns), ("inclusion proof: generate", gen_inc),
                       ("inclusion proof: verify", ver_inc),
                       ("consistency proof: generate", gen_con),
                       ("consistency proof: verify", ver_con)):
        p50, p99, worst = percentiles(data)
        ratio = f"{build_s * 1e3 / p50:>11.0f}x" if "generate" in name else f"{'':>12}"
        print(f"{name:<34}{p50:>10.3f}{p99:>10.3f}{worst:>10.3f}{ratio}")
    print(f"{'rehash all leaves (baseline)':<34}{build_s * 1e3:>10.0f}{'':>20}{1:>11}x")
    print(f"{f'append at {n:,}':<34}{'us/leaf':>10}")
    for name, per_leaf in append_rows:
        print(f"  {name:<32}{per_leaf:>10.2f}")


def make_receipts(n: int, key: SigningKey) -> list[SignedReceipt]:
    """``n`` real, chained receipts of one origin, made by finalising drafts."""
    def h(label: str) -> bytes:
        return hashlib.sha256(label.encode()).digest()

    payees = split_ppm([("model-owner", "owner", 60), ("operator", "operator", 10),
                        ("contributor-a", "data", 20), ("contributor-b", "data", 10)])
    model = ModelRef("gemma-3-270m", h("weights"), h("manifest"))
    receipts: list[SignedReceipt] = []
    prev = ZERO_HASH
    for i in range(n):
        draft = ReceiptDraft(ts=1_700_000_000_000 + i, model=model, kind="chat",
                             input_commitment=h(f"in{i}"), output_commitment=h(f"out{i}"),
                             input_units=20 + i % 50, output_units=100 + i % 200, fee=1000,
                             payees=payees,
                             attr=AttributionRef("spans/1", h("params"), h(f"ev{i}")))
        receipt = draft.finalise(key, i, prev)
        receipts.append(receipt)
        prev = receipt.leaf
    return receipts


def checkpoints_for(raws: Sequence[bytes], key: SigningKey, batch: int) -> list[
        tuple[bytes, list[bytes]]]:
    """Sender side (untimed): encoded checkpoints every ``batch`` receipts + consistency proofs."""
    store = merkle.MemorySubtrees()
    out: list[tuple[bytes, list[bytes]]] = []
    origin = bytes(key.verify_key)
    for start in range(0, len(raws), batch):
        before = store.size
        new_root = store.append([leaf_hash(raw) for raw in raws[start:start + batch]])
        cp = Checkpoint(origin, store.size, new_root, 1_700_000_000_000 + start).sign(key)
        out.append((cp.encode(), merkle.consistency_proof(before, store.size, store)))
    return out


def ingest_by_checkpoints(raws: Sequence[bytes], batches: list[tuple[bytes, list[bytes]]],
                          origin: bytes, *, chain: Callable[[bytes], Any] | None) -> None:
    """Receiver: per batch, verify checkpoint, recompute root, check consistency."""
    store = merkle.MemorySubtrees()
    last: Checkpoint = Checkpoint(origin, 0, merkle.EMPTY_ROOT, 0)
    prev, seq = ZERO_HASH, 0
    for encoded, proof in batches:
        signed = SignedCheckpoint.decode(encoded)
        signed.verify()
        cp = signed.checkpoint
        if cp.origin != origin:
            raise SystemExit("wrong origin")
        chunk = raws[store.size:cp.size]
        leaves = [leaf_hash(raw) for raw in chunk]
        if chain is not None:  # decode each receipt: node, seq contiguity and prev chain
            for raw, leaf in zip(chunk, leaves, strict=True):
                fields = chain(raw)
                if fields["node"] != origin or fields["seq"] != seq or fields["prev"] != prev:
                    raise SystemExit("broken chain")
                prev, seq = leaf, seq + 1
        if store.append(leaves) != cp.root or store.size != cp.size:
            raise SystemExit("root mismatch")
        if not consistent(last, cp, proof):
            raise SystemExit("inconsistent checkpoints")
        last = cp


def ingest_naive(raws: Sequence[bytes]) -> None:
    for raw in raws:
        verify_receipt(raw)


def bench_ingest(n: int, batch: int) -> None:
    key = SigningKey(hashlib.sha256(b"bench-merkle-node").digest())
    origin = bytes(key.verify_key)
    start = time.perf_counter()
    receipts = make_receipts(n, key)
    make_s = time.perf_counter() - start
    raws = [receipt.raw for receipt in receipts]
    whole = checkpoints_for(raws, key, n)
    batched = checkpoints_for(raws, key, batch)

    modes: list[tuple[str, Callable[[], None]]] = [
        ("naive: verify_receipt each (Ed25519)", lambda: ingest_naive(raws)),
        ("checkpoint + root, 1 checkpoint",
         lambda: ingest_by_checkpoints(raws, whole, origin, chain=None)),
        (f"checkpoint + root, per {batch} + consistency",
         lambda: ingest_by_checkpoints(raws, batched, origin, chain=None)),
        ("  same + canonical.decode, seq/prev check",
         lambda: ingest_by_checkpoints(raws, batched, origin, chain=canonical.decode)),
        ("  same + msgpack.unpackb, seq/prev check",
         lambda: ingest_by_checkpoints(raws, batched, origin, chain=msgpack.unpackb)),
    ]
    results: list[tuple[str, float, float]] = []
    for name, run in modes:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        results.append((name, time.perf_counter() - wall, time.process_time() - cpu))

    print(f"\n== Ingest verification of {n:,} receipts of one origin "
          f"({len(raws[0])}-byte receipts; made in {make_s:.1f} s)")
    header = f"{'mode':<44}{'wall s':>8}{'CPU s':>8}{'receipts/CPU-s':>16}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    naive_rate = n / results[0][2]
    for name, wall, cpu in results:
        print(f"{name:<44}{wall:>8.2f}{cpu:>8.2f}{n / cpu:>16,.0f}{n / cpu / naive_rate:>7.1f}x")
    fast = n / results[2][2]
    print(f"target >= 50,000 receipts/s per core (per-{batch} checkpoints): "
          f"{fast:,.0f} {'met' if fast >= 50_000 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--receipts", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-proofs", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    if not args.skip_proofs:
        bench_proofs(args.leaves, args.samples, args.seed)
    if not args.skip_ingest:
        bench_ingest(args.receipts, args.batch)


if __name__ == "__main__":
    main()
