"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.devtools.tiny_gguf import write_tiny_llama_gguf
from tests.support.anvil import AnvilError, AnvilNode, start_anvil, write_key_file

TINY_CONTEXT = 256


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama GGUF with a byte vocabulary, written once per session."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf",
                                 context_length=TINY_CONTEXT)


# A real local EVM node (anvil) and key files of its funded dev accounts.
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


# A throwaway PostgreSQL cluster per session, a fresh database per test (real server).
from tests.support.postgres_fixtures import postgres_cluster, postgres_dsn  # noqa: E402, F401
