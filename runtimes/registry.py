"""Named backends, imported lazily so a missing optional dependency only
matters when a model of that runtime is loaded."""

from __future__ import annotations

import importlib

from runtimes.base import Backend, BackendError, ModelSpec

_BACKENDS = {
    "llama.cpp": "runtimes.llama_cpp:LlamaCppBackend",
    "fake": "runtimes.fake:FakeBackend",
    "onnx": "runtimes.onnx_runtime:OnnxBackend",
}


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(runtime: str) -> type[Backend]:
    try:
        target = _BACKENDS[runtime]
    except KeyError:
        raise BackendError(f"unknown runtime {runtime!r}; known: {backend_names()}") from None
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Backend] = getattr(module, attribute)
    return cls


def load_backend(runtime: str, spec: ModelSpec) -> Backend:
    """Load ``spec`` with the backend registered as ``runtime``; blocking."""
    return backend_class(runtime).load(spec)
