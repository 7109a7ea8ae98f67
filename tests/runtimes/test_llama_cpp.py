"""The llama.cpp backend on a tiny generated GGUF (and, marked ``gemma``, on Gemma 3 270M)."""

from __future__ import annotations

import itertools
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from edged.devtools.tiny_gguf import N_EMBD, N_LAYER, byte_token, write_tiny_llama_gguf
from runtimes.base import (
    BackendError,
    ChatMessage,
    ContextLengthExceeded,
    Delta,
    Done,
    GenerationParams,
    MissingDependency,
    Prompt,
)
from runtimes.chat_formats import format_chat
from runtimes.llama_cpp import LlamaCppBackend
from runtimes.llama_placement import default_repack
from runtimes.stop_text import StopTextStream
from tests.runtimes.conftest import TINY_CONTEXT, tiny_spec

PROMPT = "hello"
PROMPT_TOKENS = 1 + len(PROMPT)  # BOS + one byte token per character
GREEDY = GenerationParams(max_tokens=60, temperature=0.0)


def collect(events: Iterator[Delta | Done]) -> tuple[list[str], Done]:
    """The Delta texts and the final Done; checks that Done comes once and last."""
    items = list(events)
    done = items[-1]
    assert isinstance(done, Done)
    deltas = items[:-1]
    assert all(isinstance(d, Delta) and d.text for d in deltas)
    return [d.text for d in deltas if isinstance(d, Delta)], done


def run(backend: LlamaCppBackend, prompt: Prompt, params: GenerationParams) -> tuple[str, Done]:
    texts, done = collect(backend.generate(prompt, params, threading.Event()))
    return "".join(texts), done


@pytest.fixture
def greedy_text(tiny_backend: LlamaCppBackend) -> str:
    text, done = run(tiny_backend, PROMPT, GREEDY)
    assert done == Done(PROMPT_TOKENS, 60, "length")
    # The fixture's bias makes every token printable ASCII: one character per token.
    assert len(text) == 60 and text.isprintable() and text.isascii()
    return text


def test_greedy_matches_plain_llama_cpp(tiny_gguf_path: Path, greedy_text: str) -> None:
    plain = llama_cpp.Llama(model_path=str(tiny_gguf_path), n_ctx=TINY_CONTEXT, verbose=False)
    try:
        result = plain.create_completion(PROMPT, max_tokens=60, temperature=0.0)
    finally:
        plain.close()
    assert result["choices"][0]["text"] == greedy_text  # type: ignore[index]
    assert result["usage"]["prompt_tokens"] == PROMPT_TOKENS  # type: ignore[index]


def test_greedy_is_deterministic_across_calls_and_loads(
    tiny_gguf_path: Path, tiny_backend: LlamaCppBackend, greedy_text: str
) -> None:
    assert run(tiny_backend, PROMPT, GREEDY)[0] == greedy_text
    other = LlamaCppBackend.load(tiny_spec(tiny_gguf_path))
    try:
        assert run(other, PROMPT, GREEDY)[0] == greedy_text
    finally:
        other.close()


def test_cache_prompt_false_evaluates_the_whole_prompt_and_changes_no_output(
    tiny_backend: LlamaCppBackend, greedy_text: str
) -> None:
    engine = tiny_backend._engine
    assert engine is not None

    def prompt_tokens_evaluated(params: GenerationParams) -> int:
        before = engine.prompt_tokens_evaluated
        assert run(tiny_backend, PROMPT, params)[0] == greedy_text
        return engine.prompt_tokens_evaluated - before

    # The fixture ran PROMPT already: a cached run replays one token, a fresh one all.
    assert prompt_tokens_evaluated(GREEDY) == 1
    assert prompt_tokens_evaluated(replace(GREEDY, cache_prompt=False)) == PROMPT_TOKENS


def test_seeded_sampling_is_reproducible(tiny_backend: LlamaCppBackend, greedy_text: str) -> None:
    def sample(seed: int) -> str:
        params = GenerationParams(max_tokens=60, temperature=1.0, top_p=1.0, seed=seed)
        return run(tiny_backend, PROMPT, params)[0]

    first = sample(1)
    assert sample(2) != first
    assert sample(1) == first
    assert first != greedy_text


def test_max_tokens_ends_with_length(tiny_backend: LlamaCppBackend, greedy_text: str) -> None:
    text, done = run(tiny_backend, PROMPT, GenerationParams(max_tokens=7, temperature=0.0))
    assert done == Done(PROMPT_TOKENS, 7, "length")
    assert text == greedy_text[:7]
    _, done = run(tiny_backend, PROMPT, GenerationParams(max_tokens=0))
    assert done == Done(PROMPT_TOKENS, 0, "length")


def test_no_max_tokens_runs_until_the_context_is_full(tiny_backend: LlamaCppBackend) -> None:
    text, done = run(tiny_backend, PROMPT, GenerationParams(max_tokens=None, temperature=0.0))
    assert done == Done(PROMPT_TOKENS, TINY_CONTEXT - PROMPT_TOKENS, "length")
    assert len(text) == TINY_CONTEXT - PROMPT_TOKENS


def test_max_tokens_is_capped_by_the_context(tiny_backend: LlamaCppBackend) -> None:
    _, done = run(tiny_backend, PROMPT, GenerationParams(max_tokens=10_000, temperature=0.0))
    assert done == Done(PROMPT_TOKENS, TINY_CONTEXT - PROMPT_TOKENS, "length")


def test_stop_string_ends_generation_and_is_never_emitted(
    tiny_backend: LlamaCppBackend, greedy_text: str
) -> None:
    stop = greedy_text[20:23]
    start = greedy_text.index(stop)
    params = GenerationParams(max_tokens=60, temperature=0.0, stop=("never-there", stop))
    texts, done = collect(tiny_backend.generate(PROMPT, params, threading.Event()))
    assert "".join(texts) == greedy_text[:start]
    # Counted up to and including the token that completed the stop string.
    assert done == Done(PROMPT_TOKENS, start + len(stop), "stop")


def test_partial_stop_string_is_held_back_then_released(
    tiny_backend: LlamaCppBackend, greedy_text: str
) -> None:
    # Starts like the last character but can never complete: every occurrence of that
    # character is held back until the next token shows it is not a stop string.
    last = greedy_text[-1]
    assert last in greedy_text[:-1]  # so holding back really happens mid-stream
    params = GenerationParams(max_tokens=60, temperature=0.0, stop=(last + "\x01",))
    texts, done = collect(tiny_backend.generate(PROMPT, params, threading.Event()))
    # One character per token: a held character goes out with the following one.
    expected, held = [], ""
    for char in greedy_text:
        ready = held + char
        held = last if char == last else ""
        if ready[: len(ready) - len(held)]:
            expected.append(ready[: len(ready) - len(held)])
    expected.append(held)
    assert texts == expected
    assert "".join(texts) == greedy_text
    assert done == Done(PROMPT_TOKENS, 60, "length")


def test_end_of_generation_token_stops_and_is_not_counted(
    tiny_gguf_path: Path, greedy_text: str
) -> None:
    marker = greedy_text[10]
    position = greedy_text.index(marker)
    # The same weights with that character's byte token declared the EOS token.
    options = {"kv_overrides": {"tokenizer.ggml.eos_token_id": byte_token(ord(marker))}}
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options=options))
    try:
        text, done = run(backend, PROMPT, GREEDY)
    finally:
        backend.close()
    assert text == greedy_text[:position]
    assert done == Done(PROMPT_TOKENS, position, "stop")


def test_cancel_ends_the_generation_and_every_token_made_is_delivered(
        tiny_backend: LlamaCppBackend) -> None:
    cancel = threading.Event()
    events = tiny_backend.generate(PROMPT, GenerationParams(max_tokens=None), cancel)
    received = [next(events) for _ in range(5)]
    assert all(isinstance(e, Delta) for e in received)
    cancel.set()
    rest = list(events)  # what the engine made before it saw the cancel, then Done
    done = rest[-1]
    assert isinstance(done, Done) and done.finish_reason == "cancelled"
    assert done.completion_tokens < TINY_CONTEXT - PROMPT_TOKENS
    deltas = [e for e in received + rest if isinstance(e, Delta)]
    assert sum(d.tokens for d in deltas) == done.completion_tokens


def test_cancel_before_start_produces_nothing(tiny_backend: LlamaCppBackend) -> None:
    cancel = threading.Event()
    cancel.set()
    assert list(tiny_backend.generate(PROMPT, GREEDY, cancel)) == [
        Done(PROMPT_TOKENS, 0, "cancelled")
    ]


def test_context_overflow_raises_on_the_call_before_any_event(
    tiny_backend: LlamaCppBackend,
) -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        tiny_backend.generate("x" * (TINY_CONTEXT - 1), GREEDY, threading.Event())
    assert caught.value.prompt_tokens == TINY_CONTEXT  # BOS + 255 bytes
    assert caught.value.context_length == TINY_CONTEXT
    # One token less fits, and then there is room for exactly one completion token.
    _, done = run(tiny_backend, "x" * (TINY_CONTEXT - 2), GREEDY)
    assert done == Done(TINY_CONTEXT - 1, 1, "length")


def test_prompt_tokens_count_utf8_bytes(tiny_backend: LlamaCppBackend) -> None:
    prompt = "café €5 ok"
    _, done = run(tiny_backend, prompt, GenerationParams(max_tokens=1))
    assert done.prompt_tokens == 1 + len(prompt.encode("utf-8"))


def test_bos_follows_the_model_metadata(tiny_gguf_path: Path) -> None:
    options = {"kv_overrides": {"tokenizer.ggml.add_bos_token": False}}
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options=options))
    try:
        _, done = run(backend, PROMPT, GenerationParams(max_tokens=1))
    finally:
        backend.close()
    assert done.prompt_tokens == len(PROMPT)


CHAT = [
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Hi there"),
    ChatMessage("assistant", "Hello"),
    ChatMessage("user", "Bye"),
]


@pytest.mark.parametrize("chat_format", ["gemma", "chatml"])
def test_chat_with_a_named_format(tiny_gguf_path: Path, chat_format: str) -> None:
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path, chat_format=chat_format))
    try:
        text, done = run(backend, CHAT, GenerationParams(max_tokens=8, temperature=0.0))
        same_as_raw, _ = run(backend, format_chat(CHAT, chat_format).prompt, GREEDY)
    finally:
        backend.close()
    # The tiny vocabulary has no turn tokens, so the prompt is BOS + its bytes.
    assert done == Done(1 + len(format_chat(CHAT, chat_format).prompt.encode()), 8, "length")
    assert same_as_raw.startswith(text)


def test_chat_uses_the_gguf_template_when_no_format_is_set(tmp_path: Path) -> None:
    template = (
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "[assistant] "
    )
    path = write_tiny_llama_gguf(tmp_path / "templated.gguf", chat_template=template)
    backend = LlamaCppBackend.load(tiny_spec(path))
    try:
        _, done = run(backend, CHAT[1:2], GenerationParams(max_tokens=2))
    finally:
        backend.close()
    rendered = "[user] Hi there\n[assistant] "
    # "<s>" in the template is parsed as the BOS token, and BOS is not added twice.
    assert done == Done(1 + len(rendered), 2, "length")


def test_chat_without_format_or_template_is_a_clear_error(tiny_backend: LlamaCppBackend) -> None:
    with pytest.raises(BackendError, match="chat format"):
        tiny_backend.generate(CHAT, GREEDY, threading.Event())


def test_embeddings_are_normalised_and_count_tokens(tiny_backend: LlamaCppBackend) -> None:
    texts = ["hello", "a rather different text", "hello"]
    result = tiny_backend.embed(texts)
    assert result.prompt_tokens == sum(1 + len(t) for t in texts)
    assert len(result.vectors) == 3
    for vector in result.vectors:
        assert len(vector) == N_EMBD
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-6)
    assert result.vectors[0] == pytest.approx(result.vectors[2], abs=1e-6)
    assert result.vectors[0] != pytest.approx(result.vectors[1], abs=1e-3)
    alone = tiny_backend.embed(["a rather different text"]).vectors[0]
    assert alone == pytest.approx(result.vectors[1], abs=1e-5)


def test_chunked_embeddings_match_plain_llama_cpp(tiny_gguf_path: Path) -> None:
    text = "a text long enough to be decoded in several chunks of eight tokens"
    reference = llama_cpp.Llama(
        model_path=str(tiny_gguf_path), n_ctx=TINY_CONTEXT, embedding=True, verbose=False
    )
    try:
        rows = np.asarray(reference.embed(text))  # this model does not pool: one row per token
    finally:
        reference.close()
    assert rows.shape == (1 + len(text), N_EMBD)
    expected = rows.mean(axis=0) / np.linalg.norm(rows.mean(axis=0))
    backend = LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options={"embedding_batch": 8}))
    try:
        result = backend.embed([text, "hello"])
    finally:
        backend.close()
    assert result.vectors[0] == pytest.approx(expected.tolist(), abs=1e-5)
    assert result.prompt_tokens == 1 + len(text) + 1 + len("hello")


def test_embedding_longer_than_the_context_raises(tiny_backend: LlamaCppBackend) -> None:
    assert len(tiny_backend.embed(["x" * (TINY_CONTEXT - 1)]).vectors) == 1
    with pytest.raises(ContextLengthExceeded):
        tiny_backend.embed(["short", "x" * TINY_CONTEXT])


def test_memory_estimate_counts_weights_and_kv_caches(
    tiny_gguf_path: Path, tiny_backend: LlamaCppBackend
) -> None:
    kv_cache = 2 * N_LAYER * N_EMBD * TINY_CONTEXT * 2  # K and V, f16
    weights = tiny_gguf_path.stat().st_size
    assert tiny_backend.memory_bytes() == weights + kv_cache
    tiny_backend.embed(["hello"])
    assert tiny_backend.memory_bytes() == weights + 2 * kv_cache
    assert tiny_backend.max_concurrency == 1


def test_close_is_idempotent_and_final(tiny_backend: LlamaCppBackend) -> None:
    tiny_backend.embed(["hello"])
    tiny_backend.close()
    tiny_backend.close()
    with pytest.raises(BackendError, match="closed"):
        tiny_backend.generate(PROMPT, GREEDY, threading.Event())
    with pytest.raises(BackendError, match="closed"):
        tiny_backend.embed(["hello"])


def test_the_context_is_released_once_done_is_yielded(tiny_backend: LlamaCppBackend) -> None:
    first = tiny_backend.generate(PROMPT, GenerationParams(max_tokens=3), threading.Event())
    assert isinstance(list(itertools.islice(first, 4))[-1], Done)  # not exhausted
    assert run(tiny_backend, PROMPT, GenerationParams(max_tokens=2))[1].completion_tokens == 2


def test_a_second_generation_in_the_same_thread_waits_its_turn(
        tiny_backend: LlamaCppBackend, greedy_text: str) -> None:
    """One slot: the second request waits for the first, which the engine finishes
    whether or not anyone reads it, so a caller holding both never deadlocks."""
    assert tiny_backend.max_concurrency == 1
    first = tiny_backend.generate(PROMPT, GREEDY, threading.Event())
    assert isinstance(next(first), Delta)
    assert run(tiny_backend, PROMPT, GREEDY) == (greedy_text, Done(PROMPT_TOKENS, 60, "length"))
    assert list(first)[-1] == Done(PROMPT_TOKENS, 60, "length")


def test_load_errors(tiny_gguf_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "secret-dir" / "none.gguf"
    with pytest.raises(BackendError) as caught:
        LlamaCppBackend.load(tiny_spec(missing))
    assert "secret-dir" not in str(caught.value)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file")
    with pytest.raises(BackendError, match="could not load"):
        LlamaCppBackend.load(tiny_spec(garbage))
    with pytest.raises(BackendError, match="unknown llama.cpp options"):
        LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options={"n_gpu_layer": 1}))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(MissingDependency) as missing_dep:
        LlamaCppBackend.load(tiny_spec(tiny_gguf_path))
    assert missing_dep.value.extra == "llama"
    assert "pip install 'edged[llama]'" in str(missing_dep.value)


@pytest.mark.gemma
def test_gemma_chat_and_embeddings(gemma_gguf_path: Path) -> None:
    spec = tiny_spec(
        gemma_gguf_path,
        name="gemma3-270m",
        chat_format="gemma",
        context_length=512,
        threads=None,
    )
    backend = LlamaCppBackend.load(spec)
    try:
        messages = [
            ChatMessage("system", "Answer in one word."),
            ChatMessage("user", "What is the capital of France?"),
        ]
        # Evaluated afresh each time, two greedy runs agree on every CPU. A run that reuses
        # the cached prompt prefix may not, where Gemma's logits nearly tie (AVX-512
        # machines with weight repacking): of that one only properties are asserted.
        params = GenerationParams(max_tokens=24, temperature=0.0, cache_prompt=False)
        text, done = run(backend, messages, params)
        again, _ = run(backend, messages, params)
        cached, cached_done = run(backend, messages, replace(params, cache_prompt=True))
        prompt = format_chat(messages, "gemma").prompt
        expected_prompt = backend._llm.tokenize(prompt.encode(), special=True)  # type: ignore[union-attr]
        assert expected_prompt[:2] == [2, 105]  # <bos> <start_of_turn>
        assert text.strip() and again == text
        assert cached.strip() and cached_done.prompt_tokens == done.prompt_tokens
        assert 0 < cached_done.completion_tokens <= 24
        assert done.prompt_tokens == len(expected_prompt)
        assert 0 < done.completion_tokens <= 24
        assert done.finish_reason == "stop" or done.completion_tokens == 24

        result = backend.embed(["Paris is in France.", "A bowl of soup."])
        assert [len(v) for v in result.vectors] == [640, 640]
        for vector in result.vectors:
            assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-6)
        assert result.prompt_tokens >= 8
    finally:
        backend.close()


def stream_all(stops: tuple[str, ...], pieces: list[bytes]) -> tuple[list[str], bool]:
    """Push ``pieces`` through a StopTextStream the way the token loop does."""
    stream = StopTextStream(stops)
    out = []
    for piece in pieces:
        out.append(stream.push(piece))
        if stream.stopped:
            break
    out.append(stream.finish())
    return out, stream.stopped


def test_text_stream_joins_characters_split_across_tokens() -> None:
    euro = "€".encode()
    out, stopped = stream_all((), [b"a", b"\xc3", b"\xa9", euro[:1], euro[1:2], euro[2:], b"!"])
    assert out == ["a", "", "é", "", "", "€", "!", ""]
    assert not stopped


def test_text_stream_replaces_invalid_and_truncated_bytes() -> None:
    out, _ = stream_all((), [b"ok", b"\xff", b"\xe2\x82"])
    assert "".join(out) == "ok\ufffd\ufffd"


def test_text_stream_stop_across_tokens_and_multibyte() -> None:
    out, stopped = stream_all(("é!",), [b"ab", b"\xc3", b"\xa9", b"!", b"never"])
    assert stopped and "".join(out) == "ab"
    out, stopped = stream_all(("xyz", "bc"), [b"a", b"b", b"cd"])
    assert stopped and out == ["a", "", "", ""]
    # The earliest stop wins when two complete in one piece.
    out, stopped = stream_all(("cd", "bc"), [b"abcd"])
    assert stopped and out == ["a", ""]


def test_text_stream_holds_back_only_possible_stop_prefixes() -> None:
    out, stopped = stream_all(("aab",), [b"a", b"a", b"a", b"c", b"a"])
    assert out == ["", "", "a", "aac", "", "a"]
    assert not stopped


def test_repack_defaults_off_only_where_the_cpu_advertises_amx(tmp_path: Path) -> None:
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert default_repack(amx) is False
    assert default_repack(plain) is True
    assert default_repack(tmp_path / "missing") is True
