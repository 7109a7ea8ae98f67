"""``edged receipts audit``: the real CLI against a real app recomputes a receipt's split
from its evidence and the data as it was, for spans/1, influence/1 and owner/1, and
fails, naming the difference, on a changed datanet, changed examples, changed operator
settings or a forged split."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from click.testing import CliRunner, Result

import edged.attributor
from attribution.spans import SpanAttribution
from edged.app import create_app
from edged.cli.main import main
from edged.manifest import RUNTIMES
from edged.settings import Settings
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader
from tests.edged.http.test_oip import MODEL, install_onnx_model, tensor
from tests.edged.test_influence_api import LAYER, _examples

Client = TestClient[Any, web.Application]
REQUEST = {"model": FAKE_MODEL, "prompt": "tell me", "max_tokens": 12, "temperature": 0}


async def audit(client: Client, data_dir: Path, receipt_id: str) -> Result:
    """``edged receipts audit ID`` against the test server, in a thread."""
    url = str(client.make_url("")).rstrip("/")
    return await asyncio.to_thread(CliRunner().invoke, main, [
        "--url", url, "--data-dir", str(data_dir), "receipts", "audit", receipt_id])


async def completion(client: Client) -> tuple[str, str]:
    """A completion's receipt id and its text."""
    answer = await (await client.post("/v1/completions", json=REQUEST)).json()
    return answer["receipt"]["id"], answer["choices"][0]["text"]


async def upload(client: Client, datanet: str, contributor: str,
                 documents: list[tuple[str, str]]) -> None:
    body = b"".join(json.dumps({"id": i, "text": t}).encode() + b"\n" for i, t in documents)
    response = await client.post(f"/api/datanets/{datanet}/documents",
                                 params={"contributor": contributor}, data=body)
    assert response.status == 201, await response.text()


async def spans_model(client: Client, policy: str) -> str:
    """A datanet under ``policy`` where alice holds the model's answer, copier a copy and
    bob something else; the model attributes to it. The answer's text."""
    _, text = await completion(client)
    created = await client.post("/api/datanets", json={"name": policy, "duplicates": policy})
    assert created.status == 201
    await upload(client, policy, "alice", [("a", f"long ago {text} and then")])
    await upload(client, policy, "copier", [("c", f"LONG AGO {text.upper()} AND THEN")])
    await upload(client, policy, "bob", [("b", "the mill wheel turns slowly at dawn today")])
    update = await client.patch(f"/api/models/{FAKE_MODEL}",
                                json={"datanets": [policy], "data_share_ppm": 500_000})
    assert update.status == 200, await update.text()
    return text


@pytest.mark.parametrize(("policy", "holders"), [("split", "alice, copier"),
                                                 ("first", "alice")])
async def test_a_spans_receipt_is_reproduced_and_a_changed_datanet_is_reported(
        aiohttp_client: AppClientFactory, settings: Settings, policy: str,
        holders: str) -> None:
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    text = await spans_model(client, policy)
    receipt_id, again = await completion(client)
    assert again == text
    receipt = await (await client.get(f"/v1/receipts/{receipt_id}")).json()
    assert receipt["attr"]["method"] == "spans/1"

    result = await audit(client, settings.data_dir, receipt_id)
    assert result.exit_code == 0, result.output
    words = len(text.split())
    assert f"span 1: {words} words" in result.stdout
    assert "in 1 of 2 documents" in result.stdout  # the copy is a near-duplicate
    assert f"holders {holders} (" in result.stdout
    assert "contributor alice: weight" in result.stdout
    assert "OK: the signed payees and attr match the recomputation" in result.stdout
    assert "from the evidence: which documents hold each span" in result.stdout
    assert text.lower() not in result.output.lower()  # counts and names, never text
    for payee, role, ppm in receipt["payees"]:
        assert f"payee {payee} ({role}): {ppm} ppm" in result.stdout

    # The datanet changes: the receipt can no longer be checked against it.
    await upload(client, policy, "dave", [("d", "a new note about the harbour gate")])
    changed = await audit(client, settings.data_dir, receipt_id)
    assert changed.exit_code == 1
    assert f"MISMATCH: datanet '{policy}' changed since this receipt" in changed.stderr
    assert "OK" not in changed.stdout


async def test_a_forged_span_holder_is_caught(aiohttp_client: AppClientFactory,
                                              settings: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that signs a split paying someone who holds no copy of the span (and forges
    evidence to match) is caught by recounting the span's documents."""
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    await spans_model(client, "first")
    honest = edged.attributor.attribute

    def forged(*args: Any) -> SpanAttribution:
        result = honest(*args)
        evidence = json.loads(json.dumps(result.evidence))
        evidence["spans"][0]["holders"] = ["alice", "bob"]
        evidence["weights"] = {"alice": 1, "bob": 1}
        return dataclasses.replace(result, evidence=evidence,
                                   weights_ppm={"alice": 500_000, "bob": 500_000})

    monkeypatch.setattr(edged.attributor, "attribute", forged)
    receipt_id, _ = await completion(client)
    result = await audit(client, settings.data_dir, receipt_id)
    assert result.exit_code == 1
    assert "MISMATCH: span 1 holders differ: the evidence has ['alice', 'bob'], the " \
           "recomputation gives ['alice']" in result.stderr
    assert "MISMATCH: payee bob (data): the receipt signs 250000 ppm, the recomputation " \
           "gives 0 ppm" in result.stderr


async def test_an_influence_receipt_is_reproduced_until_the_examples_change(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path) -> None:
    classifier = install_onnx_model(settings, tmp_path, influence_layer=LAYER,
                                    data_share_ppm=500_000, batch_delay_us=0)
    client = await aiohttp_client(create_app(settings))
    x, labels, contributors = _examples(classifier)

    async def bind(rows: int) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, features=x[:rows], labels=labels[:rows],
                 contributors=np.array(contributors[:rows]))
        bound = await client.put(f"/api/models/{MODEL}/examples", data=buffer.getvalue())
        assert bound.status == 201, await bound.text()

    await bind(90)
    row = np.array([[2.0, 0.1, 0.0, 0.0]], dtype=np.float32)
    answer = await (await client.post(f"/v2/models/{MODEL}/infer",
                                      json={"inputs": [tensor(row)]})).json()
    receipt_id = answer["receipt"]["id"]
    evidence = (await (await client.get(f"/v1/receipts/{receipt_id}/evidence")).json()
                )["evidence"]
    assert evidence["method"] == "influence/1"
    result = await audit(client, settings.data_dir, receipt_id)
    assert result.exit_code == 0, result.output
    assert "method influence/1" in result.stdout
    for name, score in evidence["scores"].items():
        assert f"contributor {name}: influence " in result.stdout
        assert f"({score}) -> {evidence['weights'].get(name, 0)} ppm" in result.stdout
    assert "OK: the signed payees and attr match the recomputation" in result.stdout

    await bind(60)  # other examples: the receipt's binding is gone
    changed = await audit(client, settings.data_dir, receipt_id)
    assert changed.exit_code == 1
    assert f"MISMATCH: the examples bound to '{MODEL}' changed since this receipt" \
        in changed.stderr


async def test_an_owner_receipt_is_reproduced_and_changed_operator_terms_are_named(
        aiohttp_client: AppClientFactory, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    receipt_id, _ = await completion(client)
    result = await audit(client, settings.data_dir, receipt_id)
    assert result.exit_code == 0, result.output
    assert "method owner/1" in result.stdout and "no contributor is paid" in result.stdout
    assert "payee model-owner (owner): 900000 ppm" in result.stdout
    await client.close()

    other = dataclasses.replace(settings, operator_share_ppm=200_000)
    restarted = await aiohttp_client(create_app(other, runtimes=RUNTIMES,
                                                loader=fake_loader()))
    changed = await audit(restarted, settings.data_dir, receipt_id)
    assert changed.exit_code == 1
    assert "MISMATCH: attr.params differs" in changed.stderr
    assert "MISMATCH: payee model-owner (owner): the receipt signs 900000 ppm, the " \
           "recomputation gives 800000 ppm" in changed.stderr
    missing = await audit(restarted, settings.data_dir, "ab" * 32)
    assert missing.exit_code != 0 and "no receipt with that id" in missing.output
