"""Fixtures of the settlement tests: a real anvil node and key files of its dev accounts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.anvil import AnvilError, AnvilNode, start_anvil, write_key_file


@pytest.fixture
def anvil() -> Iterator[AnvilNode]:
    """A fresh anvil (automine, chain id 31337, funded dev accounts); about 0.1 s to start."""
    try:
        node = start_anvil()
    except AnvilError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def operator_key_file(tmp_path: Path, anvil: AnvilNode) -> Path:
    """A 0600 key file of anvil's first funded dev account (the fleet operator)."""
    return write_key_file(tmp_path / "operator.key", anvil.accounts[0][1])


@pytest.fixture
def other_key_file(tmp_path: Path, anvil: AnvilNode) -> Path:
    """A 0600 key file of anvil's second funded dev account (not the operator)."""
    return write_key_file(tmp_path / "other.key", anvil.accounts[1][1])
