"""Benchmark: ingest of a 100,000-receipt stream of one origin through ``sync.batch``.

Makes ``--receipts`` real signed, chained receipts of one origin and a signed
checkpoint every ``--batch`` receipts (with the consistency proof from the
previous one), then times a receiver accepting the whole stream:

- ``verify_batch``: checkpoint signature, consistency proof, per-receipt field
  check (msgpack decode), seq/prev chain and incremental root, then "store" (apply
  the rows to an in-memory subtree store);
- the same plus ``Batch.decode`` of the wire bytes (what the HTTP handler does);
- ``verify_batch(check_signatures=True)``: every receipt's Ed25519 signature too;
- naive: ``verify_receipt`` on every receipt, one by one.

Rates are receipts per CPU second of this single-threaded process (per core).
Not a test: no asserts on timings. Run: ``.venv/bin/python bench/bench_ingest.py``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nacl.signing import SigningKey  # noqa: E402

from attribution.payees import split_ppm  # noqa: E402
from attribution.receipt import (  # noqa: E402
    ZERO_HASH,
    AttributionRef,
    ModelRef,
    ReceiptDraft,
    leaf_hash,
    verify_receipt,
)
from sync.batch import Batch, verify_batch  # noqa: E402
from sync.checkpoint import Checkpoint, SignedCheckpoint  # noqa: E402
from sync.merkle import MemorySubtrees, consistency_proof  # noqa: E402

TS = 1_700_000_000_000


def make_stream(n: int, batch: int, key: SigningKey) -> list[Batch]:
    """``n`` signed chained receipts cut into batches, each with checkpoint and proof."""
    payees = split_ppm([("owner", "owner", 70), ("op", "operator", 10), ("data", "data", 20)])
    model = ModelRef("bench-model", bytes(range(32)), bytes(range(1, 33)))
    origin = bytes(key.verify_key)
    tree = MemorySubtrees()
    prev = ZERO_HASH
    batches: list[Batch] = []
    raws: list[bytes] = []
    last: SignedCheckpoint | None = None
    for seq in range(n):
        draft = ReceiptDraft(ts=TS + seq, model=model, kind="chat",
                             input_commitment=seq.to_bytes(32, "big"),
                             output_commitment=(seq + n).to_bytes(32, "big"),
                             input_units=seq % 100, output_units=seq % 300, fee=seq,
                             payees=payees,
                             attr=AttributionRef("owner/1", bytes(32), seq.to_bytes(32, "little")))
        receipt = draft.finalise(key, seq, prev)
        prev = receipt.leaf
        raws.append(receipt.raw)
        if len(raws) == batch or seq == n - 1:
            from_size = last.checkpoint.size if last else 0
            tree.append([leaf_hash(raw) for raw in raws])
            cp = Checkpoint(origin, tree.size, tree.root(), TS + seq).sign(key)
            proof = consistency_proof(from_size, tree.size, tree) if from_size else []
            batches.append(Batch(origin, raws, cp, proof, from_size))
            raws, last = [], cp
    return batches


def ingest(batches: list[Batch], *, wire: list[bytes] | None = None,
           check_signatures: bool = False) -> int:
    """Accept every batch as a receiver starting from nothing; return receipts stored."""
    tree = MemorySubtrees()
    stored: dict[int, bytes] = {}
    known: SignedCheckpoint | None = None
    for i, batch in enumerate(batches):
        if wire is not None:
            batch = Batch.decode(wire[i])
        verified = verify_batch(batch, known=known, have_through=tree.size, stored=tree,
                                check_signatures=check_signatures)
        for level, index, value in verified.subtree_rows:
            tree.rows[(level, index)] = value
        for seq, _leaf_hash, raw in verified.new_receipts:
            stored[seq] = raw
        tree.size += len(verified.new_receipts)
        known = verified.checkpoint
    assert known is not None and tree.root() == known.checkpoint.root
    return len(stored)


def naive(batches: list[Batch]) -> int:
    count = 0
    for batch in batches:
        for raw in batch.receipts:
            verify_receipt(raw)
            count += 1
    return count


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    count = fn()
    return count, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args()

    key = SigningKey(bytes(range(32)))
    start = time.perf_counter()
    batches = make_stream(args.receipts, args.batch, key)
    wire = [batch.encode() for batch in batches]
    print(f"python {platform.python_version()} on {platform.machine()}; "
          f"{args.receipts} receipts in {len(batches)} batches of {args.batch} "
          f"({sum(map(len, wire)) / args.receipts:.0f} wire bytes/receipt); "
          f"made in {time.perf_counter() - start:.1f}s\n")
    cases: list[tuple[str, Callable[[], int]]] = [
        ("verify_batch (checkpoint + root)", lambda: ingest(batches)),
        ("  + Batch.decode of wire bytes", lambda: ingest(batches, wire=wire)),
        ("verify_batch(check_signatures=True)",
         lambda: ingest(batches, check_signatures=True)),
        ("naive: verify_receipt each (Ed25519)", lambda: naive(batches)),
    ]
    print(f"{'method':40} {'cpu s':>8} {'wall s':>8} {'receipts/s/core':>16}")
    for name, fn in cases:
        runs = [timed(fn) for _ in range(args.repeat)]
        count, cpu, wall = min(runs, key=lambda run: run[1])
        assert count == args.receipts
        print(f"{name:40} {cpu:8.3f} {wall:8.3f} {count / cpu:16,.0f}")


if __name__ == "__main__":
    main()
