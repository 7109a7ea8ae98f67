"""Copying cannot buy credit, end to end: ``edged datanet create/add`` (the real CLI over
HTTP) reports duplicates at ingest, and receipts pay by the datanet's duplicate policy
and name that policy in their attribution parameters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from click.testing import CliRunner, Result

from attribution.commitments import digest
from edged.app import create_app
from edged.cli.main import main
from edged.manifest import RUNTIMES
from edged.settings import Settings
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader

Client = TestClient[Any, web.Application]
REQUEST = {"model": FAKE_MODEL, "prompt": "tell me", "max_tokens": 12, "temperature": 0}


async def run_cli(client: Client, data_dir: Path, *args: str) -> Result:
    """``edged --url <test server> ...`` in a thread, so the server keeps serving."""
    url = str(client.make_url("")).rstrip("/")
    result = await asyncio.to_thread(CliRunner().invoke, main,
                                     ["--url", url, "--data-dir", str(data_dir), *args])
    assert result.exit_code == 0, result.output
    return result


async def generated_text(client: Client) -> str:
    answer = await (await client.post("/v1/completions", json=REQUEST)).json()
    text: str = answer["choices"][0]["text"]
    return text


async def paid(client: Client) -> tuple[dict[tuple[str, str], int], dict[str, Any], Any]:
    """Payees of a fresh completion's receipt, the receipt's attr and its evidence."""
    answer = await (await client.post("/v1/completions", json=REQUEST)).json()
    receipt_id = answer["receipt"]["id"]
    receipt = await (await client.get(f"/v1/receipts/{receipt_id}")).json()
    evidence = await (await client.get(f"/v1/receipts/{receipt_id}/evidence")).json()
    return {(p[0], p[1]): p[2] for p in receipt["payees"]}, receipt["attr"], evidence


async def test_cli_reports_copies_and_first_pays_only_the_original(
        aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    text = await generated_text(client)
    original = f"long ago {text} and then"
    (tmp_path / "original.txt").write_text(original)
    copies = []
    for number in range(9):  # light edits: case and whitespace
        copies.append(tmp_path / f"copy{number}.txt")
        copies[-1].write_text(original.upper().replace(" ", "   "))

    created = await run_cli(client, settings.data_dir, "datanet", "create", "books")
    assert "duplicates: first" in created.output
    honest = await run_cli(client, settings.data_dir, "datanet", "add", "books",
                           str(tmp_path / "original.txt"), "--contributor", "alice")
    assert "no duplicated content found" in honest.output
    copier = await run_cli(client, settings.data_dir, "datanet", "add", "books",
                           *map(str, copies), "--contributor", "copier")
    words = len(original.split())
    assert f"9 documents hold content already indexed ({9 * words} of {9 * words} words; " \
           "9 near-duplicates)" in copier.output
    assert f"copy3.txt: {words}/{words} words held (alice {words}); near-duplicate of " \
           "alice's (similarity 1.00)" in copier.output
    assert text.lower() not in copier.output.lower()  # counts and ids, never the text

    update = await client.patch(f"/api/models/{FAKE_MODEL}",
                                json={"datanets": ["books"], "data_share_ppm": 500_000})
    assert update.status == 200, await update.text()
    payees, attr, evidence = await paid(client)
    assert payees[("alice", "data")] == 500_000
    assert not any(role == "data" and who != "alice" for who, role in payees)
    # The receipt's parameters digest names the policy and the datanet's state.
    params = evidence["evidence"]["params"]
    assert attr["params"] == digest(params).hex()
    (source,) = params["sources"]
    assert source["name"] == "books" and source["duplicates"] == "first"
    assert len(source["state"]) == 64
    shown = await (await client.get("/api/datanets/books")).json()
    assert shown["duplicates"] == "first" and shown["documents"] == 10


async def test_split_never_pays_a_copier_more_and_the_policy_changes_the_params(
        aiohttp_client: AppClientFactory, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    text = await generated_text(client)
    refused = await client.post("/api/datanets", json={"name": "bad", "duplicates": "most"})
    assert refused.status == 400 and (await refused.json())["error"]["param"] == "duplicates"
    created = await client.post("/api/datanets", json={"name": "books", "duplicates": "split"})
    assert created.status == 201 and (await created.json())["duplicates"] == "split"

    async def upload(contributor: str, documents: list[tuple[str, str]]) -> Any:
        body = b"".join(json.dumps({"id": i, "text": t}).encode() + b"\n"
                        for i, t in documents)
        response = await client.post("/api/datanets/books/documents",
                                     params={"contributor": contributor}, data=body)
        assert response.status == 201, await response.text()
        return await response.json()

    original = f"long ago {text} and then"
    await upload("alice", [("a.txt", original)])
    report = await upload("copier", [(f"c{i}", original) for i in range(100)])
    assert report["duplicates"]["documents"] == 100
    assert report["duplicates"]["near_duplicates"] == 100
    assert {f["near_duplicate_of"] for f in report["duplicates"]["findings"]} == {"alice"}
    assert original not in json.dumps(report)

    update = await client.patch(f"/api/models/{FAKE_MODEL}",
                                json={"datanets": ["books"], "data_share_ppm": 500_000})
    assert update.status == 200, await update.text()
    payees, split_attr, _ = await paid(client)
    assert payees[("alice", "data")] == payees[("copier", "data")] == 250_000

    # The same corpus under "first" (a second datanet) pays alice alone, and the receipt's
    # parameters differ: a receipt says which rule paid.
    assert (await client.post("/api/datanets", json={"name": "firsts"})).status == 201
    for contributor, documents in (("alice", [("a.txt", original)]),
                                   ("copier", [(f"c{i}", original) for i in range(100)])):
        body = b"".join(json.dumps({"id": i, "text": t}).encode() + b"\n"
                        for i, t in documents)
        response = await client.post("/api/datanets/firsts/documents",
                                     params={"contributor": contributor}, data=body)
        assert response.status == 201
    update = await client.patch(f"/api/models/{FAKE_MODEL}", json={"datanets": ["firsts"]})
    assert update.status == 200, await update.text()
    payees, first_attr, _ = await paid(client)
    assert payees[("alice", "data")] == 500_000 and ("copier", "data") not in payees
    assert first_attr["method"] == split_attr["method"] == "spans/1"
    assert first_attr["params"] != split_attr["params"]
