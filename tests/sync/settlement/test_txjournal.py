"""The transaction journal on its own: rows, every signature of a row, old journals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sync.settlement.txjournal import JournalError, JournalRow, SignedTx, TxJournal

KEY = "checkpoint:00:1"


def _row(key: str = KEY, tx_hash: str = "0xaa", raw: bytes = b"first") -> JournalRow:
    return JournalRow(key, 7, tx_hash, raw, "pending", None, None, None, 1, 1)


def test_a_row_starts_with_its_first_signature(tmp_path: Path) -> None:
    with TxJournal(tmp_path / "j.sqlite") as journal:
        journal.insert(_row(), signed_at_block=40)
        [signed] = journal.signed(KEY)
        assert (signed.key, signed.tx_hash, signed.raw, signed.signed_at_block) == (
            KEY, "0xaa", b"first", 40)
        with pytest.raises(JournalError, match="already has"):
            journal.insert(_row(tx_hash="0xbb", raw=b"other"), signed_at_block=41)
        assert [s.tx_hash for s in journal.signed(KEY)] == ["0xaa"]  # nothing half-written


def test_replacements_are_kept_and_any_of_them_can_become_the_row(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with TxJournal(path) as journal:
        journal.insert(_row(), signed_at_block=40)
        journal.update(KEY, status="pending", block_number=None, block_hash=None,
                       error="max fee per gas less than block base fee")
        row = journal.add_replacement(KEY, "0xbb", b"second", signed_at_block=43)
        assert (row.tx_hash, row.raw, row.status, row.error, row.nonce) == (
            "0xbb", b"second", "pending", None, 7)
        with pytest.raises(JournalError, match="no transaction"):
            journal.add_replacement("missing", "0xcc", b"x", signed_at_block=44)
        assert journal.signed("missing") == []
    with TxJournal(path) as journal:  # after a restart: both signatures, newest first
        assert [(s.tx_hash, s.raw, s.signed_at_block) for s in journal.signed(KEY)] == [
            ("0xbb", b"second", 43), ("0xaa", b"first", 40)]
        row = journal.use_signed(KEY, "0xaa")  # the chain included the first after all
        assert (row.tx_hash, row.raw) == ("0xaa", b"first")
        with pytest.raises(JournalError):
            journal.use_signed(KEY, "0xdd")


def test_archive_moves_the_signatures_with_the_row(tmp_path: Path) -> None:
    with TxJournal(tmp_path / "j.sqlite") as journal:
        journal.insert(_row(), signed_at_block=40)
        journal.add_replacement(KEY, "0xbb", b"second", signed_at_block=43)
        archived = journal.archive(KEY)
        assert archived == f"{KEY}#0xbb"
        assert journal.signed(KEY) == [] and journal.get(KEY) is None
        assert [s.tx_hash for s in journal.signed(archived)] == ["0xbb", "0xaa"]
        journal.insert(_row(tx_hash="0xcc", raw=b"retry"), signed_at_block=50)
        assert [s.tx_hash for s in journal.signed(KEY)] == ["0xcc"]


def test_a_journal_from_before_replacements_gets_its_signatures(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE txs (key TEXT PRIMARY KEY, nonce INTEGER NOT NULL,
                tx_hash TEXT NOT NULL, raw BLOB NOT NULL, status TEXT NOT NULL,
                block_number INTEGER, block_hash TEXT, error TEXT,
                created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
            CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('head', '123');
            INSERT INTO txs VALUES ('deploy', 0, '0x01', x'aa', 'final', 5, '0xb5', NULL, 1, 2);
            INSERT INTO txs VALUES ('epoch:1', 1, '0x02', x'bb', 'pending', NULL, NULL, NULL,
                                    3, 4);
        """)
    db.close()
    for _ in range(2):  # opening again adds nothing twice
        with TxJournal(path) as journal:
            assert journal.signed("deploy") == [SignedTx("deploy", "0x01", b"\xaa", 123, 1)]
            assert journal.signed("epoch:1") == [SignedTx("epoch:1", "0x02", b"\xbb", 123, 3)]
            assert [row.key for row in journal.rows()] == ["deploy", "epoch:1"]
