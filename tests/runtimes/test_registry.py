"""The registry of named backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimes.base import BackendError, ModelSpec
from runtimes.fake import FakeBackend
from runtimes.llama_cpp import LlamaCppBackend
from runtimes.registry import backend_class, backend_names, load_backend


def test_names() -> None:
    assert backend_names() == ["fake", "llama.cpp", "onnx"]


def test_classes_carry_their_runtime_name() -> None:
    for name in backend_names():
        assert backend_class(name).runtime == name
    assert backend_class("llama.cpp") is LlamaCppBackend
    assert backend_class("fake") is FakeBackend


def test_unknown_runtime_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="unknown runtime 'onnx-9'") as caught:
        load_backend("onnx-9", ModelSpec(name="m", path=Path("m.onnx")))
    assert "llama.cpp" in str(caught.value)  # lists the known ones


def test_load_backend_loads(tiny_gguf_path: Path) -> None:
    backend = load_backend("llama.cpp", ModelSpec(name="tiny", path=tiny_gguf_path))
    try:
        assert isinstance(backend, LlamaCppBackend)
        assert backend.memory_bytes() > tiny_gguf_path.stat().st_size
    finally:
        backend.close()
