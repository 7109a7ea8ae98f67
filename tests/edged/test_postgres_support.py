"""The PostgreSQL test support starts a real server: isolated databases, real constraints."""

from __future__ import annotations

from pathlib import Path

import psycopg
import psycopg.errors
import pytest

from edged.devtools.postgres import PostgresCluster, PostgresNotFound, free_port


def test_databases_are_isolated(postgres_cluster: PostgresCluster,
                                postgres_dsn: str) -> None:
    other_dsn = postgres_cluster.create_database()
    assert other_dsn != postgres_dsn
    with psycopg.connect(postgres_dsn) as connection:
        connection.execute("CREATE TABLE notes (body text NOT NULL)")
        connection.execute("INSERT INTO notes (body) VALUES ('only here')")
    with psycopg.connect(other_dsn) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
    with psycopg.connect(postgres_dsn) as connection:
        assert connection.execute("SELECT body FROM notes").fetchall() == [("only here",)]
    postgres_cluster.drop_database(other_dsn.rsplit("/", 1)[1])


def test_the_server_enforces_unique_constraints(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as connection:
        version = connection.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 130000
        connection.execute("CREATE TABLE receipts (id text PRIMARY KEY)")
        connection.execute("INSERT INTO receipts (id) VALUES ('r1')")
        connection.commit()
        with pytest.raises(psycopg.errors.UniqueViolation):
            connection.execute("INSERT INTO receipts (id) VALUES ('r1')")
        connection.rollback()
        assert connection.execute("SELECT count(*) FROM receipts").fetchone() == (1,)


def test_stop_shuts_the_server_down_and_removes_its_directory() -> None:
    with PostgresCluster(durable=False) as cluster:
        directory, dsn = cluster.directory, cluster.dsn()
        assert directory is not None and (directory / "data" / "PG_VERSION").exists()
        with psycopg.connect(dsn) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
    assert not directory.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2).close()
    cluster.stop()  # a second stop is harmless


def test_missing_binaries_fail_with_an_install_hint(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotFound, match="apt-get install postgresql"):
        PostgresCluster(bindir=tmp_path).start()


def test_free_port_is_bindable() -> None:
    assert 0 < free_port() < 65536
