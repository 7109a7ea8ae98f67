"""Datanets: the store, file parsing, and spans/1 in receipts through the API."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from attribution.receipt import verify_receipt
from edged.app import create_app
from edged.datanet_documents import read_document_file
from edged.datanets import MAX_SEGMENTS, DatanetNotFound, DatanetStore
from edged.errors import Conflict, InvalidRequest, NotFound
from edged.http.common import is_local
from edged.ledger import LEDGER
from edged.manifest import RUNTIMES
from edged.settings import Settings
from tests.edged.conftest import FAKE_MODEL, AppClientFactory, fake_loader

Client = TestClient[Any, web.Application]
ALICE_TEXT = ("the quick brown fox jumps over the lazy dog while the farmer sleeps "
              "under an old oak tree near the river bank")
BOB_TEXT = ("a journey of a thousand miles begins with a single step said the old "
            "traveller to the young apprentice at dawn")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DatanetStore]:
    store = DatanetStore(tmp_path / "datanets")
    yield store
    store.close()


def test_create_add_show_and_query(store: DatanetStore) -> None:
    store.create("books")
    report = store.add_documents("books", "alice", [("fox.txt", ALICE_TEXT)],
                                 payout="0x" + "ab" * 20)
    assert (report.documents, report.contributors, report.segments) == (1, 1, 1)
    assert report.bytes == len(ALICE_TEXT)
    store.add_documents("books", "bob", [("step.txt", BOB_TEXT)])
    view = store.get("books").public_view()
    assert [c["id"] for c in view["contributors"]] == ["alice", "bob"]
    assert view["documents"] == 2 and view["segments"] == 2
    segments, removed = store.segments_for(["books"])
    assert len(segments) == 2 and removed == frozenset()
    assert store.payout_addresses(["books"]) == {"alice": "0x" + "ab" * 20}
    assert [s.name for s in store.all()] == ["books"]


def test_removed_contributor_is_excluded_at_once_and_gone_after_compaction(
        store: DatanetStore) -> None:
    store.create("books")
    store.add_documents("books", "alice", [("fox.txt", ALICE_TEXT)])
    store.add_documents("books", "bob", [("step.txt", BOB_TEXT)])
    store.remove_contributor("books", "alice")
    _, removed = store.segments_for(["books"])
    assert removed == frozenset({"alice"})
    state = store.compact("books")
    assert state.segments == ["seg-000003"] and state.removed == []
    assert list(state.contributors) == ["bob"]
    segments, removed = store.segments_for(["books"])
    assert removed == frozenset() and sum(s.documents for s in segments) == 1
    with pytest.raises(NotFound):
        store.remove_contributor("books", "alice")


def test_adding_for_a_removed_contributor_compacts_first(store: DatanetStore) -> None:
    store.create("books")
    store.add_documents("books", "alice", [("fox.txt", ALICE_TEXT)])
    store.remove_contributor("books", "alice")
    store.add_documents("books", "alice", [("step.txt", BOB_TEXT)])
    state = store.get("books")
    assert state.removed == [] and state.contributors["alice"]["documents"] == 1
    segments, _ = store.segments_for(["books"])
    assert sum(s.documents for s in segments) == 1  # the old document did not come back


def test_many_adds_compact_into_one_segment(store: DatanetStore) -> None:
    store.create("books")
    for number in range(MAX_SEGMENTS + 1):
        store.add_documents("books", f"c{number}", [("d.txt", f"{ALICE_TEXT} {number}")])
    state = store.get("books")
    assert len(state.segments) == 1
    segments, _ = store.segments_for(["books"])
    assert segments[0].documents == MAX_SEGMENTS + 1


@pytest.mark.parametrize(("contributor", "documents"), [
    ("../evil", [("a.txt", ALICE_TEXT)]),
    ("a/b", [("a.txt", ALICE_TEXT)]),
    ("alice", [("a.txt", "   ")]),
    ("alice", [("a.txt", "bin\x00ary")]),
    ("alice", []),
])
def test_bad_adds_change_nothing(store: DatanetStore, contributor: str,
                                 documents: list[tuple[str, str]]) -> None:
    store.create("books")
    store.add_documents("books", "bob", [("step.txt", BOB_TEXT)])
    before = store.get("books").to_json()
    with pytest.raises(InvalidRequest):
        store.add_documents("books", contributor, documents)
    assert store.get("books").to_json() == before
    assert sorted(p.name for p in (store.root / "books" / "segments").iterdir()) == [
        "seg-000001"]


def test_name_collision_and_bad_names(store: DatanetStore) -> None:
    store.create("books")
    with pytest.raises(Conflict):
        store.create("books")
    with pytest.raises(InvalidRequest):
        store.create("../books")
    with pytest.raises(DatanetNotFound):
        store.get("nothing")


def test_corrupt_index_gives_a_clear_error_and_leaves_the_datanet(store: DatanetStore) -> None:
    store.create("books")
    store.add_documents("books", "alice", [("fox.txt", ALICE_TEXT)])
    store.close()
    segment = store.root / "books" / "segments" / "seg-000001"
    target = next(p for p in segment.iterdir() if p.suffix == ".npy")
    target.write_bytes(target.read_bytes()[:10])  # truncate
    before = store.get("books").to_json()
    with pytest.raises(InvalidRequest, match="damaged"):
        store.segments_for(["books"])
    assert store.get("books").to_json() == before


def test_read_document_file_formats_and_refusals(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(ALICE_TEXT)
    (tmp_path / "b.md").write_text("# Title\n\n" + BOB_TEXT)
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": ALICE_TEXT, "id": "x1"}) + "\n\n"
                                      + json.dumps({"text": BOB_TEXT}) + "\n")
    assert read_document_file(tmp_path / "a.txt") == [("a.txt", ALICE_TEXT)]
    assert read_document_file(tmp_path / "b.md")[0][1].startswith("# Title")
    assert [d[0] for d in read_document_file(tmp_path / "c.jsonl")] == ["x1", "c.jsonl:3"]
    bad = {"empty.txt": b"  \n", "bin.txt": b"abc\x00def", "latin.txt": "caf\u00e9".encode(
        "latin-1"), "bad.jsonl": b'{"text": 5}\n', "x.pdf": b"%PDF-1.4"}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InvalidRequest):
            read_document_file(tmp_path / name)


def test_evidence_is_for_local_callers_only() -> None:
    def request_from(address: str) -> web.Request:
        class Transport:
            def get_extra_info(self, name: str, default: Any = None) -> Any:
                return (address, 5000) if name == "peername" else default

            def is_closing(self) -> bool:
                return False

        return make_mocked_request("GET", "/", transport=Transport())

    assert is_local(request_from("127.0.0.1"))
    assert is_local(request_from("::1"))
    assert not is_local(request_from("192.168.1.20"))


async def _upload(client: Client, contributor: str, documents: list[tuple[str, str]],
                  **params: str) -> Any:
    body = b"".join(json.dumps({"id": i, "text": t}).encode() + b"\n" for i, t in documents)
    response = await client.post("/api/datanets/books/documents",
                                 params={"contributor": contributor, **params}, data=body)
    assert response.status == 201, await response.text()
    return await response.json()


async def test_receipts_credit_the_contributor_whose_text_the_model_reproduced(
        aiohttp_client: AppClientFactory, settings: Settings) -> None:
    client = await aiohttp_client(create_app(settings, runtimes=RUNTIMES, loader=fake_loader()))
    request = {"model": FAKE_MODEL, "prompt": "tell me", "max_tokens": 12, "temperature": 0}
    generated = (await (await client.post("/v1/completions", json=request)).json())
    text = generated["choices"][0]["text"]
    owner_only = await (await client.get(f"/v1/receipts/{generated['receipt']['id']}")).json()
    assert owner_only["attr"]["method"] == "owner/1"

    assert (await client.post("/api/datanets", json={"name": "books"})).status == 201
    report = await _upload(client, "alice", [("a.txt", f"long ago {text} and then")])
    assert report["documents"] == 1 and report["contributors"] == 1
    await _upload(client, "bob", [("b.txt", BOB_TEXT)])
    update = await client.patch(f"/api/models/{FAKE_MODEL}",
                                json={"datanets": ["books"], "data_share_ppm": 500_000})
    assert update.status == 200, await update.text()

    plain = await (await client.post("/v1/completions", json=request)).json()
    receipt = await (await client.get(f"/v1/receipts/{plain['receipt']['id']}")).json()
    assert receipt["attr"]["method"] == "spans/1"
    payees = {(p[0], p[1]): p[2] for p in receipt["payees"]}
    assert payees == {("alice", "data"): 500_000, ("model-owner", "owner"): 400_000,
                      (f"node:{receipt['node']}", "operator"): 100_000}
    verify_receipt(base64.b64decode(receipt["raw"]))

    streamed = await client.post("/v1/completions", json={**request, "stream": True})
    final = [json.loads(line[6:]) for line in (await streamed.text()).split("\n\n")
             if line.startswith("data: {")][-1]
    streamed_receipt = await (await client.get(f"/v1/receipts/{final['receipt']['id']}")).json()
    assert streamed_receipt["payees"] == receipt["payees"]
    assert streamed_receipt["attr"] == receipt["attr"]

    evidence = await (await client.get(f"/v1/receipts/{plain['receipt']['id']}/evidence")).json()
    assert evidence["method"] == "spans/1"
    spans = evidence["evidence"]["spans"]
    assert spans and all("alice" in span["by_contributor"] for span in spans)
    assert text not in json.dumps(evidence)  # offsets and ids, never the text

    # With a payout address, alice is paid under it (the fleet can settle it as it is).
    alice_wallet = "0x" + "ab" * 20
    await _upload(client, "alice", [("c.txt", "a short unrelated note")], payout=alice_wallet)
    paid = await (await client.post("/v1/completions", json=request)).json()
    receipt = await (await client.get(f"/v1/receipts/{paid['receipt']['id']}")).json()
    payees = {(p[0], p[1]): p[2] for p in receipt["payees"]}
    assert payees[(alice_wallet, "data")] == 500_000 and ("alice", "data") not in payees

    removed = await client.delete("/api/datanets/books/contributors/alice")
    assert removed.status == 200
    after = await (await client.post("/v1/completions", json=request)).json()
    receipt = await (await client.get(f"/v1/receipts/{after['receipt']['id']}")).json()
    payees = {(p[0], p[1]): p[2] for p in receipt["payees"]}
    assert ("alice", "data") not in payees and (alice_wallet, "data") not in payees
    assert payees[("model-owner", "owner")] == 900_000  # unmatched data share: the owner


async def test_datanet_api_errors(client: Client) -> None:
    assert (await client.get("/api/datanets/nothing")).status == 404
    assert (await client.post("/api/datanets", json={"name": "../x"})).status == 400
    assert (await client.post("/api/datanets", json={"name": "books"})).status == 201
    assert (await client.post("/api/datanets", json={"name": "books"})).status == 409
    bad = await client.post("/api/datanets/books/documents", params={"contributor": "a/b"},
                            data=b'{"id": "x", "text": "hello there"}\n')
    assert bad.status == 400
    garbage = await client.post("/api/datanets/books/documents", params={"contributor": "a"},
                                data=b"not json\n")
    assert garbage.status == 400
    missing = await client.patch(f"/api/models/{FAKE_MODEL}", json={"datanets": ["nope"]})
    assert missing.status == 404
    share_without_datanet = await client.patch(f"/api/models/{FAKE_MODEL}",
                                               json={"data_share_ppm": 1})
    assert share_without_datanet.status == 400
    listing = await (await client.get("/api/datanets")).json()
    assert [d["name"] for d in listing["datanets"]] == ["books"]
    assert listing["datanets"][0]["documents"] == 0
    assert client.app[LEDGER].head()[0] == 0


def test_demo_datanet_installs_with_one_contributor_per_file(tmp_path: Path) -> None:
    from edged.demo import DEMO_DATANET, install_demo_datanet

    store = DatanetStore(tmp_path / "datanets")
    try:
        install_demo_datanet(store)
        install_demo_datanet(store)  # idempotent
        view = store.get(DEMO_DATANET).public_view()
        assert {c["id"] for c in view["contributors"]} == {
            "national-archives", "library-of-congress", "shakespeare-folio", "mother-goose"}
    finally:
        store.close()


def test_staging_leftovers_of_a_crashed_build_are_removed_at_start(tmp_path: Path) -> None:
    store = DatanetStore(tmp_path / "datanets")
    store.create("books")
    store.add_documents("books", "alice", [("fox.txt", ALICE_TEXT)])
    store.close()
    leftover = tmp_path / "datanets" / "books" / "segments" / ".seg-000002.tmp1234"
    leftover.mkdir()
    (leftover / "corpus.bin").write_bytes(b"partial")
    reopened = DatanetStore(tmp_path / "datanets")
    try:
        assert not leftover.exists()
        assert reopened.get("books").segments == ["seg-000001"]
    finally:
        reopened.close()


async def test_a_datanet_in_use_cannot_be_removed(client: Client) -> None:
    assert (await client.post("/api/datanets", json={"name": "books"})).status == 201
    await _upload(client, "alice", [("a.txt", ALICE_TEXT)])
    assert (await client.patch(f"/api/models/{FAKE_MODEL}",
                               json={"datanets": ["books"], "data_share_ppm": 1})).status == 200
    refused = await client.delete("/api/datanets/books")
    assert refused.status == 409
    assert (await client.get("/api/datanets/books")).status == 200
    assert (await client.patch(f"/api/models/{FAKE_MODEL}",
                               json={"datanets": [], "data_share_ppm": 0})).status == 200
    assert (await client.delete("/api/datanets/books")).status == 200


async def test_documents_that_are_not_unicode_text_or_too_deep_are_400_and_leave_nothing(
        client: Client, settings: Settings) -> None:
    assert (await client.post("/api/datanets", json={"name": "books"})).status == 201
    bodies = [
        b'{"id": "a", "text": "a lone surrogate \\ud800 here and more words"}\n',
        b'{"id": "\\udfff", "text": "five words or more here"}\n',
        b'{"id": "a", "text": "fine words"}\n' + b"[" * 50_000 + b"]" * 50_000 + b"\n",
    ]
    for body in bodies:
        response = await client.post("/api/datanets/books/documents",
                                     params={"contributor": "alice"}, data=body)
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "documents"
    segments = settings.datanets_dir / "books" / "segments"
    assert not segments.exists() or list(segments.iterdir()) == []
    shown = await (await client.get("/api/datanets/books")).json()
    assert shown["documents"] == 0


def test_a_failed_build_leaves_no_segment_folder(store: DatanetStore,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store.create("books")

    def broken_build(directory: Path, *args: Any) -> None:
        directory.mkdir(parents=True)
        (directory / "half-written").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(store, "_build", broken_build)
    with pytest.raises(OSError):
        store.add_documents("books", "alice", [("d", "some words in a document")])
    assert list((store.root / "books" / "segments").glob("seg-*")) == []
    assert store.get("books").segments == []
