"""Federated inference between real ``edged serve`` processes on loopback.

Node A holds no model and routes; C serves ``tiny``; B serves nothing at first, later
``tiny`` too (failover); D serves ``tiny`` and ``dmodel`` but A does not trust it. A
trusts B and C, and they trust A. Sync rounds are only the ones the tests ask for.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from nacl.signing import SigningKey

from attribution import canonical
from attribution.commitments import commit
from attribution.receipt import verify_receipt
from edged.devtools.daemon import Daemon, clean_environment
from edged.devtools.tiny_gguf import install_tiny_llama, write_tiny_llama_gguf
from edged.keys import load_or_create_keys
from edged.manifest import Manifest
from sync.auth import sign_request

pytestmark = pytest.mark.subprocess
CONTEXT = 4096  # long enough for a stream that is still running when its client leaves
PROMPT = "federated hello"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("fed") / "tiny.gguf",
                                 context_length=CONTEXT)


def _key(node: Daemon) -> str:
    key: str = json.loads(node.cli("keys", "show").stdout)["public_key"]
    return key


def _add_model(node: Daemon, model_file: Path, name: str = "tiny") -> None:
    node.cli("models", "add", str(model_file), "--name", name, "--context-length",
             str(CONTEXT), "--chat-format", "chatml")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            model_file: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("cluster")
    names = "abcd"
    nodes = {name: Daemon(root / name / "data") for name in names}
    fleet = Daemon(root / "fleet" / "data", command=("fleet", "serve"), extra_args=())
    base = {"EDGED_FEDERATION": "1", "EDGED_SYNC_INTERVAL": "600"}
    peers = ",".join(nodes[name].url for name in "bcd")
    nodes["a"].env = clean_environment(**base, EDGED_PEERS=peers, EDGED_RELAY_FEE="7",
                                       EDGED_FLEET_URL=fleet.url)
    nodes["b"].env = clean_environment(**base, EDGED_PARALLEL="2")
    nodes["c"].env = clean_environment(**base, EDGED_PARALLEL="4", EDGED_FLEET_URL=fleet.url)
    nodes["d"].env = clean_environment(**base, EDGED_PARALLEL="8")
    try:
        fleet.start()
        for node in nodes.values():
            node.start()
        keys = {name: _key(node) for name, node in nodes.items()}
        fleet_key = fleet.cli("fleet", "key").stdout.strip()
        for name in "ac":  # both push their receipts to the fleet manager
            nodes[name].cli("peers", "trust", fleet_key)
            fleet.cli("fleet", "enroll", keys[name])
        for name in "bc":
            nodes["a"].cli("peers", "trust", keys[name])
        for name in "bcd":  # D trusts A; A does not trust D
            nodes[name].cli("peers", "trust", keys["a"])
        _add_model(nodes["c"], model_file)
        _add_model(nodes["c"], model_file, "private")  # opted out of federation below
        answer = nodes["c"].request_json("PATCH", "/api/models/private", {"federate": False})
        assert answer["status"] == 200 and answer["body"]["federate"] is False, answer
        _add_model(nodes["d"], model_file)
        _add_model(nodes["d"], model_file, "dmodel")
        nodes["a"].cli("sync", "now")
        yield {"nodes": nodes, "keys": keys, "model_file": model_file, "fleet": fleet}
    finally:
        for daemon in (*nodes.values(), fleet):
            daemon.stop()
    for node in (*nodes.values(), fleet):  # nothing of a prompt is logged anywhere
        assert PROMPT not in node.log_path.read_text(errors="replace")


def _client(node: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)


def _receipt(node: Daemon, receipt_id: str) -> dict[str, Any]:
    answer = node.request_json("GET", f"/v1/receipts/{receipt_id}")
    assert answer["status"] == 200, answer
    body: dict[str, Any] = answer["body"]
    return body


def _last_receipt(node: Daemon) -> dict[str, Any]:
    count = node.request_json("GET", "/api/node")["body"]["receipts"]
    page = node.request_json("GET", f"/v1/receipts?after_seq={count - 2}")["body"]
    last: dict[str, Any] = page["data"][-1]
    return last


def _commitment_key(node: Daemon) -> bytes:
    return (node.data_dir / "keys" / "commitment.key").read_bytes()


def test_models_of_trusted_peers_are_listed_as_remote(cluster: dict[str, Any]) -> None:
    nodes, keys = cluster["nodes"], cluster["keys"]
    listed = _client(nodes["a"]).models.list().data
    assert [(m.id, m.model_extra["node"]) for m in listed] == [("tiny", keys["c"])]
    tiny = listed[0].model_extra
    assert tiny["remote"] is True and tiny["kinds"] == ["chat", "completion"]
    assert tiny["free_slots"] == 4 and tiny["queued"] == 0
    manifest = nodes["c"].request_json("GET", "/api/models/tiny")["body"]
    assert tiny["manifest_digest"] == "sha256:" + manifest["digest"]
    assert tiny["weights"] == manifest["weights"]
    # The serving node's own listing is unchanged: its local models only.
    assert [m.id for m in _client(nodes["c"]).models.list().data] == ["private", "tiny"]
    # A model that opts out is neither listed (above) nor routed.
    with pytest.raises(openai.NotFoundError):
        _client(nodes["a"]).completions.create(model="private", prompt=PROMPT, max_tokens=2)


def test_federate_is_written_only_when_false(model_file: Path, tmp_path: Path) -> None:
    """Manifests that do not opt out keep their digests (the field is left out)."""
    manifest = install_tiny_llama(tmp_path, model_file)
    assert "federate" not in manifest.to_dict()
    opted_out = dataclasses.replace(manifest, federate=False)
    assert opted_out.to_dict()["federate"] is False
    assert opted_out.digest() != manifest.digest()
    assert Manifest.from_dict(manifest.to_dict()).digest() == manifest.digest()


def test_model_advertisement_needs_a_trusted_node_signature(cluster: dict[str, Any]) -> None:
    nodes, keys = cluster["nodes"], cluster["keys"]
    c = nodes["c"]
    assert httpx.get(c.url + "/v1/sync/models").status_code == 401
    stranger = SigningKey.generate()
    headers = sign_request(stranger, "GET", "/v1/sync/models", b"", time.time_ns() // 10**6,
                           os.urandom(16), bytes.fromhex(keys["c"]))
    assert httpx.get(c.url + "/v1/sync/models", headers=headers).status_code == 403
    # Signed by a trusted key (A's), but for another audience (node B): refused.
    a_key = load_or_create_keys(nodes["a"].data_dir / "keys").signing_key
    assert bytes(a_key.verify_key).hex() == keys["a"]
    body = json.dumps({"model": "tiny", "prompt": PROMPT, "max_tokens": 1}).encode()
    for audience, status in ((keys["b"], 401), (keys["c"], 200)):
        headers = sign_request(a_key, "POST", "/v1/sync/completions", body,
                               time.time_ns() // 10**6, os.urandom(16), bytes.fromhex(audience))
        answer = httpx.post(c.url + "/v1/sync/completions", content=body, headers=headers)
        assert answer.status_code == status, answer.text
    # The same signed request again is a replay.
    answer = httpx.post(c.url + "/v1/sync/completions", content=body, headers=headers)
    assert answer.status_code == 401
    # A model that opts out is not served to peers, even when asked for by name.
    private = json.dumps({"model": "private", "prompt": PROMPT, "max_tokens": 1}).encode()
    headers = sign_request(a_key, "POST", "/v1/sync/completions", private,
                           time.time_ns() // 10**6, os.urandom(16), bytes.fromhex(keys["c"]))
    answer = httpx.post(c.url + "/v1/sync/completions", content=private, headers=headers)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"


def test_a_chat_request_is_routed_with_receipts_on_both_sides(
        cluster: dict[str, Any]) -> None:
    nodes, keys = cluster["nodes"], cluster["keys"]
    a, c = nodes["a"], nodes["c"]
    messages = [{"role": "user", "content": PROMPT}]
    raw = _client(a).chat.completions.with_raw_response.create(
        model="tiny", messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    answer = raw.parse()
    assert raw.headers["X-Edged-Node"] == keys["c"]
    receipt_ref = answer.model_extra["receipt"]
    assert receipt_ref["node"] == keys["c"]
    assert raw.headers["X-Edged-Receipt"] == receipt_ref["id"]
    text = answer.choices[0].message.content
    assert text
    # The serving node's receipt, fetched through the routing node, is the one C holds.
    serving = _receipt(c, receipt_ref["id"])
    assert serving["kind"] == "chat" and serving["node"] == keys["c"]
    assert _receipt(a, receipt_ref["id"]) == serving
    assert serving["usage"]["out"] == answer.usage.completion_tokens
    # The relay receipt in A's chain: kind relay, naming C's key and receipt.
    relay = _last_receipt(a)
    assert relay["kind"] == "relay" and relay["node"] == keys["a"]
    assert relay["fee"] == 7 and relay["payees"] == [["node:" + keys["a"], "operator", 10**6]]
    assert relay["model"] == serving["model"] and relay["usage"] == serving["usage"]
    link = {"node": keys["c"], "receipt": receipt_ref["id"]}
    assert relay["attr"]["method"] == "relay/1"
    assert relay["attr"]["params"] == hashlib.sha256(canonical.encode(link)).hexdigest()
    evidence = a.request_json("GET", f"/v1/receipts/{relay['id']}/evidence")
    assert evidence["status"] == 200, evidence
    assert evidence["body"]["evidence"] == link
    # A's own keyed commitments, of what it relayed, never the text.
    key = _commitment_key(a)
    assert relay["in"] == commit(key, {"messages": [["user", PROMPT]]}).hex()
    assert relay["out"] == commit(key, {"text": text}).hex()
    verify_receipt(base64.b64decode(relay["raw"]))
    # An auditor on A can check the relay receipt: its link, digests and payee.
    audited = a.cli("receipts", "audit", relay["id"])
    assert audited.returncode == 0 and link["receipt"] in audited.stdout + audited.stderr


def test_a_stream_passes_through_token_by_token(cluster: dict[str, Any]) -> None:
    nodes, keys = cluster["nodes"], cluster["keys"]
    a, c = nodes["a"], nodes["c"]
    request = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}],
               "max_tokens": 16, "temperature": 0}
    routed = list(_client(a).chat.completions.create(**request, stream=True))
    direct = list(_client(c).chat.completions.create(**request, stream=True))
    texts = ["".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
             for chunks in (routed, direct)]
    assert texts[0] == texts[1] and texts[0]
    assert len(routed) == len(direct) > 3  # one event per token, as the serving node sent
    ref = routed[-1].model_extra["receipt"]
    assert ref["node"] == keys["c"]
    assert _receipt(c, ref["id"])["kind"] == "chat"
    relay = _last_receipt(a)
    assert relay["kind"] == "relay"
    assert relay["out"] == commit(_commitment_key(a), {"text": texts[0]}).hex()
    # A completion (not chat) is routed the same way.
    completion = _client(a).completions.create(model="tiny", prompt=PROMPT, max_tokens=5)
    assert completion.model_extra["receipt"]["node"] == keys["c"]


def test_an_untrusted_nodes_model_is_never_used(cluster: dict[str, Any]) -> None:
    nodes = cluster["nodes"]
    a, d = nodes["a"], nodes["d"]
    with pytest.raises(openai.NotFoundError) as caught:
        _client(a).chat.completions.create(
            model="dmodel", messages=[{"role": "user", "content": PROMPT}], max_tokens=2)
    assert caught.value.code == "model_not_found"
    for _ in range(3):  # D advertises tiny with 8 free slots: A still never asks D
        _client(a).completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    assert d.request_json("GET", "/api/node")["body"]["receipts"] == 0


def _slots(node: Daemon) -> dict[str, int] | None:
    slots: dict[str, int] | None = node.request_json("GET", "/api/models/tiny")["body"]["slots"]
    return slots


def test_a_client_that_leaves_cancels_the_generation_on_the_serving_node(
        cluster: dict[str, Any]) -> None:
    nodes = cluster["nodes"]
    a, c = nodes["a"], nodes["c"]
    before = c.request_json("GET", "/api/node")["body"]["receipts"]
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 3800, "stream": True,
            "temperature": 1.0, "seed": 3}
    with httpx.stream("POST", a.url + "/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert _slots(c) == {"busy": 1, "total": 4, "queued": 0}
    deadline = time.monotonic() + 10
    while _slots(c) != {"busy": 0, "total": 4, "queued": 0}:
        assert time.monotonic() < deadline, "the serving node's slot was not freed"
        time.sleep(0.05)
    while c.request_json("GET", "/api/node")["body"]["receipts"] == before:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = _last_receipt(c)
    assert 0 < cancelled["usage"]["out"] < 3800
    relay = _last_receipt(a)
    assert relay["kind"] == "relay"
    evidence = a.request_json("GET", f"/v1/receipts/{relay['id']}/evidence")["body"]
    # The peer never named its receipt (the stream was abandoned): the link says so.
    assert evidence["evidence"] == {"node": cluster["keys"]["c"], "receipt": "00" * 32}


def test_both_chains_verify(cluster: dict[str, Any]) -> None:
    for name in "ac":
        result = cluster["nodes"][name].cli("receipts", "verify")
        assert result.stdout.strip().endswith("OK"), result.stdout


def test_relay_and_serving_receipts_reach_the_fleet(cluster: dict[str, Any]) -> None:
    nodes, keys, fleet = cluster["nodes"], cluster["keys"], cluster["fleet"]
    a, c = nodes["a"], nodes["c"]
    relay = _last_receipt(a)
    assert relay["kind"] == "relay"
    sizes = {}
    for node in (a, c):
        node.cli("sync", "now")
        info = node.request_json("GET", "/api/node")["body"]
        sizes[info["public_key"]] = info["receipts"]
    held = {n["node"]: n["size"] for n in fleet.request_json("GET", "/fleet/nodes")["body"]
            ["nodes"]}
    assert held == sizes
    for origin, seq in ((keys["a"], relay["seq"]), (keys["c"], sizes[keys["c"]] - 1)):
        proof = fleet.request_json("GET", f"/fleet/receipts/{origin}/{seq}/proof")
        assert proof["status"] == 200, proof
    epoch = json.loads(fleet.cli("fleet", "epochs", "--close").stdout)
    relays = [r for r in a.request_json("GET", "/v1/receipts?limit=1000")["body"]["data"]
              if r["kind"] == "relay"]
    assert epoch["receipts"] == sum(sizes.values())
    # C's model is free: the relay fees are the whole total, paid like any fee.
    assert epoch["total"] == 7 * len(relays) > 0


def test_failover_to_the_next_peer_then_503(cluster: dict[str, Any]) -> None:
    nodes, keys = cluster["nodes"], cluster["keys"]
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    _add_model(b, cluster["model_file"])
    a.cli("sync", "now")
    listed = {m.model_extra["node"]: m.model_extra for m in _client(a).models.list().data}
    assert set(listed) == {keys["b"], keys["c"]}
    assert listed[keys["c"]]["free_slots"] > listed[keys["b"]]["free_slots"]
    request = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}],
               "max_tokens": 4}
    raw = _client(a).chat.completions.with_raw_response.create(**request)
    assert raw.headers["X-Edged-Node"] == keys["c"]  # least loaded first
    c.stop()  # still advertised on A: the request fails over to B before any output
    raw = _client(a).chat.completions.with_raw_response.create(**request)
    assert raw.headers["X-Edged-Node"] == keys["b"]
    streamed = list(_client(a).chat.completions.create(**request, stream=True))
    assert streamed[-1].model_extra["receipt"]["node"] == keys["b"]
    b.stop()
    answer = httpx.post(a.url + "/v1/chat/completions", json=request, timeout=30)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "no_peer_available"
