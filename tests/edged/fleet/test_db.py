"""The fleet's database layer: parameters in each driver's own style (a '?' or '%' inside
SQL text is left alone), and PostgreSQL connections from a pool that replaces broken ones."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from edged.fleet.db import Database, postgres_sql


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


@pytest.mark.parametrize(("sql", "rendered"), [
    ("SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = %s AND c = %s"),
    ("SELECT 'why?', ? FROM t", "SELECT 'why?', %s FROM t"),
    ("SELECT 'it''s ?' || ?", "SELECT 'it''s ?' || %s"),
    ("SELECT a FROM t WHERE b LIKE '5%' AND c = ?",
     "SELECT a FROM t WHERE b LIKE '5%%' AND c = %s"),
    ("SELECT 10 % ?", "SELECT 10 %% %s"),
    ('SELECT "odd?name" FROM t -- why ?\nWHERE a = ?',
     'SELECT "odd?name" FROM t -- why ?\nWHERE a = %s'),
    ("SELECT /* ? */ $$ ? $$, $q$ ?'? $q$, ?", "SELECT /* ? */ $$ ? $$, $q$ ?'? $q$, %s"),
    ("SELECT $1", "SELECT $1"),
])
def test_postgres_placeholders_are_rendered_outside_constants_only(sql: str,
                                                                   rendered: str) -> None:
    assert postgres_sql(sql) == rendered


@pytest.mark.parametrize("sql", ["SELECT 'open ?", 'SELECT "open', "SELECT /* open ?",
                                 "SELECT $$ open ?"])
def test_sql_with_an_unclosed_quote_is_refused(sql: str) -> None:
    with pytest.raises(ValueError, match="unclosed"):
        postgres_sql(sql)


def test_question_marks_and_percent_signs_in_sql_constants(db: Database) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO fleet_payee_addresses (payee, address) VALUES ('why?', ?)",
                   ("100%",))
        tx.execute("INSERT INTO fleet_payee_addresses (payee, address) VALUES (?, '50% off?')",
                   ("plain",))
    with db.reading() as tx:
        assert tx.one("SELECT '?', '%', ?, 'a''?'", (7,)) == ("?", "%", 7, "a'?")
        assert tx.all("SELECT payee, address FROM fleet_payee_addresses "
                      "WHERE payee LIKE '%?' OR address LIKE '%off?' ORDER BY payee") \
            == [("plain", "50% off?"), ("why?", "100%")]
        assert tx.one("SELECT address FROM fleet_payee_addresses WHERE payee = ? "
                      "AND address LIKE '1%'", ("why?",)) == ("100%",)
        assert tx.one("SELECT COUNT(*) FROM fleet_payee_addresses")[0] == 2  # no parameters


def _wait_until_gone(admin: psycopg.Connection, pid: int) -> None:
    deadline = time.monotonic() + 10
    while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone() is not None:
        assert time.monotonic() < deadline, "the backend did not end"
        time.sleep(0.02)


@pytest.mark.parametrize("use", ["reading", "transaction"])
def test_a_connection_the_server_ended_is_replaced(postgres_dsn: str, use: str) -> None:
    db = Database(postgres_dsn)
    try:
        with db.reading() as tx:
            pid = tx.one("SELECT pg_backend_pid()")[0]
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            _wait_until_gone(admin, pid)
        with db.reading() if use == "reading" else db.transaction() as tx:
            new_pid, answer = tx.one("SELECT pg_backend_pid(), 1 + ?", (1,))
        assert answer == 2 and new_pid != pid
        with db.transaction() as tx:
            tx.execute("INSERT INTO fleet_payee_addresses (payee, address) VALUES (?, ?)",
                       ("p", "0x1"))
        with db.reading() as tx:
            assert tx.one("SELECT address FROM fleet_payee_addresses") == ("0x1",)
    finally:
        db.close()


def test_every_pooled_connection_ended_at_once_is_replaced(postgres_dsn: str) -> None:
    """A server restart ends every connection: the next queries of each thread succeed."""
    db = Database(postgres_dsn, pool_size=4)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def hold_a_connection() -> None:
        try:
            with db.reading() as tx:
                barrier.wait(timeout=10)  # four connections open at once
                tx.one("SELECT 1")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=hold_a_connection) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            pids = [row[0] for row in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()").fetchall()]
            assert pids
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            for pid in pids:
                _wait_until_gone(admin, pid)
        for _ in range(6):
            with db.reading() as tx:
                assert tx.one("SELECT 1")[0] == 1
    finally:
        db.close()
