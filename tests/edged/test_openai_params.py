"""Strict request fields on /v1/chat/completions, /v1/completions and /v1/embeddings.

A field edged does not implement is a 400 naming it, never a silently ignored (and
billed) request; the fields the official ``openai`` client sends for what edged does
are accepted. Driven by the official client against a real app on the tiny GGUF.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged.app import create_app
from edged.devtools.tiny_gguf import install_tiny_llama
from edged.errors import InvalidRequest
from edged.ledger import LEDGER
from edged.manifest import RUNTIMES
from edged.openai_requests import ChatBody, CompletionBody, EmbeddingBody
from edged.schema import Body, refused_fields, validated
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, make_settings

Client = TestClient[Any, web.Application]
MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "hello"}]
TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {
    "name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}


@dataclass
class Served:
    app_client: Client
    official: openai.AsyncOpenAI

    def receipts(self) -> int:
        return self.app_client.app[LEDGER].head()[0]

    async def create(self, endpoint: str, fields: dict[str, Any],
                     stream: bool = False) -> Any:
        """One request through the official client; a field its ``create`` has no
        argument for travels in ``extra_body``, as an application would send it."""
        if endpoint == "chat":
            method: Any = self.official.chat.completions.create
            base: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4,
                                    "temperature": 0, "stream": stream}
        elif endpoint == "completions":
            method = self.official.completions.create
            base = {"model": MODEL, "prompt": "abc", "max_tokens": 4, "temperature": 0,
                    "stream": stream}
        else:
            method = self.official.embeddings.create
            base = {"model": MODEL, "input": ["a", "bb"]}
        known = inspect.signature(method).parameters
        kwargs = {**base, **{k: v for k, v in fields.items() if k in known}}
        extra = {k: v for k, v in fields.items() if k not in known}
        result = await method(**kwargs, extra_body=extra or None)
        if stream:
            return [chunk async for chunk in result]
        return result


@pytest.fixture
async def served(aiohttp_client: AppClientFactory, tmp_path: Path,
                 tiny_model_file: Path) -> AsyncIterator[Served]:
    data_dir = tmp_path / "data"
    install_tiny_llama(data_dir, tiny_model_file, chat_format="chatml")
    app_client = await aiohttp_client(create_app(make_settings(data_dir), runtimes=RUNTIMES))
    # Made off the loop: the client loads the system's CA certificates (tens of ms).
    official = await asyncio.to_thread(openai.AsyncOpenAI, base_url=str(app_client.make_url(
        "/v1")), api_key="unused", max_retries=0)
    try:
        yield Served(app_client, official)
    finally:
        await official.close()


def receipt_of(result: Any) -> str:
    """The receipt id of a whole answer or of a stream's last chunk."""
    last = result[-1] if isinstance(result, list) else result
    receipt: str = (last.model_extra or {})["receipt"]["id"]
    return receipt


# What the hostile client sent, each with a value that asks for real work.
REFUSED = [
    ("chat", "functions", [TOOL["function"]]),
    ("chat", "function_call", "auto"),
    ("chat", "store", True),
    ("chat", "modalities", ["text", "audio"]),
    ("chat", "audio", {"voice": "alloy", "format": "wav"}),
    ("chat", "reasoning_effort", "low"),
    ("chat", "n", 2),
    ("chat", "grammar", "root ::= \"a\""),  # llama-server's extra: unknown here
    ("completions", "echo", True),
    ("completions", "best_of", 2),
    ("completions", "suffix", "}"),
    ("completions", "n", 3),
    ("embeddings", "dimensions", 8),
    ("embeddings", "stream", True),  # a generation field: unknown here
    ("embeddings", "cache_prompt", False),
]


# Values of the wrong type or range: 400 naming the field, also for fields edged accepts.
MALFORMED = [
    ("chat", "n", True, "invalid_request"),
    ("chat", "n", 0, "invalid_request"),
    ("chat", "temperature", "hot", "invalid_request"),
    ("chat", "stop", ["a", "b", "c", "d", "e"], "invalid_request"),
    ("chat", "max_tokens", -1, "invalid_request"),
    ("chat", "max_completion_tokens", 0, "invalid_request"),
    ("chat", "top_p", 0, "invalid_request"),
    ("chat", "seed", "7", "invalid_request"),
    ("chat", "stream_options", {"include_usage": "yes"}, "invalid_request"),
    ("chat", "stream_options", {"include_obfuscation": True}, "unsupported_parameter"),
    ("chat", "user", 5, "invalid_request"),
    ("chat", "metadata", {"k": 1}, "invalid_request"),
    ("chat", "service_tier", "priority", "invalid_request"),
    ("chat", "parallel_tool_calls", "yes", "invalid_request"),
    ("chat", "presence_penalty", "high", "invalid_request"),
    ("chat", "tool_choice", "auto", "invalid_request"),  # no tools given
    ("chat", "tool_choice", {"type": "function", "function": {"name": "get_time"}},
     "invalid_request"),
    ("chat", "presence_penalty", 99, "invalid_request"),
    ("chat", "frequency_penalty", -2.5, "invalid_request"),
    ("chat", "logprobs", "yes", "invalid_request"),
    ("chat", "top_logprobs", 21, "invalid_request"),
    ("chat", "top_logprobs", 2, "invalid_request"),  # without logprobs: true
    ("chat", "logit_bias", {"a": 1}, "invalid_request"),
    ("chat", "logit_bias", {"65": 101}, "invalid_request"),
    ("chat", "top_k", -1, "invalid_request"),
    ("chat", "min_p", 2, "invalid_request"),
    ("chat", "repeat_penalty", "x", "invalid_request"),
    ("chat", "response_format", {"type": "xml"}, "invalid_request"),
    ("chat", "response_format", {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "integer", "minimum": 1}}}, "invalid_request"),
    ("chat", "format", "yaml", "invalid_request"),
    ("completions", "logprobs", 21, "invalid_request"),
    ("completions", "logprobs", True, "invalid_request"),
    ("completions", "n", True, "invalid_request"),
    ("completions", "best_of", True, "unsupported_parameter"),
    ("completions", "echo", 0, "unsupported_parameter"),
    ("completions", "user", ["u"], "invalid_request"),
    ("embeddings", "encoding_format", "int8", "invalid_request"),
    ("embeddings", "user", {"id": 1}, "invalid_request"),
]

CASES = [(endpoint, field, value, stream) for endpoint, field, value in REFUSED
         for stream in (False, True) if not (endpoint == "embeddings" and stream)]


@pytest.mark.parametrize(("endpoint", "field", "value", "stream"), CASES,
                         ids=[f"{e}-{f}-{i}-{'streamed' if s else 'whole'}"
                              for i, (e, f, _, s) in enumerate(CASES)])
async def test_unimplemented_fields_are_refused_naming_the_field_and_bill_nothing(
        served: Served, endpoint: str, field: str, value: Any, stream: bool) -> None:
    before = served.receipts()
    with pytest.raises(openai.BadRequestError) as refused:
        await served.create(endpoint, {field: value}, stream)
    assert refused.value.status_code == 400
    assert refused.value.type == "invalid_request_error"
    assert refused.value.code == "unsupported_parameter"
    assert refused.value.param == field
    assert field in refused.value.message
    assert served.receipts() == before
    # The same request without the field is served and billed: the field alone was refused.
    assert receipt_of(await served.create(endpoint, {}, stream))
    assert served.receipts() == before + 1


@pytest.mark.parametrize(("endpoint", "field", "value", "code"), MALFORMED,
                         ids=[f"{e}-{f}-{i}" for i, (e, f, _, _) in enumerate(MALFORMED)])
async def test_malformed_values_are_400_naming_the_field_and_bill_nothing(
        served: Served, endpoint: str, field: str, value: Any, code: str) -> None:
    before = served.receipts()
    with pytest.raises(openai.BadRequestError) as refused:
        await served.create(endpoint, {field: value})
    assert refused.value.status_code == 400
    assert refused.value.code == code
    # the field, or the place inside it that failed (metadata.k, logit_bias.65)
    assert refused.value.param is not None
    assert re.fullmatch(rf"{field}(\.|\[|$).*", refused.value.param)
    assert served.receipts() == before


ENDPOINT_FIELDS: dict[str, tuple[type[Body], dict[str, Any]]] = {
    # path: (its declaration, the fields it requires)
    "/v1/chat/completions": (ChatBody, {"messages": MESSAGES}),
    "/v1/completions": (CompletionBody, {"prompt": "abc"}),
    "/v1/embeddings": (EmbeddingBody, {"input": "abc"}),
}
DECLARED_REFUSALS = [(path, name) for path, (model, _) in ENDPOINT_FIELDS.items()
                     for name in refused_fields(model)]


@pytest.mark.parametrize(("path", "field"), DECLARED_REFUSALS)
async def test_every_declared_refusal_is_a_400_before_any_work(
        client: Client, path: str, field: str) -> None:
    """Follows the declaration: a name moved from ``refused`` to ``parsed`` leaves this
    list, and a new refusal joins it."""
    body = {"model": FAKE_MODEL, **ENDPOINT_FIELDS[path][1], field: {"probe": True}}
    before = client.app[LEDGER].head()
    response = await client.post(path, json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["param"], error["code"]) == (field, "unsupported_parameter")
    assert client.app[LEDGER].head() == before


async def test_unknown_fields_and_message_fields_are_refused(client: Client) -> None:
    before = client.app[LEDGER].head()
    for body, param in [
        ({"model": FAKE_MODEL, "messages": MESSAGES, "x" * 300: 1}, "x" * 61 + "..."),
        ({"model": FAKE_MODEL, "messages": MESSAGES, "temprature": 0.5}, "temprature"),
        ({"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi", "name": "bob"}]},
         "messages[0].name"),
        ({"model": FAKE_MODEL, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}]},
         "messages[1].tool_calls[0].function"),
        ({"model": FAKE_MODEL, "messages": MESSAGES, "stream": True,
          "stream_options": {"include_usage": True, "chunk_size": 4}},
         "stream_options.chunk_size"),
        ({"model": FAKE_MODEL, "messages": MESSAGES, "max_tokens": 3,
          "max_completion_tokens": 4}, "max_completion_tokens"),
    ]:
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status == 400
        assert (await response.json())["error"]["param"] == param
    assert client.app[LEDGER].head() == before


async def test_what_the_official_client_sends_for_what_edged_does_is_served(
        served: Served) -> None:
    before = served.receipts()
    accepted: dict[str, Any] = {
        "user": "user-42", "safety_identifier": "hash-of-user", "metadata": {"app": "notes"},
        "store": False, "service_tier": "auto", "parallel_tool_calls": False,
        "prompt_cache_key": "session-1", "max_completion_tokens": 4, "seed": 3, "n": 1,
        "stop": ["\n\n", "###", "User:", "</s>"], "keep_alive": "1m", "cache_prompt": True,
        # Neutral values of refused fields ask for exactly what edged does.
        "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "tools": [],
        "tool_choice": "none", "response_format": {"type": "text"}, "logprobs": False,
        "top_logprobs": 0, "modalities": ["text"], "functions": [],
        # null means "not given", as OpenAI reads it.
        "reasoning_effort": None, "top_k": None}
    whole = await served.create("chat", accepted)
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 4
    chunks = await served.create("chat", {**accepted, "stop": "\n",
                                          "stream_options": {"include_usage": True,
                                                             "include_obfuscation": False}},
                                 stream=True)
    assert chunks[-1].usage.completion_tokens <= 4
    assert receipt_of(whole) != receipt_of(chunks)

    completion_fields: dict[str, Any] = {"user": "u", "seed": 1, "stop": "\n", "n": 1,
                                         "best_of": 1, "echo": False, "logprobs": None,
                                         "suffix": None, "presence_penalty": 0}
    completion = await served.create("completions", completion_fields)
    streamed = await served.create("completions", {**completion_fields, "stream_options": {
        "include_usage": True}}, stream=True)
    assert completion.usage.completion_tokens <= 4 and streamed[-1].usage is not None

    vectors = await served.create("embeddings", {"user": "u"})  # the client asks for base64
    floats = await served.create("embeddings", {"encoding_format": "float",
                                                "dimensions": None})
    assert len(vectors.data) == len(floats.data) == 2
    assert vectors.data[1].embedding == pytest.approx(floats.data[1].embedding, rel=1e-6)
    assert served.receipts() == before + 6


async def test_max_completion_tokens_is_max_tokens(client: Client) -> None:
    """The fake runtime always runs to the limit, so the count shows which limit held."""
    for body in ({"max_completion_tokens": 3}, {"max_completion_tokens": 3, "max_tokens": 3}):
        response = await client.post("/v1/chat/completions", json={
            "model": FAKE_MODEL, "messages": MESSAGES, **body})
        answer = await response.json()
        assert answer["usage"]["completion_tokens"] == 3
        assert answer["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/receipts"])
async def test_listing_routes_take_no_body(client: Client, path: str) -> None:
    before = client.app[LEDGER].head()
    response = await client.post(path, json={"model": FAKE_MODEL, "tools": [TOOL]})
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    assert client.app[LEDGER].head() == before


async def test_an_unknown_role_is_named_but_never_repeated(client: Client) -> None:
    """Pydantic's own message quotes the tag it got; a role can be a pasted prompt."""
    response = await client.post("/v1/chat/completions", json={
        "model": FAKE_MODEL, "messages": [{"role": "my secret text", "content": "hi"}]})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == "messages[0].role"
    assert "secret" not in error["message"] and "user" in error["message"]


@pytest.mark.parametrize(("keep_alive", "seconds"), [
    ("5m", 300.0), (" 5m ", 300.0), ("1.5h", 5400.0), ("250ms", 0.25), (30, 30.0), ("-1", -1.0),
    (10**12, -1.0)])
def test_keep_alive_is_seconds_or_an_ollama_duration(keep_alive: Any, seconds: float) -> None:
    body = {"model": FAKE_MODEL, "prompt": "x", "keep_alive": keep_alive}
    parsed = validated(CompletionBody, body).request(default_max_tokens=1)
    assert parsed.keep_alive == seconds


@pytest.mark.parametrize("keep_alive", ["soon", " ", "5 m", True, [5]])
def test_anything_else_as_keep_alive_is_a_400_naming_it(keep_alive: Any) -> None:
    body = {"model": FAKE_MODEL, "prompt": "x", "keep_alive": keep_alive}
    with pytest.raises(InvalidRequest) as refused:
        validated(CompletionBody, body).request(default_max_tokens=1)
    assert refused.value.param == "keep_alive"
    assert "^" not in refused.value.message  # says what a duration is, not a regex
