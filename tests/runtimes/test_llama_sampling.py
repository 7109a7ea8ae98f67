"""Per-request sampling on the tiny GGUF: grammar, logit bias, penalties, top-k and
logprobs, through the batched engine's native sampler chains."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from edged.devtools.tiny_gguf import N_VOCAB, byte_token
from runtimes.base import Delta, Done, GenerationParams, InvalidInput
from runtimes.llama_cpp import LlamaCppBackend
from runtimes.llama_sampling import MAX_TOP_LOGPROBS
from tests.runtimes.conftest import tiny_spec

PROMPT = "hello"
GREEDY = GenerationParams(max_tokens=60, temperature=0.0)
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "boolean"},
                                                    "maxItems": 3}},
          "required": ["name", "age", "tags"], "additionalProperties": False}


@pytest.fixture(scope="module")
def backend(tiny_gguf_path: Path) -> Iterator[LlamaCppBackend]:
    loaded = LlamaCppBackend.load(tiny_spec(tiny_gguf_path, options={"parallel": 2}))
    yield loaded
    loaded.close()


def run(backend: LlamaCppBackend, params: GenerationParams,
        prompt: str = PROMPT) -> tuple[str, Done, list[Delta]]:
    events = list(backend.generate(prompt, params, threading.Event()))
    done = events[-1]
    assert isinstance(done, Done)
    deltas = [e for e in events if isinstance(e, Delta)]
    return "".join(d.text for d in deltas), done, deltas


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_a_json_schema_grammar_makes_a_random_model_emit_valid_json(
        backend: LlamaCppBackend, seed: int | None) -> None:
    """The tiny model's weights are random: only the grammar can make this JSON."""
    params = GenerationParams(max_tokens=200, temperature=0.0 if seed is None else 1.0,
                              seed=seed, grammar=json_schema_to_gbnf(json.dumps(SCHEMA)))
    text, done, _ = run(backend, params)
    assert done.finish_reason == "stop"  # the grammar ended it, not the token limit
    value = json.loads(text)
    assert set(value) == {"name", "age", "tags"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert isinstance(value["age"], int) and not isinstance(value["age"], bool)
    assert all(isinstance(tag, bool) for tag in value["tags"]) and len(value["tags"]) <= 3


def test_the_generic_json_grammar_and_a_choice_grammar(backend: LlamaCppBackend) -> None:
    # Any JSON may go on for ever (a string never closed): what there is must be a
    # JSON value's beginning, and it starts the way JSON_GBNF's root (an object) does.
    text, _, _ = run(backend, GenerationParams(max_tokens=40, temperature=0.0,
                                               grammar=JSON_GBNF))
    assert text.startswith("{")
    for seed in range(4):
        choice = GenerationParams(max_tokens=20, temperature=1.0, seed=seed,
                                  grammar='root ::= "yes" | "no"')
        assert run(backend, choice)[0] in ("yes", "no")


def test_a_bad_grammar_or_bias_is_refused_before_anything_runs(
        backend: LlamaCppBackend) -> None:
    with pytest.raises(InvalidInput) as bad_grammar:
        backend.generate(PROMPT, GenerationParams(grammar="root ::= ("), threading.Event())
    assert bad_grammar.value.param == "response_format"
    with pytest.raises(InvalidInput) as bad_token:
        backend.generate(PROMPT, GenerationParams(logit_bias=((N_VOCAB, 1.0),)),
                         threading.Event())
    assert bad_token.value.param == "logit_bias"
    with pytest.raises(InvalidInput) as too_many:
        backend.generate(PROMPT, GenerationParams(logprobs=MAX_TOP_LOGPROBS + 1),
                         threading.Event())
    assert too_many.value.param == "top_logprobs"
    assert run(backend, GenerationParams(max_tokens=3))[1].completion_tokens == 3  # still serves


def test_logit_bias_steers_and_top_k_one_is_greedy(backend: LlamaCppBackend) -> None:
    greedy = run(backend, GREEDY)[0]
    forced = GenerationParams(max_tokens=20, temperature=0.0,
                              logit_bias=((byte_token(ord("Z")), 100.0),))
    assert run(backend, forced)[0] == "Z" * 20
    banned = GenerationParams(max_tokens=60, temperature=0.0,
                              logit_bias=((byte_token(ord(greedy[0])), -100.0),))
    assert run(backend, banned)[0][0] != greedy[0]
    top_one = GenerationParams(max_tokens=60, temperature=1.5, seed=7, top_k=1)
    assert run(backend, top_one)[0] == greedy


@pytest.mark.parametrize("penalty", [
    {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repeat_penalty": 3.0}])
def test_penalties_make_a_repetitive_greedy_output_more_varied(
        backend: LlamaCppBackend, penalty: dict[str, float]) -> None:
    greedy = run(backend, GREEDY)[0]
    penalised = run(backend, GenerationParams(max_tokens=60, temperature=0.0,
                                              **penalty))[0]  # type: ignore[arg-type]
    assert penalised != greedy
    assert len(set(penalised)) > len(set(greedy))


def test_logprobs_come_one_per_token_with_the_top_alternatives(
        backend: LlamaCppBackend) -> None:
    text, done, deltas = run(backend, GenerationParams(max_tokens=30, temperature=0.0,
                                                       logprobs=3))
    assert text == run(backend, GenerationParams(max_tokens=30, temperature=0.0))[0]
    entries = [entry for delta in deltas for entry in delta.logprobs]
    assert all(len(delta.logprobs) == delta.tokens for delta in deltas)
    assert len(entries) == done.completion_tokens == 30
    assert b"".join(entry.token for entry in entries).decode() == text
    for entry in entries:
        assert len(entry.top) == 3
        values = [value for _, value in entry.top]
        assert values == sorted(values, reverse=True) and values[0] <= 0.0
        assert sum(math.exp(value) for value in values) <= 1.0 + 1e-6
        # Greedy picks the most likely token: it heads its own top list.
        assert entry.top[0] == (entry.token, pytest.approx(entry.logprob))
    # logprobs=0: each token's own log-probability, no alternatives.
    _, _, plain = run(backend, GenerationParams(max_tokens=5, temperature=0.0, logprobs=0))
    assert all(entry.top == () for delta in plain for entry in delta.logprobs)
    # Without logprobs nothing is computed or sent.
    _, _, none = run(backend, GenerationParams(max_tokens=5, temperature=0.0))
    assert all(delta.logprobs == () for delta in none)
