"""Model provenance: a manifest's lineage (base model, training datanets pinned at their
state digests, a model card) is validated, shown, and part of the manifest digest every
receipt names; manifests without one keep their digests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from click.testing import CliRunner

from attribution.commitments import digest
from edged.app import create_app
from edged.cli.main import main
from edged.datanets import DATANETS
from edged.manifest import MAX_CARD_CHARS, MAX_TRAINED_ON, RUNTIMES, Manifest
from edged.settings import Settings
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader
from tests.edged.test_datanets_duplicates import run_cli

Client = TestClient[Any, web.Application]
BASE = "ab" * 32
DOCUMENT = json.dumps({"id": "d1", "text": "the ward keeps its records in the blue cabinet"})


def _manifest(**fields: Any) -> Manifest:
    return Manifest(name="m", runtime="fake", weights="cd" * 32, size=3, owner="o",
                    created=1, **fields)


def test_a_manifest_without_lineage_keeps_its_digest() -> None:
    plain = _manifest()
    assert "lineage" not in plain.to_dict()
    before_lineage = {**asdict(plain), "price": plain.price.model_dump(), "datanets": [],
                      "inputs": [], "outputs": [], "label_names": []}
    for absent in ("tokenizer", "options", "lineage", "federate"):
        del before_lineage[absent]
    assert plain.digest() == digest(before_lineage)
    with_lineage = _manifest(lineage={"base": BASE})
    assert with_lineage.digest() != plain.digest()
    assert Manifest.from_dict(with_lineage.to_dict()).digest() == with_lineage.digest()
    assert Manifest.from_dict(plain.to_dict()).digest() == plain.digest()


async def _client(aiohttp_client: AppClientFactory, settings: Settings) -> Client:
    return await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))


async def _datanet(client: Client, name: str) -> str:
    """A datanet with one document; its current state digest."""
    assert (await client.post("/api/datanets", json={"name": name})).status == 201
    added = await client.post(f"/api/datanets/{name}/documents",
                              params={"contributor": "ward-7"}, data=DOCUMENT.encode())
    assert added.status == 201, await added.text()
    sources, _ = client.app[DATANETS].sources_for([name])
    return sources[0].state


async def _receipt_manifest(client: Client) -> str:
    answer = await (await client.post("/v1/completions", json={
        "model": FAKE_MODEL, "prompt": "hi", "max_tokens": 2})).json()
    receipt = await (await client.get(f"/v1/receipts/{answer['receipt']['id']}")).json()
    manifest: str = receipt["model"]["manifest"]
    return manifest


async def test_lineage_through_the_api_pins_datanets_and_enters_the_receipt(
        aiohttp_client: AppClientFactory, settings: Settings) -> None:
    client = await _client(aiohttp_client, settings)
    state = await _datanet(client, "ward-notes")
    before = await _receipt_manifest(client)
    shown = await (await client.get(f"/api/models/{FAKE_MODEL}")).json()
    assert "lineage" not in shown and shown["digest"] == before

    elsewhere = "ef" * 32
    updated = await client.patch(f"/api/models/{FAKE_MODEL}", json={"lineage": {
        "base": "sha256:" + BASE, "card": "Triage notes summariser; not for diagnosis.",
        "trained_on": [{"datanet": "ward-notes"},
                       {"datanet": "other-hospital", "state": "sha256:" + elsewhere}]}})
    assert updated.status == 200, await updated.text()
    view = await updated.json()
    assert view["lineage"] == {
        "base": BASE, "card": "Triage notes summariser; not for diagnosis.",
        "trained_on": [{"datanet": "ward-notes", "state": state},
                       {"datanet": "other-hospital", "state": elsewhere}]}
    after = await _receipt_manifest(client)
    assert after == view["digest"] != before  # the receipt names the lineage's manifest

    # The pinned state stays as it was when the datanet changes later.
    more = json.dumps({"id": "d2", "text": "a second note about the night shift rota"})
    await client.post("/api/datanets/ward-notes/documents", params={"contributor": "ward-8"},
                      data=more.encode())
    again = await (await client.get(f"/api/models/{FAKE_MODEL}")).json()
    assert again["lineage"]["trained_on"][0]["state"] == state

    cleared = await (await client.patch(f"/api/models/{FAKE_MODEL}",
                                        json={"lineage": None})).json()
    assert "lineage" not in cleared and cleared["digest"] == before


@pytest.mark.parametrize(("lineage", "param"), [
    ("a string", "lineage"),
    ({"parent": BASE}, "lineage.parent"),
    ({"base": "12345"}, "lineage.base"),
    ({"base": 7}, "lineage.base"),
    ({"trained_on": []}, "lineage.trained_on"),
    ({"trained_on": "ward-notes"}, "lineage.trained_on"),
    ({"trained_on": [{"datanet": "no-such-net"}]}, "lineage.trained_on[0].datanet"),
    ({"trained_on": [{"datanet": "Bad Name", "state": BASE}]},
     "lineage.trained_on[0].datanet"),
    ({"trained_on": [{"datanet": "x", "state": BASE}, {"datanet": "x", "state": "zz"}]},
     "lineage.trained_on[1].state"),
    ({"trained_on": [{"datanet": "x", "state": BASE}, {"datanet": "x", "state": BASE}]},
     "lineage.trained_on[1]"),
    ({"trained_on": [{"datanet": "x", "state": BASE, "extra": 1}]},
     "lineage.trained_on[0].extra"),
    ({"trained_on": [{"state": BASE}]}, "lineage.trained_on[0].datanet"),
    ({"trained_on": [{"datanet": "x"}] * (MAX_TRAINED_ON + 1)}, "lineage.trained_on"),
    ({"card": "a\x00b"}, "lineage.card"),
    ({"card": ""}, "lineage.card"),
    ({"card": "x" * (MAX_CARD_CHARS + 1)}, "lineage.card"),
    ({"card": ["not", "text"]}, "lineage.card"),
])
async def test_bad_lineage_is_a_400_naming_the_field(
        aiohttp_client: AppClientFactory, settings: Settings, lineage: Any,
        param: str) -> None:
    client = await _client(aiohttp_client, settings)
    before = await (await client.get(f"/api/models/{FAKE_MODEL}")).json()
    refused = await client.patch(f"/api/models/{FAKE_MODEL}", json={"lineage": lineage})
    assert refused.status == 400
    assert (await refused.json())["error"]["param"] == param
    after = await (await client.get(f"/api/models/{FAKE_MODEL}")).json()
    assert after["digest"] == before["digest"]  # nothing was written


async def test_cli_update_and_show_lineage(aiohttp_client: AppClientFactory,
                                          settings: Settings, tmp_path: Path) -> None:
    client = await _client(aiohttp_client, settings)
    state = await _datanet(client, "ward-notes")
    card = tmp_path / "CARD.md"
    card.write_text("# Ward model\nFine-tuned on ward notes.\n", encoding="utf-8")
    elsewhere = "ef" * 32
    updated = await run_cli(client, settings.data_dir, "models", "update", FAKE_MODEL,
                            "--base", BASE, "--trained-on", "ward-notes",
                            "--trained-on", f"archive@{elsewhere}", "--card", str(card))
    assert json.loads(updated.stdout)["lineage"] == {
        "base": BASE, "card": card.read_text(encoding="utf-8"),
        "trained_on": [{"datanet": "ward-notes", "state": state},
                       {"datanet": "archive", "state": elsewhere}]}
    # Parts not given are kept; a card may be given as text.
    await run_cli(client, settings.data_dir, "models", "update", FAKE_MODEL,
                  "--card", "Summaries only.")
    shown = await run_cli(client, settings.data_dir, "models", "show", FAKE_MODEL)
    assert json.loads(shown.stdout)["lineage"]["card"] == "Summaries only."
    assert f"lineage: base model sha256:{BASE}" in shown.stderr
    assert f"lineage: trained on datanet ward-notes at state {state}" in shown.stderr
    assert f"lineage: trained on datanet archive at state {elsewhere}" in shown.stderr
    assert "lineage: model card of 15 characters" in shown.stderr

    url = str(client.make_url("")).rstrip("/")
    failed = await asyncio.to_thread(CliRunner().invoke, main, [
        "--url", url, "--data-dir", str(settings.data_dir), "models", "update", FAKE_MODEL,
        "--trained-on", "unknown-net"])
    assert failed.exit_code != 0
    assert "no datanet 'unknown-net'" in failed.output and "unknown-net@DIGEST" in failed.output
