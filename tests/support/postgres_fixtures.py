"""pytest fixtures for a real PostgreSQL server: one cluster per session, one database per test.

Import both names into a conftest (or test module) to use them::

    from tests.support.postgres_fixtures import postgres_cluster, postgres_dsn  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edged.devtools.postgres import PostgresCluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway, non-durable (fsync off) PostgreSQL server shared by the whole session."""
    with PostgresCluster(durable=False) as cluster:
        yield cluster


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The DSN of a fresh, empty database for one test; dropped (sessions ended) afterwards."""
    name = postgres_cluster.unique_name("test")
    dsn = postgres_cluster.create_database(name)
    yield dsn
    postgres_cluster.drop_database(name)
