"""The ledger's writer: group commit, chaining, failure handling, crashes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from attribution.chain import verify_chain
from attribution.payees import Payee
from attribution.receipt import (
    ZERO_HASH,
    InvalidReceipt,
    ReceiptDraft,
    SignedReceipt,
    verify_receipt,
)
from edged.ledger import (
    AppendFailedError,
    Ledger,
    LedgerClosedError,
)
from tests.support.receipt_factory import key_from, make_draft

REPO_ROOT = Path(__file__).resolve().parents[3]


def gate_writer(ledger: Ledger, monkeypatch: pytest.MonkeyPatch
                ) -> tuple[threading.Event, threading.Event]:
    """Hold the writer before its next commit, so the test decides what one batch holds.

    Returns (entered, release): ``entered`` is set once the writer has taken a
    batch and waits; setting ``release`` lets it (and every later batch) go.
    """
    entered, release = threading.Event(), threading.Event()
    original: Callable[[list[object]], None] = ledger._writer._commit_batch  # type: ignore[assignment]

    def gated(batch: list[object]) -> None:
        entered.set()
        release.wait(10)
        original(batch)

    monkeypatch.setattr(ledger._writer, "_commit_batch", gated)
    return entered, release


async def queue_behind_gate(ledger: Ledger, drafts: list[ReceiptDraft],
                            entered: threading.Event) -> list[asyncio.Task[SignedReceipt]]:
    """Start one append the writer takes alone, then queue ``drafts`` behind it."""
    first = asyncio.create_task(ledger.append(make_draft(10_000)))
    assert await asyncio.to_thread(entered.wait, 10)
    tasks = [first]
    tasks += [asyncio.create_task(ledger.append(draft)) for draft in drafts]
    await asyncio.sleep(0)  # every task has now put its draft in the writer's queue
    return tasks


async def test_assigns_seq_and_prev(ledger: Ledger, node_key: SigningKey) -> None:
    first = await ledger.append(make_draft(0))
    second = await ledger.append(make_draft(1))
    third = ledger.append_sync(make_draft(2))
    assert [first.seq, second.seq, third.seq] == [0, 1, 2]
    assert first.prev == ZERO_HASH
    assert second.prev == first.leaf and third.prev == second.leaf
    for receipt in (first, second, third):
        assert verify_receipt(receipt.raw).node == bytes(node_key.verify_key)
    assert ledger.head() == (3, third.leaf)
    assert ledger.count() == 3
    assert ledger.node == bytes(node_key.verify_key)


async def test_concurrent_appends_form_one_contiguous_chain(ledger: Ledger,
                                                            node_key: SigningKey) -> None:
    receipts = await asyncio.gather(*(ledger.append(make_draft(i)) for i in range(200)))
    assert sorted(r.seq for r in receipts) == list(range(200))
    for receipt in receipts:
        stored = ledger.get(receipt.leaf)
        assert stored is not None and stored.raw == receipt.raw
    report = verify_chain(ledger.iter_raw(page_size=37), node=bytes(node_key.verify_key))
    assert report.ok, report.problems
    assert report.count == 200 and report.head_leaf == ledger.head()[1]
    # Each draft was stored exactly once.
    stored_ins = {r.fields["in"] for r in ledger.page(limit=1000)}
    assert stored_ins == {make_draft(i).input_commitment for i in range(200)}


async def test_sync_and_async_callers_share_one_writer(ledger: Ledger) -> None:
    def sync_writer(base: int) -> None:
        for i in range(25):
            ledger.append_sync(make_draft(base + i), timeout=30)

    await asyncio.gather(
        *(asyncio.to_thread(sync_writer, 1000 * t) for t in range(1, 5)),
        *(ledger.append(make_draft(i)) for i in range(100)),
    )
    report = ledger.verify()
    assert report.ok and report.count == 200 and ledger.count() == 200


async def test_failed_transaction_fails_all_its_receipts_and_leaves_no_gap(
        ledger: Ledger, ledger_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with sqlite3.connect(ledger_path) as conn:
        conn.execute("CREATE TRIGGER poison BEFORE INSERT ON receipts "
                     "WHEN NEW.model = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END")
    entered, release = gate_writer(ledger, monkeypatch)
    batch = [make_draft(i) for i in range(5)]
    batch += [make_draft(5, model_name="poison")]
    batch += [make_draft(i) for i in range(6, 10)]
    tasks = await queue_behind_gate(ledger, batch, entered)
    release.set()
    first, *rest = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(first, SignedReceipt) and first.seq == 0
    for failure in rest:
        assert isinstance(failure, AppendFailedError), failure
        assert isinstance(failure.__cause__, sqlite3.IntegrityError)
    assert ledger.count() == 1  # nothing of the failed transaction was stored
    after = await ledger.append(make_draft(20))
    assert after.seq == 1 and after.prev == first.leaf
    assert ledger.verify().ok and ledger.count() == 2


async def test_malformed_draft_fails_alone(ledger: Ledger,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = gate_writer(ledger, monkeypatch)
    bad = make_draft(3, payees=(Payee("owner", "owner", 999_999),))
    drafts = [make_draft(1), make_draft(2), bad, make_draft(4)]
    tasks = await queue_behind_gate(ledger, drafts, entered)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], InvalidReceipt)
    good = [r for i, r in enumerate(results) if i != 3]
    assert [r.seq if isinstance(r, SignedReceipt) else r for r in good] == [0, 1, 2, 3]
    assert ledger.verify().ok and ledger.count() == 4


async def test_cancelled_caller_does_not_break_the_chain(ledger: Ledger,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = gate_writer(ledger, monkeypatch)
    tasks = await queue_behind_gate(ledger, [make_draft(1), make_draft(2)], entered)
    tasks[1].cancel()
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    await ledger.append(make_draft(3))  # waits behind the batch holding the cancelled draft
    # The cancelled caller never saw its receipt, but it was committed in its place.
    assert ledger.count() == 4 and ledger.verify().ok


async def test_close_commits_what_is_queued(ledger_path: Path, node_key: SigningKey) -> None:
    ledger = Ledger(ledger_path, node_key)
    tasks = [asyncio.create_task(ledger.append(make_draft(i))) for i in range(50)]
    await asyncio.sleep(0)
    await ledger.aclose()
    assert len(await asyncio.gather(*tasks)) == 50
    with pytest.raises(LedgerClosedError):
        await ledger.append(make_draft(99))
    with pytest.raises(LedgerClosedError):
        ledger.head()
    ledger.close()  # idempotent
    with Ledger(ledger_path, node_key) as reopened:
        assert reopened.count() == 50 and reopened.verify().ok


async def test_a_group_lands_in_one_transaction(ledger: Ledger) -> None:
    commits: list[int] = []
    original = ledger._writer._commit_batch

    def counting(batch: Any) -> None:
        commits.append(len(batch))
        original(batch)

    ledger._writer._commit_batch = counting  # type: ignore[method-assign]
    receipts = await ledger.append_group([make_draft() for _ in range(7)],
                                         [b"e"] * 7)
    assert [r.seq for r in receipts] == list(range(7))
    assert commits == [7]
    assert ledger.get_evidence(receipts[3].leaf) == b"e"


async def test_evidence_is_stored_with_its_receipt(ledger: Ledger) -> None:
    with_evidence = await ledger.append(make_draft(), evidence=b"\x81\xa1k\x01")
    without = await ledger.append(make_draft())
    assert ledger.get_evidence(with_evidence.leaf) == b"\x81\xa1k\x01"
    assert ledger.get_evidence(without.leaf) is None


def _run_writer_and_kill(ledger_path: Path, rng: random.Random, *, wait_for_output: bool
                         ) -> list[tuple[int, str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.ledger_writer", str(ledger_path), "crash", "8"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    first_line = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            first_line.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if wait_for_output:
            assert first_line.wait(20), "the writer printed nothing"
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # anywhere from start-up (schema creation, opening) to running
            time.sleep(rng.uniform(0.0, 0.6))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        reader.join(10)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL, stderr
    # A line cut by the kill has no newline: that receipt was never reported.
    return [(int(seq), leaf) for seq, leaf in
            (line.split() for line in lines if line.endswith("\n"))]


def test_receipts_survive_sigkill(tmp_path: Path) -> None:
    ledger_path = tmp_path / "crash.db"
    rng = random.Random(1234)
    printed: list[tuple[int, str]] = []
    rounds = 6
    for round_ in range(rounds):
        got = _run_writer_and_kill(ledger_path, rng, wait_for_output=round_ % 3 != 1)
        if printed and got:
            assert min(seq for seq, _ in got) > max(seq for seq, _ in printed)
        printed += got
    assert len(printed) > rounds  # the test really killed writers mid-stream
    key = key_from("crash")
    with Ledger(ledger_path, key) as ledger:
        for seq, leaf in printed:
            stored = ledger.get(bytes.fromhex(leaf))
            assert stored is not None, f"printed receipt {seq} is missing"
            assert stored.seq == seq
        report = verify_chain(ledger.iter_raw(), node=bytes(key.verify_key))
        assert report.ok, report.problems
        assert report.count == ledger.count() >= len(printed)
        assert report.next_seq == report.count  # no gap anywhere
