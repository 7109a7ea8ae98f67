"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_gguf import write_tiny_llama_gguf

TINY_CONTEXT = 256


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama GGUF with a byte vocabulary, written once per session."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf",
                                 context_length=TINY_CONTEXT)


# A throwaway PostgreSQL cluster per session, a fresh database per test (real server).
from tests.support.postgres_fixtures import postgres_cluster, postgres_dsn  # noqa: E402, F401
