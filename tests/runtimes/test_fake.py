"""The deterministic fake backend that scheduler and API tests rely on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from runtimes.base import (
    ChatMessage,
    ContextLengthExceeded,
    Delta,
    Done,
    GenerationParams,
    ModelSpec,
)
from runtimes.fake import EMBEDDING_DIMENSIONS, FakeBackend
from runtimes.registry import load_backend


def fake(**options: object) -> FakeBackend:
    backend = load_backend(
        "fake", ModelSpec(name="fake", path=Path("none"), context_length=64, options=options)
    )
    assert isinstance(backend, FakeBackend)
    return backend


def events(backend: FakeBackend, prompt: str = "hi", **params: object) -> list[Delta | Done]:
    return list(backend.generate(prompt, GenerationParams(**params), threading.Event()))  # type: ignore[arg-type]


def test_same_request_same_output_and_seed_changes_it() -> None:
    backend = fake()
    first = events(backend, max_tokens=5, seed=1)
    assert first == events(backend, max_tokens=5, seed=1)
    assert first != events(backend, max_tokens=5, seed=2)
    assert first[-1] == Done(2, 5, "length")
    assert all(isinstance(e, Delta) for e in first[:-1]) and len(first) == 6


def test_chat_prompts_are_accepted() -> None:
    chat = [ChatMessage("user", "hi")]
    result = list(fake().generate(chat, GenerationParams(max_tokens=2), threading.Event()))
    assert result[-1] == Done(len("<user>hi"), 2, "length")


def test_stop_string_ends_with_stop() -> None:
    backend = fake(vocabulary=["one", "two"])
    result = events(backend, max_tokens=10, stop=("two",))
    done = result[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop"
    assert all("two" not in e.text for e in result if isinstance(e, Delta))
    assert done.completion_tokens == len(result)  # the stopping word is counted, not sent


def test_no_max_tokens_fills_the_context() -> None:
    assert events(fake(), "abcd")[-1] == Done(4, 60, "length")


def test_cancel_reports_tokens_produced() -> None:
    cancel = threading.Event()
    stream = fake().generate("hi", GenerationParams(max_tokens=10), cancel)
    next(stream)
    next(stream)
    cancel.set()
    assert list(stream) == [Done(2, 2, "cancelled")]


def test_context_overflow_raises_before_any_event() -> None:
    with pytest.raises(ContextLengthExceeded):
        fake().generate("x" * 64, GenerationParams(), threading.Event())


def test_active_count_tracks_running_generations() -> None:
    backend = fake()
    stream = backend.generate("hi", GenerationParams(max_tokens=3), threading.Event())
    next(stream)
    assert backend.active == 1
    list(stream)
    assert backend.active == 0


def test_embeddings_close_and_options() -> None:
    backend = fake(max_concurrency=3)
    result = backend.embed(["a", "bc"])
    assert [len(v) for v in result.vectors] == [EMBEDDING_DIMENSIONS] * 2
    assert result.vectors[0] != result.vectors[1]
    assert result.prompt_tokens == 3
    assert backend.max_concurrency == 3 and backend.memory_bytes() > 0
    backend.close()
    backend.close()
    assert backend.closed
