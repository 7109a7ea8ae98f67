"""The batched llama.cpp engine (``parallel`` > 1) on the tiny GGUF: exact outputs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from runtimes.base import BackendError, Delta, Done, GenerationParams
from runtimes.llama_cpp import LlamaCppBackend
from tests.runtimes.conftest import tiny_spec

GREEDY = GenerationParams(max_tokens=40, temperature=0.0)
PROMPTS = ["hello", "The quick brown fox", "abc", "x" * 60, "hello there", "zzz top"]


@pytest.fixture(scope="module")
def single(tiny_gguf_path: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path))
    yield backend
    backend.close()


@pytest.fixture
def batched(tiny_gguf_path: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options={"parallel": 4}))
    yield backend
    backend.close()


def run(backend: LlamaCppBackend, prompt: str,
        params: GenerationParams = GREEDY) -> tuple[str, Done, int]:
    """The text, the Done event, and the tokens the deltas account for."""
    events = list(backend.generate(prompt, params, threading.Event()))
    done = events[-1]
    assert isinstance(done, Done)
    deltas = [e for e in events if isinstance(e, Delta)]
    return "".join(d.text for d in deltas), done, sum(d.tokens for d in deltas)


def engine_of(backend: LlamaCppBackend) -> object:
    engine = backend._engine
    assert engine is not None
    return engine


def test_concurrent_greedy_streams_match_one_at_a_time(single: LlamaCppBackend,
                                                       batched: LlamaCppBackend) -> None:
    expected = {prompt: run(single, prompt) for prompt in PROMPTS}
    assert batched.max_concurrency == 4
    # More streams than slots: two wait for a free slot, then join the running batch.
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = dict(zip(PROMPTS, pool.map(lambda p: run(batched, p), PROMPTS),
                           strict=True))
    for prompt in PROMPTS:
        text, done, tokens = results[prompt]
        assert (text, done) == expected[prompt][:2], prompt
        assert tokens == done.completion_tokens == 40


def test_seeded_sampling_matches_the_single_path(single: LlamaCppBackend,
                                                 batched: LlamaCppBackend) -> None:
    params = GenerationParams(max_tokens=30, temperature=1.0, top_p=1.0, seed=7)
    first = run(batched, "abc", params)[0]
    assert run(batched, "abc", params)[0] == first
    assert run(single, "abc", params)[0] == first
    assert run(batched, "abc", replace(params, seed=8))[0] != first


def test_a_shared_prompt_prefix_is_not_evaluated_again(batched: LlamaCppBackend) -> None:
    engine = batched._engine
    assert engine is not None
    system = "You are a careful assistant. " * 3

    def evaluated(prompt: str, params: GenerationParams = GREEDY) -> int:
        before = engine.prompt_tokens_evaluated
        run(batched, prompt, params)
        return engine.prompt_tokens_evaluated - before

    first = evaluated(system + "Question one?")
    assert first == 1 + len(system + "Question one?")  # BOS + one token per byte
    assert evaluated(system + "Question one?") == 1  # all cached: the last token again
    assert evaluated(system + "Other?") == len("Other?")
    assert evaluated(system + "Other?", replace(GREEDY, cache_prompt=False)) == \
        1 + len(system + "Other?")


def test_a_long_prompt_is_prefilled_in_chunks_beside_running_streams(
        tiny_gguf_path: Path, single: LlamaCppBackend) -> None:
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path,
                                             options={"parallel": 2, "n_batch": 16}))
    try:
        long_prompt = "a long prompt " * 12
        prompts = ["hello", long_prompt]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda p: run(backend, p), prompts))
        assert [r[:2] for r in results] == [run(single, p)[:2] for p in prompts]
    finally:
        backend.close()


def test_cancel_ends_a_sequence_and_frees_its_slot(batched: LlamaCppBackend) -> None:
    cancel = threading.Event()
    events = batched.generate("hello", GenerationParams(max_tokens=200, temperature=0.0),
                              cancel)
    first = next(events)
    assert isinstance(first, Delta)
    cancel.set()
    rest = list(events)
    done = rest[-1]
    assert isinstance(done, Done) and done.finish_reason == "cancelled"
    assert done.completion_tokens < 200
    # Closing an iterator early cancels too; every slot is free again afterwards.
    for _ in range(4):
        stream = batched.generate("abc", GREEDY, threading.Event())
        next(stream)
        stream.close()  # type: ignore[attr-defined]
    assert run(batched, "abc")[1].completion_tokens == 40


def test_each_sequence_has_the_model_context(batched: LlamaCppBackend,
                                             single: LlamaCppBackend) -> None:
    unlimited = GenerationParams(max_tokens=None, temperature=0.0)
    with ThreadPoolExecutor(4) as pool:  # four full contexts at once
        results = list(pool.map(lambda p: run(batched, p, unlimited), PROMPTS[:4]))
    for prompt, (text, done, _) in zip(PROMPTS[:4], results, strict=True):
        assert done.prompt_tokens + done.completion_tokens == 256
        assert (text, done) == run(single, prompt, unlimited)[:2]


def test_close_ends_every_request_and_refuses_new_ones(tiny_gguf_path: Path,
                                                      single: LlamaCppBackend) -> None:
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options={"parallel": 2}))
    assert backend.memory_bytes() > single.memory_bytes()  # two more sequences' caches
    streams = [backend.generate(p, GenerationParams(max_tokens=None, temperature=0.0),
                                threading.Event()) for p in ("hello", "abc", "xyz")]
    backend.close()
    for stream in streams:  # each ends, finished or with the unload error; none hangs
        try:
            events = list(stream)
        except BackendError:
            continue
        assert isinstance(events[-1], Done)
    with pytest.raises(BackendError):
        backend.generate("hello", GREEDY, threading.Event())


def test_parallel_must_be_positive(tiny_gguf_path: Path) -> None:
    with pytest.raises(BackendError, match="parallel"):
        LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options={"parallel": 0}))


@pytest.mark.parametrize("flash", [True, False])
def test_context_options_reach_the_engine(tiny_gguf_path: Path, flash: bool) -> None:
    """flash_attn and a KV cache type go to the engine's context (an unknown context
    parameter would raise: ctypes structs silently accept any attribute name)."""
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options={
        "parallel": 2, "flash_attn": flash, "type_k": 1, "type_v": 1, "n_ubatch": 64}))
    try:
        assert run(backend, "hello")[1].completion_tokens == 40
    finally:
        backend.close()
