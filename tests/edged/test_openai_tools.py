"""Tool calls with the official ``openai`` client on the tiny GGUF (random weights: a
valid call can only come from the grammar), and the call recogniser on its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, Field

from edged.app import create_app
from edged.devtools.tiny_gguf import byte_token, install_tiny_llama, write_tiny_llama_gguf
from edged.ledger import LEDGER
from edged.openai_requests import ChatBody
from edged.schema import validated
from edged.tools import (
    OPEN,
    CallSplitter,
    Message,
    ToolCall,
    ToolUse,
    find_calls,
    native_messages,
)
from runtimes.chat_formats import TemplateChatFormat
from tests.edged.conftest import AppClientFactory, TinyServed, make_settings, serving_tiny

Client = TestClient[Any, web.Application]
MODEL = "tiny"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12}, "days": {"type": "integer"}},
        "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
ASK: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
Q_ONLY = {str(byte_token(ord("Q"))): 100}


class Lookup(BaseModel):
    """Look a word up."""

    word: str = Field(max_length=8)


@pytest.fixture
async def served(aiohttp_client: AppClientFactory, tmp_path: Path,
                 tiny_model_file: Path) -> AsyncIterator[TinyServed]:
    # Tool descriptions are long in a byte vocabulary: a context beyond the file's 256.
    async with serving_tiny(aiohttp_client, tmp_path, tiny_model_file, 2048) as served:
        yield served


async def test_a_required_call_is_valid_whole_and_streamed(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    _, official = served
    for seed in (None, 1, 2):
        extra = {} if seed is None else {"seed": seed, "temperature": 1.0}
        result = await official.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
            max_tokens=200, **extra)  # type: ignore[arg-type]
        choice = result.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.type == "function" and call.id.startswith("call_")
        arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
        if call.function.name == "get_weather":  # type: ignore[union-attr]
            assert set(arguments) == {"city", "days"} and len(arguments["city"]) <= 12
            assert isinstance(arguments["days"], int)
        else:
            assert call.function.name == "get_time"  # type: ignore[union-attr]
            assert arguments["zone"] in ("UTC", "CET")
    async with official.chat.completions.stream(
            model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
            max_tokens=200) as stream:  # type: ignore[arg-type]
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls or []
    assert streamed.function.name == "get_weather"  # type: ignore[union-attr]
    assert set(json.loads(streamed.function.arguments)) == {  # type: ignore[union-attr]
        "city", "days"}


async def test_a_named_function_and_pydantic_tools(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    _, official = served
    result = await official.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "get_time"}})  # type: ignore[arg-type]
    (call,) = result.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"  # type: ignore[union-attr]
    parsed = await official.chat.completions.parse(
        model=MODEL, messages=ASK, tools=[openai.pydantic_function_tool(Lookup)],
        tool_choice="required", max_tokens=200)
    (looked,) = parsed.choices[0].message.tool_calls or []
    assert isinstance(looked.function.parsed_arguments, Lookup)  # type: ignore[union-attr]


async def test_the_round_trip_and_what_receipts_commit(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    client, official = served
    first = await official.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=200)
    message = first.choices[0].message
    call = (message.tool_calls or [])[0]
    history: list[Any] = [*ASK, message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    before = client.app[LEDGER].head()[0]
    answer = await official.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], max_tokens=15, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert client.app[LEDGER].head()[0] == before + 1

    async def committed_input(**extra: Any) -> str:
        result = await official.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=5, temperature=0, **extra)
        receipt = await client.get(f"/v1/receipts/{(result.model_extra or {})['receipt']['id']}")
        return str((await receipt.json())["in"])

    assert await committed_input() != await committed_input(tools=[WEATHER])
    assert await committed_input(tools=[WEATHER]) != await committed_input(tools=[TIME])


async def test_auto_returns_plain_answers_as_content(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    _, official = served
    result = await official.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=20, temperature=0,
        logit_bias=Q_ONLY)  # never a '{' or '<': never a call
    choice = result.choices[0]
    assert choice.message.tool_calls is None and choice.message.content == "Q" * 20
    assert choice.finish_reason == "length"
    chunks = [chunk async for chunk in await official.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=20, temperature=0,
        logit_bias=Q_ONLY, stream=True)]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "logprobs": True}, "logprobs"),
])
async def test_bad_tool_requests_are_400_and_bill_nothing(
        served: tuple[Client, openai.AsyncOpenAI], extra: dict[str, Any], param: str) -> None:
    client, official = served
    before = client.app[LEDGER].head()[0]
    with pytest.raises(openai.BadRequestError) as refused:
        await official.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5,
                                               **extra)
    assert refused.value.body["param"] == param  # type: ignore[index]
    assert client.app[LEDGER].head()[0] == before


async def test_a_tool_message_needs_its_call_id(
        served: tuple[Client, openai.AsyncOpenAI]) -> None:
    _, official = served
    with pytest.raises(openai.BadRequestError) as refused:
        await official.chat.completions.create(
            model=MODEL, max_tokens=5, messages=[*ASK, {"role": "tool", "content": "x"}])
    assert refused.value.body["param"] == "messages[1].tool_call_id"  # type: ignore[index]


def use_of(*tools: dict[str, Any]) -> ToolUse:
    """The tools of a chat body, as the parser makes them."""
    body = validated(ChatBody, {"model": MODEL, "messages": ASK, "tools": list(tools)})
    use = body.request(default_max_tokens=1).tools
    assert use is not None
    return use


def test_calls_are_found_in_blocks_or_as_a_whole_answer() -> None:
    use = use_of(WEATHER)
    content, calls = find_calls(
        f'Let me check. {OPEN}{{"name": "get_weather", "arguments": {{"city": "Oslo", '
        f'"days": 2}}}}</tool_call>', use)
    assert content == "Let me check." and [c.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Oslo", "days": 2}
    assert find_calls('{"name": "get_weather", "parameters": {"city": "B"}}', use)[0] is None
    for text in ('{"name": "other", "arguments": {}}', f"{OPEN}not json</tool_call>",
                 "plain words", '{"name": "get_weather", "arguments": 3}'):
        assert find_calls(text, use) == (text, [])


def test_the_splitter_streams_content_and_holds_back_calls() -> None:
    splitter = CallSplitter(use_of(WEATHER))
    call = '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}'
    pieces = ["Sure", ", a < b ", "<tool", "_call>", call, "</tool_call>"]
    assert [splitter.push(p) for p in pieces] == ["Sure", ", a < b ", "", "", "", ""]
    tail, calls = splitter.finish()
    assert tail == "" and [c.name for c in calls] == ["get_weather"]
    plain = CallSplitter(use_of(WEATHER))
    streamed = "".join(plain.push(p) for p in ["x <", "to", "y"])
    assert streamed + plain.finish()[0] == "x <toy" and plain.finish()[1] == []
    almost = CallSplitter(use_of(WEATHER))
    held = "".join(almost.push(p) for p in ["{", '"a": 1}'])
    assert held == "" and almost.finish() == ('{"a": 1}', [])


TOOL_TEMPLATE = (
    "{%- if tools %}<tools>{{ tools | tojson }}</tools>{% endif -%}"
    "{%- for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>"
    "{%- endfor %}{% if m.tool_call_id %}[{{ m.tool_call_id }}]{% endif %}{% endfor -%}"
    "<|assistant|>")


async def test_a_template_that_renders_tools_gets_them_natively(
        aiohttp_client: AppClientFactory, tmp_path: Path) -> None:
    """The GGUF's own template renders the tools and tool turns (no fallback text), and a
    required call is still grammar-constrained."""
    model_file = write_tiny_llama_gguf(tmp_path / "tools.gguf", chat_template=TOOL_TEMPLATE)
    data_dir = tmp_path / "data"
    install_tiny_llama(data_dir, model_file, chat_format=None, context_length=2048)
    client = await aiohttp_client(create_app(make_settings(data_dir), runtimes=("llama.cpp",)))
    official = await asyncio.to_thread(openai.AsyncOpenAI, base_url=str(client.make_url(
        "/v1")), api_key="unused", max_retries=0)
    try:
        called = await official.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
            max_tokens=200)
        (call,) = called.choices[0].message.tool_calls or []
        history: list[Any] = [*ASK, called.choices[0].message.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]

        async def prompt_tokens(messages: list[Any], **extra: Any) -> int:
            result = await official.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=1, **extra)
            assert result.usage is not None
            return result.usage.prompt_tokens

        plain = await prompt_tokens(ASK)
        without_tools = await prompt_tokens(history, tools=[WEATHER], tool_choice="none")
        native = await prompt_tokens(history, tools=[WEATHER])
    finally:
        await official.close()
    asked = (Message("user", ASK[0]["content"]),)
    answered = (*asked, Message("assistant", "", (ToolCall(
        call.id, call.function.name, call.function.arguments),)),  # type: ignore[union-attr]
        Message("tool", "sunny", (), call.id))
    use = use_of(WEATHER)
    # One token per byte: the counts differ exactly as the template's renderings do.
    assert without_tools - plain == rendered_bytes(answered) - rendered_bytes(asked)
    assert native - plain == rendered_bytes(answered, use.openai()) - rendered_bytes(asked)


def rendered_bytes(messages: tuple[Message, ...], tools: tuple[Any, ...] = ()) -> int:
    """The length of the template's own rendering, in bytes."""
    template = TemplateChatFormat(TOOL_TEMPLATE, bos_token="", eos_token="")
    return len(template(native_messages(messages), tools).prompt.encode())
