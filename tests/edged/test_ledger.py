"""The receipt ledger: group commit, chaining, failure handling, reopening, crashes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from nacl.signing import SigningKey

from attribution.chain import verify_chain
from attribution.commitments import commit
from attribution.payees import Payee
from attribution.receipt import (
    ZERO_HASH,
    InvalidReceipt,
    ReceiptDraft,
    SignedReceipt,
    verify_receipt,
)
from edged import log_tree
from edged.ledger import (
    AppendFailedError,
    ForeignLedgerError,
    Ledger,
    LedgerClosedError,
    LedgerError,
)
from sync import merkle
from tests.support.receipt_factory import key_from, make_draft

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def node_key() -> SigningKey:
    return key_from("ledger-tests")


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(ledger_path: Path, node_key: SigningKey) -> Iterator[Ledger]:
    with Ledger(ledger_path, node_key) as opened:
        yield opened


def gate_writer(ledger: Ledger, monkeypatch: pytest.MonkeyPatch
                ) -> tuple[threading.Event, threading.Event]:
    """Hold the writer before its next commit, so the test decides what one batch holds.

    Returns (entered, release): ``entered`` is set once the writer has taken a
    batch and waits; setting ``release`` lets it (and every later batch) go.
    """
    entered, release = threading.Event(), threading.Event()
    original: Callable[[list[object]], None] = ledger._commit_batch  # type: ignore[assignment]

    def gated(batch: list[object]) -> None:
        entered.set()
        release.wait(10)
        original(batch)

    monkeypatch.setattr(ledger, "_commit_batch", gated)
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


async def test_reopen_continues_the_chain(ledger_path: Path, node_key: SigningKey) -> None:
    with Ledger(ledger_path, node_key) as ledger:
        before = [await ledger.append(make_draft(i)) for i in range(5)]
    with Ledger.open(ledger_path, node_key) as ledger:
        assert ledger.head() == (5, before[-1].leaf)
        after = [await ledger.append(make_draft(i)) for i in range(5, 10)]
        assert [r.seq for r in after] == list(range(5, 10))
        assert after[0].prev == before[-1].leaf
        assert ledger.verify().ok


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


def test_refuses_a_ledger_of_another_node(ledger_path: Path, node_key: SigningKey) -> None:
    with Ledger(ledger_path, node_key) as ledger:
        ledger.append_sync(make_draft())
    other = key_from("another node")
    with pytest.raises(ForeignLedgerError) as excinfo:
        Ledger(ledger_path, other)
    message = str(excinfo.value)
    assert bytes(node_key.verify_key).hex()[:16] in message
    assert bytes(other.verify_key).hex()[:16] in message
    assert str(ledger_path) not in message
    with Ledger(ledger_path, node_key) as ledger:  # the owner still opens it
        assert ledger.count() == 1


def test_an_empty_ledger_belongs_to_whoever_writes_first(ledger_path: Path) -> None:
    Ledger(ledger_path, key_from("a")).close()
    with Ledger(ledger_path, key_from("b")) as ledger:
        assert ledger.append_sync(make_draft()).node == bytes(key_from("b").verify_key)


async def test_page_get_head(ledger: Ledger) -> None:
    assert ledger.head() == (0, ZERO_HASH) and ledger.count() == 0
    assert ledger.page() == [] and ledger.get(bytes(32)) is None
    receipts = [await ledger.append(make_draft(i)) for i in range(10)]
    assert [r.seq for r in ledger.page(limit=3)] == [0, 1, 2]
    assert [r.seq for r in ledger.page(after_seq=2, limit=3)] == [3, 4, 5]
    assert [r.seq for r in ledger.page(after_seq=8)] == [9]
    assert ledger.page(after_seq=9) == [] and ledger.page(limit=0) == []
    assert [r.raw for r in ledger.page(limit=100)] == [r.raw for r in receipts]
    assert ledger.raw_page(after_seq=4, limit=2) == [receipts[5].raw, receipts[6].raw]
    for receipt in receipts:
        found = ledger.get(receipt.leaf)
        assert found is not None
        assert found.raw == receipt.raw and found.fields == receipt.fields
    assert ledger.get(receipts[0].raw[:32]) is None
    assert ledger.head() == (10, receipts[-1].leaf)


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


def test_schema_and_journal(ledger: Ledger, ledger_path: Path) -> None:
    ledger.append_sync(make_draft())
    db = sqlite_utils.Database(ledger_path)
    try:
        assert db.journal_mode == "wal"
        assert set(db.table_names()) == {"receipts", "evidence", "merkle", "checkpoints"}
        table = db.table("receipts")
        assert table.pks == ["seq"]
        assert table.columns_dict.keys() == {"seq", "leaf", "raw", "ts", "model", "kind"}
        assert {c.name: c.notnull for c in table.columns}["leaf"]
        assert any(index.unique and index.columns == ["leaf"] for index in table.indexes)
        assert db.execute("SELECT ts, model, kind FROM receipts").fetchall() == [
            (1_700_000_000_000, "tiny-model", "chat")]
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO receipts (seq, leaf, raw) SELECT 99, leaf, raw FROM receipts")
    finally:
        db.close()


def test_stores_no_raw_text(tmp_path: Path, node_key: SigningKey) -> None:
    canary = "CANARY-7f3a prompt that must never be stored"
    commitment_key = os.urandom(32)
    draft = dataclasses.replace(make_draft(),
                                input_commitment=commit(commitment_key, canary),
                                output_commitment=commit(commitment_key, canary[::-1]))

    def everything_on_disk() -> bytes:
        return b"".join(path.read_bytes() for path in sorted(tmp_path.iterdir()))

    with Ledger(tmp_path / "ledger.db", node_key) as ledger:
        ledger.append_sync(draft)
        while_open = everything_on_disk()  # the database, -wal and -shm files
    after_close = everything_on_disk()
    assert draft.input_commitment in while_open + after_close
    for needle in (canary, canary[::-1]):
        for form in (needle.encode(), needle.encode().hex().encode()):
            assert form not in while_open and form not in after_close


def test_refuses_files_that_are_not_ledgers(tmp_path: Path, node_key: SigningKey) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError):
        Ledger(junk, node_key)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE receipts (id INTEGER PRIMARY KEY, body TEXT)")
    with pytest.raises(LedgerError):
        Ledger(other, node_key)


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


async def test_evidence_is_stored_with_its_receipt(ledger: Ledger) -> None:
    with_evidence = await ledger.append(make_draft(), evidence=b"\x81\xa1k\x01")
    without = await ledger.append(make_draft())
    assert ledger.get_evidence(with_evidence.leaf) == b"\x81\xa1k\x01"
    assert ledger.get_evidence(without.leaf) is None


async def test_merkle_tree_and_checkpoints_follow_the_log(ledger: Ledger,
                                                          ledger_path: Path) -> None:
    leaves: list[bytes] = []
    sizes = []
    for batch in (1, 2, 5, 8, 1, 13):
        receipts = await asyncio.gather(*(ledger.append(make_draft()) for _ in range(batch)))
        leaves += [r.leaf for r in sorted(receipts, key=lambda r: r.seq)]
        checkpoint = ledger.cut_checkpoint(ts=1_700_000_000_000 + len(leaves))
        checkpoint.verify()
        assert checkpoint.checkpoint.size == len(leaves)
        assert checkpoint.checkpoint.root == merkle.reference_root(leaves)
        sizes.append(len(leaves))
    assert ledger.cut_checkpoint(ts=1) == ledger.latest_checkpoint()  # no growth, no new one
    size = len(leaves)
    for seq in (0, 7, size - 1):
        proof = ledger.inclusion_proof(seq, size)
        merkle.verify_inclusion(leaves[seq], seq, size, proof, merkle.reference_root(leaves))
    for first in sizes:
        proof = ledger.consistency_proof(first, size)
        merkle.verify_consistency(first, size, merkle.reference_root(leaves[:first]),
                                  merkle.reference_root(leaves), proof)
    with pytest.raises(ValueError):
        ledger.inclusion_proof(size, size)


def gate_checkpoint(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold the next checkpoint inside its write transaction (it has the write lock and
    has read the size; the root, signature, insert, commit and fsync are still to come).

    Returns (entered, release) like :func:`gate_writer`."""
    entered, release = threading.Event(), threading.Event()
    original_root = log_tree.root

    def gated_root(size: int, subtrees: log_tree.SqlSubtrees) -> bytes:
        assert subtrees.conn.in_transaction
        entered.set()
        release.wait(60)
        return original_root(size, subtrees)

    monkeypatch.setattr(log_tree, "root", gated_root)
    return entered, release


READ_BOUND_S = 5.0  # reads take milliseconds; the margin is for a loaded machine


def test_reads_do_not_wait_for_a_checkpoint(ledger: Ledger,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    receipts = [ledger.append_sync(make_draft(i)) for i in range(5)]
    entered, release = gate_checkpoint(monkeypatch)

    def read_everything() -> tuple[tuple[int, bytes], SignedReceipt | None, list[SignedReceipt]]:
        return ledger.head(), ledger.get(receipts[2].leaf), ledger.page(limit=10)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        checkpoint = pool.submit(ledger.cut_checkpoint, 1_700_000_000_000)
        try:
            assert entered.wait(30), "the checkpoint never reached its transaction"
            try:
                head, found, page = pool.submit(read_everything).result(timeout=READ_BOUND_S)
            except concurrent.futures.TimeoutError:
                pytest.fail(f"reads waited over {READ_BOUND_S} s for a checkpoint's transaction")
        finally:
            release.set()
        signed = checkpoint.result(timeout=30)
    assert head == (5, receipts[-1].leaf)
    assert found is not None and found.raw == receipts[2].raw
    assert [r.raw for r in page] == [r.raw for r in receipts]
    signed.verify()
    assert signed.checkpoint.size == 5
    assert signed.checkpoint.root == merkle.reference_root([r.leaf for r in receipts])


def test_concurrent_checkpoints_are_cut_one_at_a_time(ledger_path: Path,
                                                      node_key: SigningKey) -> None:
    ledger = Ledger(ledger_path, node_key)
    receipts = [ledger.append_sync(make_draft(i)) for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        signed = list(pool.map(lambda _: ledger.cut_checkpoint(1_700_000_000_000), range(16)))
    assert {s.encode() for s in signed} == {signed[0].encode()}
    assert signed[0].checkpoint.root == merkle.reference_root([r.leaf for r in receipts])
    ledger.close()
    with pytest.raises(LedgerClosedError):
        ledger.cut_checkpoint(1_700_000_000_001)


def test_tree_is_backfilled_for_a_ledger_written_without_one(ledger_path: Path,
                                                             node_key: SigningKey) -> None:
    with Ledger(ledger_path, node_key) as ledger:
        receipts = [ledger.append_sync(make_draft()) for _ in range(11)]
    db = sqlite3.connect(ledger_path)
    db.execute("DELETE FROM merkle")
    db.commit()
    db.close()
    with Ledger(ledger_path, node_key) as ledger:
        assert ledger.root(11) == merkle.reference_root([r.leaf for r in receipts])


async def test_a_group_lands_in_one_transaction(ledger: Ledger) -> None:
    commits: list[int] = []
    original = ledger._commit_batch

    def counting(batch: Any) -> None:
        commits.append(len(batch))
        original(batch)

    ledger._commit_batch = counting  # type: ignore[method-assign]
    receipts = await ledger.append_group([make_draft() for _ in range(7)],
                                         [b"e"] * 7)
    assert [r.seq for r in receipts] == list(range(7))
    assert commits == [7]
    assert ledger.get_evidence(receipts[3].leaf) == b"e"


async def test_the_ledger_files_are_the_owners_alone(ledger_path: Path,
                                                     node_key: SigningKey) -> None:
    with Ledger.open(ledger_path, node_key) as ledger:
        await ledger.append(make_draft(0))
    side_files = [ledger_path.with_name(ledger_path.name + suffix) for suffix in ("-wal", "-shm")]
    for path in [ledger_path, *side_files]:
        if path.exists():
            assert path.stat().st_mode & 0o777 == 0o600, path.name
            path.chmod(0o644)  # as an older version left them
    with Ledger.open(ledger_path, node_key):
        for path in [ledger_path, *side_files]:
            if path.exists():
                assert path.stat().st_mode & 0o777 == 0o600, path.name
