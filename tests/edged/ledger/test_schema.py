"""The ledger's file: schema, owner checks, reopening, file modes, backfill."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils
from nacl.signing import SigningKey

from attribution.commitments import commit
from edged.ledger import (
    ForeignLedgerError,
    Ledger,
    LedgerError,
)
from sync import merkle
from tests.support.receipt_factory import key_from, make_draft


async def test_reopen_continues_the_chain(ledger_path: Path, node_key: SigningKey) -> None:
    with Ledger(ledger_path, node_key) as ledger:
        before = [await ledger.append(make_draft(i)) for i in range(5)]
    with Ledger.open(ledger_path, node_key) as ledger:
        assert ledger.head() == (5, before[-1].leaf)
        after = [await ledger.append(make_draft(i)) for i in range(5, 10)]
        assert [r.seq for r in after] == list(range(5, 10))
        assert after[0].prev == before[-1].leaf
        assert ledger.verify().ok


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
