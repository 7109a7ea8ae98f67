"""Fixtures of the ledger tests: a node key and a ledger opened for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from edged.ledger import Ledger
from tests.support.receipt_factory import key_from


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
