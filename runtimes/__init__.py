"""Model backends behind one interface (see :mod:`runtimes.base`).

This package imports no other package of the project.
"""

from runtimes.base import (
    Backend,
    BackendError,
    ChatMessage,
    ContextLengthExceeded,
    Delta,
    Done,
    EmbeddingResult,
    GenerationParams,
    InvalidInput,
    MissingDependency,
    ModelSpec,
    Prompt,
    TokenLogprob,
    UnsupportedOperation,
)
from runtimes.registry import backend_names, load_backend

__all__ = [
    "Backend",
    "BackendError",
    "ChatMessage",
    "ContextLengthExceeded",
    "Delta",
    "Done",
    "EmbeddingResult",
    "GenerationParams",
    "InvalidInput",
    "MissingDependency",
    "ModelSpec",
    "Prompt",
    "TokenLogprob",
    "UnsupportedOperation",
    "backend_names",
    "load_backend",
]
