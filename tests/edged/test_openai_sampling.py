"""Structured outputs, logprobs, penalties and logit bias through /v1 with the official
``openai`` client, on the tiny GGUF: its weights are random, so valid JSON can only come
from the grammar, and every property asserted holds on any CPU."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, Field

from edged.devtools.tiny_gguf import byte_token
from edged.ledger import LEDGER
from tests.edged.conftest import TinyServed

Client = TestClient[Any, web.Application]
MODEL = "tiny"
MESSAGES: list[Any] = [{"role": "user", "content": "describe a pet"}]


class Pet(BaseModel):
    name: str = Field(max_length=10)
    legs: int
    tame: bool
    tags: list[bool] = Field(max_length=3)


@pytest.fixture
def served(tiny_served: TinyServed) -> TinyServed:
    return tiny_served


async def test_parse_with_a_pydantic_model_whole_and_streamed(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    _, official = served
    for seed in (None, 1, 2):
        extra = {} if seed is None else {"seed": seed, "temperature": 1.0}
        parsed = await official.chat.completions.parse(
            model=MODEL, messages=MESSAGES, response_format=Pet, max_tokens=300,
            **extra)  # type: ignore[arg-type]
        pet = parsed.choices[0].message.parsed
        assert isinstance(pet, Pet) and len(pet.name) <= 10 and len(pet.tags) <= 3
        assert parsed.choices[0].finish_reason == "stop"
    async with official.chat.completions.stream(
            model=MODEL, messages=MESSAGES, response_format=Pet, max_tokens=300) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Pet)


async def test_json_object_completions_and_ollamas_format(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    client, official = served
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
              "required": ["ok"], "additionalProperties": False}
    for body in ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "ok", "schema": schema}}}, {"format": schema}):
        result = await official.completions.create(model=MODEL, prompt="{", max_tokens=60,
                                                   extra_body=body)
        assert json.loads(result.choices[0].text) in ({"ok": True}, {"ok": False})
    # A schema keyword the grammar cannot enforce: 400 naming the field, nothing billed.
    before = client.app[LEDGER].head()[0]
    with pytest.raises(openai.BadRequestError) as refused:
        await official.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=5, response_format={
                "type": "json_schema", "json_schema": {"name": "n", "schema": {
                    "type": "integer", "maximum": 3}}})
    assert refused.value.body["param"] == "response_format"  # type: ignore[index]
    assert "maximum" in refused.value.body["message"]  # type: ignore[index]
    assert client.app[LEDGER].head()[0] == before


async def test_the_grammar_is_part_of_the_committed_input(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    client, official = served

    async def input_commitment(**extra: Any) -> str:
        result = await official.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0, **extra)
        receipt_id = (result.model_extra or {})["receipt"]["id"]
        response = await client.get(f"/v1/receipts/{receipt_id}")
        return str((await response.json())["in"])

    plain = await input_commitment()
    assert plain == await input_commitment()  # same input, same commitment
    assert plain != await input_commitment(response_format={"type": "json_object"})


async def test_chat_logprobs_whole_and_streamed(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    _, official = served
    result = await official.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True,
        top_logprobs=3)
    choice = result.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == result.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(item.token for item in content) == choice.message.content
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert bytes(item.bytes or []).decode() == item.token
        assert item.top_logprobs[0].token == item.token  # greedy: the most likely
    streamed = [chunk async for chunk in await official.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True,
        top_logprobs=3, stream=True)]
    items = [item for chunk in streamed if chunk.choices and chunk.choices[0].logprobs
             for item in chunk.choices[0].logprobs.content or []]
    # The same tokens; log-probabilities to rounding (a reused prompt prefix is evaluated
    # by other kernels than a fresh one).
    assert [i.token for i in items] == [i.token for i in content]
    assert [i.logprob for i in items] == pytest.approx([i.logprob for i in content], abs=0.01)


async def test_completion_logprobs_in_the_legacy_shape(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    _, official = served
    result = await official.completions.create(model=MODEL, prompt="hello", max_tokens=10,
                                               temperature=0, logprobs=2)
    choice = result.choices[0]
    assert choice.logprobs is not None
    tokens = choice.logprobs.tokens or []
    assert "".join(tokens) == choice.text and len(tokens) == 10
    assert choice.logprobs.text_offset == [sum(map(len, tokens[:i])) for i in range(10)]
    for token, top in zip(tokens, choice.logprobs.top_logprobs or [], strict=True):
        assert len(top) == 2 and token in top


async def test_logit_bias_and_penalties_change_the_answer(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    _, official = served

    async def text(**extra: Any) -> str:
        result = await official.completions.create(model=MODEL, prompt="hello", max_tokens=40,
                                                   temperature=0, **extra)
        return result.choices[0].text

    greedy = await text()
    assert await text(logit_bias={str(byte_token(ord("Z"))): 100}) == "Z" * 40
    varied = await text(frequency_penalty=2.0)
    assert varied != greedy and len(set(varied)) > len(set(greedy))
    assert await text(extra_body={"top_k": 1, "temperature": 1.5, "seed": 3}) == greedy
