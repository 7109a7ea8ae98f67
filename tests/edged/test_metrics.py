"""GET /metrics on a node: every family after real traffic (the tiny GGUF on llama.cpp, a
receipt, a sync round with a second node), the API key rule, and no request content in
any label."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edged.app import create_app
from edged.devtools.tiny_gguf import install_tiny_llama
from edged.exchange import EXCHANGE
from edged.keys import NODE_KEYS
from edged.ledger import LEDGER
from edged.manifest import RUNTIMES
from edged.peers import PEERS
from tests.edged.conftest import (
    FAKE_MODEL,
    AppClientFactory,
    fake_loader,
    install_fake_model,
    make_settings,
)
from tests.support.waiting import wait_until

Client = TestClient[Any, web.Application]
Samples = dict[str, list[tuple[dict[str, str], float]]]
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 6, "temperature": 0}
CANARY = "CANARY-91be-metrics-must-not-label"
API_KEY = "metrics-test-key"
UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1: the exchange fails at once

NODE_FAMILIES = {
    "edged_http_requests": "counter",
    "edged_http_request_duration_seconds": "histogram",
    "edged_time_to_first_token_seconds": "histogram",
    "edged_inter_token_latency_seconds": "histogram",
    "edged_prompt_tokens": "counter",
    "edged_completion_tokens": "counter",
    "edged_receipts_committed": "counter",
    "edged_ledger_commit_seconds": "histogram",
    "edged_checkpoint_size": "gauge",
    "edged_model_loaded": "gauge",
    "edged_model_queue_depth": "gauge",
    "edged_model_slots_busy": "gauge",
    "edged_model_slots": "gauge",
    "edged_model_memory_bytes": "gauge",
    "edged_model_device_memory_bytes": "gauge",
    "edged_sync_rounds": "counter",
    "edged_sync_failures": "counter",
    "edged_sync_consecutive_failures": "gauge",
    "edged_sync_receipts": "counter",
    "edged_sync_lag_seconds": "gauge",
}


async def scrape(client: Client, headers: dict[str, str] | None = None) -> tuple[str, Samples]:
    """The exposition text, and every sample by name (as the parser names them)."""
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    samples["__types__"] = [(types, 0.0)]
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for sample_labels, v in samples.get(name, [])
             if labels.items() <= sample_labels.items()]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


async def tiny_node(aiohttp_client: AppClientFactory, data_dir: Path,
                    model_file: Path) -> Client:
    install_tiny_llama(data_dir, model_file, chat_format="chatml")
    return await aiohttp_client(create_app(make_settings(data_dir, sync_interval=3600.0),
                                           runtimes=RUNTIMES))


async def test_every_node_family_moves_after_real_traffic(
        aiohttp_client: AppClientFactory, tmp_path: Path, tiny_model_file: Path) -> None:
    node = await tiny_node(aiohttp_client, tmp_path / "node", tiny_model_file)
    peer = await tiny_node(aiohttp_client, tmp_path / "peer", tiny_model_file)

    plain = await node.post("/v1/chat/completions", json=CHAT)
    assert plain.status == 200, await plain.text()
    usage = (await plain.json())["usage"]
    embedded = await node.post("/v1/embeddings", json={"model": "tiny", "input": "two words"})
    assert embedded.status == 200

    streamed = await node.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert streamed.status == 200 and b"[DONE]" in await streamed.read()

    # The peer serves one request; the node pulls it (both trust each other).
    assert (await peer.post("/v1/completions", json={"model": "tiny", "prompt": "hi",
                                                     "max_tokens": 2})).status == 200
    node.app[PEERS].trust(peer.app[NODE_KEYS].public_key.hex())
    peer.app[PEERS].trust(node.app[NODE_KEYS].public_key.hex())
    peer_url = str(peer.make_url("")).rstrip("/")
    results = await node.app[EXCHANGE].sync_round([peer_url, UNREACHABLE])
    assert results[peer_url] == "ok: 1 new" and results[UNREACHABLE].startswith("error")
    assert (await node.get("/v1/sync/checkpoint")).status == 200  # cuts one of every receipt

    text, samples = await scrape(node)
    types = samples["__types__"][0][0]
    for name, kind in NODE_FAMILIES.items():
        assert types.get(name) == kind, (name, types.get(name))

    assert value(samples, "edged_http_requests_total", route_group="openai", model="tiny",
                 status="200") == 3
    assert value(samples, "edged_http_requests_total", route_group="sync", model="",
                 status="200") == 1
    assert value(samples, "edged_http_request_duration_seconds_count",
                 route_group="openai") == 3
    assert value(samples, "edged_time_to_first_token_seconds_count", model="tiny") == 2
    generated = usage["completion_tokens"]
    assert generated > 1
    assert value(samples, "edged_inter_token_latency_seconds_count", model="tiny") > 0
    assert value(samples, "edged_prompt_tokens_total", model="tiny") > usage["prompt_tokens"]
    assert value(samples, "edged_completion_tokens_total", model="tiny") > generated
    assert value(samples, "edged_receipts_committed_total", model="tiny", kind="chat") == 2
    assert value(samples, "edged_receipts_committed_total", model="tiny", kind="embedding") == 1
    assert value(samples, "edged_ledger_commit_seconds_count") >= 1
    assert value(samples, "edged_checkpoint_size") == node.app[LEDGER].count() == 3

    assert value(samples, "edged_model_loaded", model="tiny", runtime="llama.cpp") == 1
    assert value(samples, "edged_model_slots_busy", model="tiny") == 0
    assert value(samples, "edged_model_queue_depth", model="tiny") == 0
    assert value(samples, "edged_model_slots", model="tiny") >= 1
    assert value(samples, "edged_model_memory_bytes", model="tiny") > 0
    assert value(samples, "edged_model_device_memory_bytes", model="tiny") >= 0

    fingerprint = peer.app[NODE_KEYS].fingerprint
    assert value(samples, "edged_sync_rounds_total", peer=fingerprint, direction="pull") == 1
    assert value(samples, "edged_sync_failures_total", peer=fingerprint) == 0
    assert value(samples, "edged_sync_receipts_total", peer=fingerprint) == 1
    assert value(samples, "edged_sync_lag_seconds", peer=fingerprint) >= 0
    assert value(samples, "edged_sync_failures_total", peer=UNREACHABLE) == 1
    assert value(samples, "edged_sync_consecutive_failures", peer=UNREACHABLE) == 1
    assert not [labels for labels, _ in samples["edged_sync_lag_seconds"]
                if labels["peer"] == UNREACHABLE]  # it never answered
    assert "hello there" not in text


async def test_metrics_need_the_api_key_and_never_label_request_content(
        aiohttp_client: AppClientFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    install_fake_model(data_dir)
    client = await aiohttp_client(create_app(
        make_settings(data_dir, api_keys=(API_KEY,)), runtimes=RUNTIMES,
        loader=fake_loader(echo=True)))  # the echoing fake puts the canary in the output too
    auth = {"Authorization": f"Bearer {API_KEY}"}

    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status == 401

    chat = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": CANARY}],
            "max_tokens": 4}
    answered = await client.post("/v1/chat/completions", json=chat, headers=auth)
    assert answered.status == 200 and CANARY in json.dumps(await answered.json())
    streamed = await client.post("/v1/chat/completions", json={**chat, "stream": True},
                                 headers=auth)
    assert streamed.status == 200 and CANARY in await streamed.text()
    unknown = await client.post("/v1/chat/completions", json={**chat, "model": CANARY},
                                headers=auth)
    assert unknown.status == 404
    for path in (f"/api/models/{CANARY}", f"/v1/{CANARY}", f"/v2/models/{CANARY}/ready"):
        assert (await client.get(path, headers=auth)).status == 404

    text, samples = await scrape(client, auth)
    assert CANARY not in text
    assert value(samples, "edged_http_requests_total", route_group="openai", model=FAKE_MODEL,
                 status="200") == 2
    # The made-up model names and paths count, without their names.
    assert value(samples, "edged_http_requests_total", route_group="openai", model="",
                 status="404") == 2
    assert value(samples, "edged_http_requests_total", route_group="v2", model="",
                 status="404") == 1
    assert value(samples, "edged_http_requests_total", route_group="other", model="",
                 status="401") == 2


async def test_busy_slots_and_the_queue_are_read_at_scrape_time(
        aiohttp_client: AppClientFactory, tmp_path: Path) -> None:
    """One slot (the fake runtime's default), a slow generation holding it, a second
    request waiting: the scrape sees both, and both gauges fall back once they end."""
    data_dir = tmp_path / "data"
    install_fake_model(data_dir)
    client = await aiohttp_client(create_app(make_settings(data_dir), runtimes=RUNTIMES,
                                             loader=fake_loader(token_delay=0.05)))
    slow = {"model": FAKE_MODEL, "prompt": "a b c", "max_tokens": 200, "stream": True}

    async def gauges() -> tuple[float, float]:
        _, samples = await scrape(client)
        return (value(samples, "edged_model_slots_busy", model=FAKE_MODEL),
                value(samples, "edged_model_queue_depth", model=FAKE_MODEL))

    async with client.post("/v1/completions", json=slow) as holder:
        await holder.content.readline()  # generating: the slot is held
        waiting = asyncio.create_task(client.post("/v1/completions", json={
            **slow, "stream": False, "max_tokens": 1}))
        assert await wait_until(lambda: _equals(gauges(), (1, 1)), what="busy and queued")
        holder.close()  # the client leaves: the generation stops, the slot passes on
    response = await waiting
    assert response.status == 200
    assert await wait_until(lambda: _equals(gauges(), (0, 0)), what="idle")


async def _equals(pending: Awaitable[object], expected: object) -> bool:
    return await pending == expected
