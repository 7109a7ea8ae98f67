"""Integration on the real Gemma 3 270M that ``make run`` installs from its PyPI package."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

from edged.devtools.daemon import Daemon

pytestmark = [pytest.mark.gemma, pytest.mark.subprocess]
GEMMA = "gemma3-270m"
DEMO_CONTRIBUTORS = {"national-archives", "library-of-congress", "shakespeare-folio",
                     "mother-goose"}


@pytest.fixture(scope="module")
def gemma_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    node = Daemon(tmp_path_factory.mktemp("gemma") / "data", extra_args=()).start(timeout=120)
    try:
        yield node
    finally:
        node.stop()


def test_demo_model_is_installed_with_the_gemma_chat_format(gemma_daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=gemma_daemon.url + "/v1", api_key="x", max_retries=0)
    assert {GEMMA, "demo-classifier"} <= {m.id for m in client.models.list()}
    manifest = client.get(f"{gemma_daemon.url}/api/models/{GEMMA}", cast_to=object)
    assert isinstance(manifest, dict) and manifest["chat_format"] == "gemma"


def test_gemma_chat_stream_and_embeddings(gemma_daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=gemma_daemon.url + "/v1", api_key="x", max_retries=0,
                           timeout=120)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    # cache_prompt false: each request evaluates its whole prompt afresh, so two greedy runs
    # take the same kernels and agree on every CPU (with prefix reuse they may not where
    # logits nearly tie; see the README).
    fresh = {"cache_prompt": False}
    answer = client.chat.completions.create(model=GEMMA, messages=messages,  # type: ignore
                                            max_tokens=24, temperature=0, extra_body=fresh)
    text = answer.choices[0].message.content or ""
    assert text.strip()  # a 270M base model: its answer is text, not necessarily right
    assert "<end_of_turn>" not in text and "<start_of_turn>" not in text
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 24

    chunks = list(client.chat.completions.create(
        model=GEMMA, messages=messages, max_tokens=24, temperature=0,  # type: ignore
        stream=True, extra_body=fresh))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert (chunks[-1].model_extra or {})["receipt"]["seq"] == \
        (answer.model_extra or {})["receipt"]["seq"] + 1

    vectors = client.embeddings.create(model=GEMMA, input=["Paris is in France", "a cat"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 640
    assert "OK" in gemma_daemon.cli("receipts", "verify").stdout


def test_edged_run_streams_to_the_terminal(gemma_daemon: Daemon, tmp_path: Path) -> None:
    result = gemma_daemon.cli("run", GEMMA, "Say hello.", "--max-tokens", "8",
                              "--temperature", "0")
    assert result.stdout.strip()
    assert "receipt " in result.stderr


def test_first_request_on_the_demo_model_shows_data_attribution(gemma_daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=gemma_daemon.url + "/v1", api_key="x", max_retries=0,
                           timeout=120)
    # The model continues the Declaration verbatim, but which words it picks first may
    # differ between CPUs, and "that all men are created equal" is also in the Gettysburg
    # Address: so the test asserts who may be paid, not who is.
    completion = client.completions.create(model=GEMMA, prompt="We hold these truths to be "
                                           "self-evident,", max_tokens=24, temperature=0)
    receipt_id = (completion.model_extra or {})["receipt"]["id"]
    receipt = client.get(f"{gemma_daemon.url}/v1/receipts/{receipt_id}", cast_to=object)
    assert isinstance(receipt, dict) and receipt["attr"]["method"] == "spans/1"
    data = {p[0]: p[2] for p in receipt["payees"] if p[1] == "data"}
    assert data and sum(data.values()) == 300_000  # the demo model's data share
    evidence = client.get(f"{gemma_daemon.url}/v1/receipts/{receipt_id}/evidence",
                          cast_to=object)
    assert isinstance(evidence, dict)
    spans = evidence["evidence"]["spans"]
    holders = {holder for span in spans for holder in span["by_contributor"]}
    assert spans and set(data) <= holders <= DEMO_CONTRIBUTORS


class City(BaseModel):
    name: str = Field(max_length=40)
    population: int
    coastal: bool


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False}}}


def test_gemma_structured_output_tools_and_logprobs(gemma_daemon: Daemon) -> None:
    """The OpenAI surface on the real model: a schema always parses, a required call is
    always valid, and logprobs come one per token (assert shapes, not words)."""
    client = openai.OpenAI(base_url=gemma_daemon.url + "/v1", api_key="x", max_retries=0,
                           timeout=120)
    messages: list[Any] = [{"role": "user", "content": "Describe Lisbon as JSON."}]
    parsed = client.chat.completions.parse(model=GEMMA, messages=messages, response_format=City,
                                           max_tokens=400, temperature=0)
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and parsed.choices[0].finish_reason == "stop"

    called = client.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL], tool_choice="required", max_tokens=300)  # type: ignore[list-item]
    (call,) = called.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert set(json.loads(call.function.arguments)) == {"city"}  # type: ignore[union-attr]
    assert called.choices[0].finish_reason == "tool_calls"

    scored = client.completions.create(model=GEMMA, prompt="The capital of France is",
                                       max_tokens=5, temperature=0, logprobs=3)
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None and scored.usage is not None
    # One entry per generated token (an end of text before 5 is allowed on any CPU).
    assert 0 < len(logprobs.tokens or []) == scored.usage.completion_tokens <= 5
    assert all(value <= 0 for value in logprobs.token_logprobs or [])
    assert all(len(top) == 3 for top in logprobs.top_logprobs or [])
