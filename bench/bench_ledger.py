"""Benchmark: durable receipts per second, group commit vs one transaction per receipt.

Every mode signs real receipts and commits them with WAL and synchronous=FULL
(an fsync per commit), in a fresh ledger under a temp dir:

- ``naive``: one writer, one transaction (and fsync) per receipt, plain sqlite3;
- ``ledger, batch=1``: the Ledger with group commit turned off, 64 asyncio writers;
- ``ledger, group``: the Ledger's group commit, 64 (and 1) asyncio writers.

Ratios are against ``naive`` measured in the same run. Not a test: no asserts
on timings. Run: ``.venv/bin/python bench/bench_ledger.py [--receipts N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nacl.signing import SigningKey  # noqa: E402

from attribution.payees import split_ppm  # noqa: E402
from attribution.receipt import ZERO_HASH, AttributionRef, ModelRef, ReceiptDraft  # noqa: E402
from edged.ledger import Ledger  # noqa: E402


def make_drafts(n: int) -> list[ReceiptDraft]:
    """Distinct, realistic drafts (built before timing starts)."""
    def h(label: str) -> bytes:
        return hashlib.sha256(label.encode()).digest()

    payees = split_ppm([("model-owner", "owner", 60), ("operator", "operator", 10),
                        ("contributor-a", "data", 20), ("contributor-b", "data", 10)])
    model = ModelRef("gemma-3-270m", h("weights"), h("manifest"))
    return [
        ReceiptDraft(ts=1_700_000_000_000 + i, model=model, kind="chat",
                     input_commitment=h(f"in{i}"), output_commitment=h(f"out{i}"),
                     input_units=20 + i % 50, output_units=100 + i % 200, fee=1000,
                     payees=payees, attr=AttributionRef("spans/1", h("params"), h(f"ev{i}")))
        for i in range(n)
    ]


def bench_naive(path: Path, key: SigningKey, drafts: list[ReceiptDraft]) -> float:
    """One writer; each receipt in its own transaction, committed (fsync) before the next."""
    Ledger(path, key).close()  # same schema as the real ledger
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = FULL")
    start = time.perf_counter()
    for draft in drafts:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT seq, leaf FROM receipts ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (0, ZERO_HASH)
        receipt = draft.finalise(key, seq, prev)
        conn.execute("INSERT INTO receipts (seq, leaf, raw, ts, model, kind) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (seq, receipt.leaf, receipt.raw, draft.ts, draft.model.name, draft.kind))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


async def _run_writers(ledger: Ledger, drafts: list[ReceiptDraft], writers: int) -> float:
    async def writer(index: int) -> None:
        for draft in drafts[index::writers]:
            await ledger.append(draft)

    start = time.perf_counter()
    await asyncio.gather(*(writer(index) for index in range(writers)))
    return time.perf_counter() - start


def bench_ledger(path: Path, key: SigningKey, drafts: list[ReceiptDraft], writers: int,
                 max_batch: int | None = None) -> float:
    kwargs = {} if max_batch is None else {"max_batch": max_batch}
    with Ledger(path, key, **kwargs) as ledger:
        elapsed = asyncio.run(_run_writers(ledger, drafts, writers))
        report = ledger.verify()  # not timed: proves every run produced a whole chain
        if not report.ok or report.count != len(drafts):
            raise SystemExit(f"chain broken after the run: {report.problems[:3]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=10_000,
                        help="receipts per group-commit run (default 10000)")
    parser.add_argument("--baseline-receipts", type=int, default=None,
                        help="receipts per one-transaction-per-receipt run "
                             "(default: min(receipts, 1000); each costs an fsync)")
    parser.add_argument("--writers", type=int, default=64)
    args = parser.parse_args()
    n = args.receipts
    n_base = args.baseline_receipts or min(n, 1000)
    key = SigningKey.generate()
    rows: list[tuple[str, int, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp:
        base = Path(tmp)
        drafts = make_drafts(max(n, n_base))
        rows.append(("naive (1 txn/receipt)", 1, n_base,
                     bench_naive(base / "naive.db", key, drafts[:n_base])))
        rows.append(("ledger, batch=1", args.writers, n_base,
                     bench_ledger(base / "batch1.db", key, drafts[:n_base], args.writers,
                                  max_batch=1)))
        rows.append(("ledger, group commit", args.writers, n,
                     bench_ledger(base / "group.db", key, drafts[:n], args.writers)))
        rows.append(("ledger, group commit", 1, n_base,
                     bench_ledger(base / "group1.db", key, drafts[:n_base], 1)))

    print(f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
          f"{platform.machine()}; WAL + synchronous=FULL, Ed25519-signed receipts")
    naive_rate = rows[0][2] / rows[0][3]
    header = f"{'mode':<24}{'writers':>8}{'receipts':>10}{'seconds':>10}{'receipts/s':>12}" \
             f"{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for mode, writers, count, seconds in rows:
        rate = count / seconds
        print(f"{mode:<24}{writers:>8}{count:>10}{seconds:>10.2f}{rate:>12.0f}"
              f"{rate / naive_rate:>7.1f}x")


if __name__ == "__main__":
    main()
