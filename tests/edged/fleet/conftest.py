"""Fleet stores on both databases: embedded SQLite and a real throwaway PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edged.devtools.simulated_node import SimulatedNode
from edged.fleet.db import Database
from edged.fleet.epochs import Epochs
from edged.fleet.store import FleetStore

ENROLLED_MS = 1_800_000_000_000


class Clock:
    """Milliseconds that only move when a test says so."""

    def __init__(self, now: int = ENROLLED_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return "sqlite:" + str(tmp_path / "fleet.sqlite3")
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
def open_store(database_url: str, clock: Clock) -> Iterator[Callable[[], FleetStore]]:
    """Opens stores on one database (several = several fleet processes sharing it)."""
    opened: list[Database] = []

    def open_one() -> FleetStore:
        db = Database(database_url)
        opened.append(db)
        return FleetStore(db, clock)

    yield open_one
    for db in opened:
        db.close()


@pytest.fixture
def store(open_store: Callable[[], FleetStore]) -> FleetStore:
    return open_store()


@pytest.fixture
def epochs(store: FleetStore) -> Epochs:
    return Epochs(store)


def enrolled_node(store: FleetStore, clock: Clock, label: str, **kwargs: object) -> SimulatedNode:
    from tests.support.receipt_factory import key_from

    node = SimulatedNode(key_from(label), clock_ms=clock, **kwargs)  # type: ignore[arg-type]
    store.enroll(node.origin, label)
    return node
