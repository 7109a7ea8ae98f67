"""Progress for long CLI work: bars and spinners reach a terminal and never a pipe, stdout
holds the same result either way, and the daemon streams a datanet add's progress."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edged.datanets import DATANETS
from edged.devtools.daemon import EDGED, Daemon
from edged.devtools.simulated_node import SimulatedNode
from edged.devtools.tiny_onnx import write_linear_classifier
from edged.errors import InvalidRequest
from edged.fleet.db import Database
from edged.fleet.store import FleetStore
from tests.support.receipt_factory import key_from

Client = TestClient[Any, web.Application]
NDJSON = "application/x-ndjson"
BAR = "━"  # what rich draws its bars with
SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"  # rich's default "dots" spinner
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|[\r\x07]")
TEXTS = {
    "fox": "the quick brown fox jumps over the lazy dog while the farmer sleeps under an oak",
    "step": "a journey of a thousand miles begins with a single step said the old traveller",
    "mill": "the river flows past the mill and under the stone bridge at dusk every evening",
}


# --- running the CLI on a terminal and into pipes -------------------------------------------

@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str  # on a terminal: everything that reached it, escape sequences removed

    def shows_progress(self) -> bool:
        return BAR in self.stderr or any(frame in self.stderr for frame in SPINNER_FRAMES)


def _drain(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            return
        if not chunk:
            return
        into.append(chunk)


def run_cli(daemon: Daemon, *args: str, terminal: bool, progress: str | None = None) -> Run:
    """``edged ARGS`` against ``daemon``: stdout always piped; stderr on a pseudo-terminal
    (120x40, TERM=xterm-256color) when ``terminal``, else piped. ``progress`` sets
    EDGED_PROGRESS."""
    env = {k: v for k, v in daemon.env.items()
           if k not in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR", "COLUMNS")}
    env["TERM"] = "xterm-256color"
    if progress is not None:
        env["EDGED_PROGRESS"] = progress
    command = [*EDGED, "--data-dir", str(daemon.data_dir), "--url", daemon.url, *args]
    if not terminal:
        piped = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        return Run(piped.returncode, piped.stdout, piped.stderr)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    written: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(master, written))
    try:
        with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=slave, env=env) as process:
            os.close(slave)
            slave = -1
            reader.start()
            stdout, _ = process.communicate(timeout=60)
        reader.join(timeout=10)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    terminal_text = ANSI.sub("", b"".join(written).decode("utf-8", errors="replace"))
    return Run(process.returncode, stdout.decode(), terminal_text)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("progress") / "data").start()
    try:
        yield daemon
    finally:
        daemon.stop()


# --- the commands ---------------------------------------------------------------------------

def test_models_add_shows_hashing_and_upload_progress_only_on_a_terminal(
        node: Daemon, tiny_model_file: Path) -> None:
    shown = run_cli(node, "models", "add", str(tiny_model_file), "--name", "tiny-tty",
                    "--chat-format", "chatml", terminal=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.shows_progress() and "100%" in shown.stderr
    assert "hashing tiny.gguf" in shown.stderr and f"uploading {tiny_model_file.name}" in \
        shown.stderr
    assert json.loads(shown.stdout)["name"] == "tiny-tty"  # the result, on stdout alone

    piped = run_cli(node, "models", "add", str(tiny_model_file), "--name", "tiny-pipe",
                    "--chat-format", "chatml", terminal=False)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == f"uploading {tiny_model_file.name} ...\n"  # as before: no bars
    created = json.loads(piped.stdout)
    listed = node.request_json("GET", "/api/models")["body"]
    assert created["weights"] == json.loads(shown.stdout)["weights"]
    assert created["name"] in {m["name"] for m in listed["models"]}


def _classifier(node: Daemon, tmp_path: Path) -> Path:
    """An ONNX classifier with its final linear layer named, and examples to bind."""
    classifier = write_linear_classifier(tmp_path / "clf.onnx", seed=5)
    node.cli("models", "add", str(classifier.path), "--name", "clf", "--runtime", "onnx",
             "--price", "per_row=3")
    node.cli("models", "update", "clf", "--influence-layer", "input,linear.weight,linear.bias",
             "--data-share", "0.4")
    features = np.random.default_rng(3).normal(size=(40, 4)).astype(np.float32)
    labels = classifier.probabilities(features).argmax(axis=1)
    np.savez(tmp_path / "examples.npz", features=features, labels=labels,
             contributors=np.array(["lab-a"] * 20 + ["lab-b"] * 20))
    return tmp_path / "examples.npz"


def test_models_bind_shows_upload_progress_and_honours_edged_progress(
        node: Daemon, tmp_path: Path) -> None:
    examples = _classifier(node, tmp_path)
    expected = ("bound 40 examples of 2 contributors to clf (influence/1)\n"
                "layer: input -> linear.weight, linear.bias (manifest)\n")

    shown = run_cli(node, "models", "bind", "clf", str(examples), terminal=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.shows_progress() and "uploading examples.npz" in shown.stderr
    assert "100%" in shown.stderr
    assert shown.stdout == expected

    piped = run_cli(node, "models", "bind", "clf", str(examples), terminal=False)
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, expected, "")

    # EDGED_PROGRESS: never keeps a terminal quiet; always draws even into a pipe.
    quiet = run_cli(node, "models", "bind", "clf", str(examples), terminal=True,
                    progress="never")
    assert quiet.returncode == 0 and not quiet.shows_progress() and quiet.stdout == expected
    forced = run_cli(node, "models", "bind", "clf", str(examples), terminal=False,
                     progress="always")
    assert forced.returncode == 0 and forced.shows_progress() and forced.stdout == expected


def test_datanet_add_follows_the_daemons_indexing_only_on_a_terminal(
        node: Daemon, tmp_path: Path) -> None:
    node.cli("datanet", "create", "shelf")
    (tmp_path / "fox.txt").write_text(TEXTS["fox"])
    (tmp_path / "more.jsonl").write_text("".join(
        json.dumps({"id": key, "text": TEXTS[key]}) + "\n" for key in ("step", "mill")))

    shown = run_cli(node, "datanet", "add", "shelf", "--contributor", "alice",
                    str(tmp_path / "fox.txt"), str(tmp_path / "more.jsonl"), terminal=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.shows_progress()
    for step in ("reading", "uploading", "indexed"):  # client steps, then the daemon's
        assert step in shown.stderr
    assert "3/3" in shown.stderr  # documents indexed, as the daemon counted them
    size = sum(len(text) for text in TEXTS.values())
    assert shown.stdout == (f"added 3 documents ({size} bytes) to shelf; 1 contributors, "
                            "1 segments\nno duplicated content found\n")

    (tmp_path / "copy.txt").write_text(TEXTS["fox"])
    piped = run_cli(node, "datanet", "add", "shelf", "--contributor", "bob",
                    str(tmp_path / "copy.txt"), terminal=False)
    assert piped.returncode == 0 and piped.stderr == ""
    words = len(TEXTS["fox"].split())
    assert piped.stdout == (
        f"added 1 documents ({len(TEXTS['fox'])} bytes) to shelf; 2 contributors, 2 segments\n"
        f"1 documents hold content already indexed ({words} of {words} words; "
        f"1 near-duplicates):\n"
        f"  bob/copy.txt: {words}/{words} words held (alice {words}); near-duplicate of "
        f"alice's (similarity 1.00)\n")

    missing = run_cli(node, "datanet", "add", "nowhere", "--contributor", "bob",
                      str(tmp_path / "copy.txt"), terminal=False)
    assert missing.returncode == 1 and "404 datanet_not_found" in missing.stderr


def test_fleet_epochs_close_spins_only_on_a_terminal(tmp_path: Path) -> None:
    fleet = Daemon(tmp_path / "fleet" / "data", command=("fleet", "serve"), extra_args=())
    fleet.start()
    db = Database("sqlite:" + str(tmp_path / "fleet" / "data" / "fleet" / "fleet.sqlite3"))
    try:
        store = FleetStore(db, lambda: int(time.time() * 1000))
        node = SimulatedNode(key_from("progress-node"))
        store.enroll(node.origin, "progress-node")
        node.append(6)
        store.ingest(node.batch(0).encode())

        shown = run_cli(fleet, "fleet", "epochs", "--close", terminal=True)
        assert shown.returncode == 0, shown.stderr
        assert shown.shows_progress() and "closing the epoch" in shown.stderr
        assert json.loads(shown.stdout)["receipts"] == 6

        node.append(4)
        store.ingest(node.batch(6).encode())
        piped = run_cli(fleet, "fleet", "epochs", "--close", terminal=False)
        assert piped.returncode == 0 and piped.stderr == ""
        closed = json.loads(piped.stdout)
        shown_later = fleet.request_json("GET", "/fleet/epochs/2")["body"]
        shown_later.pop("settlement")
        assert closed == shown_later and closed["receipts"] == 4
    finally:
        db.close()
        fleet.stop()


# --- the daemon's progress stream -------------------------------------------------------------

def _lines(documents: dict[str, str]) -> bytes:
    return b"".join(json.dumps({"id": i, "text": t}).encode() + b"\n"
                    for i, t in documents.items())


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report without what differs between two datanets by design (name, timing)."""
    return {k: v for k, v in report.items() if k not in ("datanet", "seconds")}


async def test_a_streamed_add_reports_progress_then_the_plain_answer(client: Client) -> None:
    first = {"fox": TEXTS["fox"]}
    later = {"copy": TEXTS["fox"], "step": TEXTS["step"], "mill": TEXTS["mill"]}
    for name in ("plain", "streamed"):  # the same state in both, so the same answers
        assert (await client.post("/api/datanets", json={"name": name})).status == 201
        response = await client.post(f"/api/datanets/{name}/documents",
                                     params={"contributor": "alice"}, data=_lines(first))
        assert response.status == 201

    plain = await client.post("/api/datanets/plain/documents", params={"contributor": "bob"},
                              data=_lines(later))
    assert plain.status == 201
    body = _lines(later)
    streamed = await client.post("/api/datanets/streamed/documents",
                                 params={"contributor": "bob"}, data=body,
                                 headers={"Accept": NDJSON})
    assert streamed.status == 200 and streamed.content_type == NDJSON
    events = [json.loads(line) for line in (await streamed.read()).splitlines()]
    progress = [event["progress"] for event in events[:-1]]
    assert [p["stage"] for p in progress][0] == "screening"
    assert progress[0]["documents"] == {"done": 0, "total": 3}
    assert {p["stage"] for p in progress[1:-1]} <= {"indexing"} and len(progress) >= 3
    assert progress[-1] == {"stage": "indexed", "documents": {"done": 3, "total": 3},
                            "bytes": len(body)}
    done = [p["documents"]["done"] for p in progress]
    assert done == sorted(done)  # never backwards
    report = events[-1]["result"]
    assert _comparable(report) == _comparable(await plain.json())
    assert report["duplicates"]["near_duplicates"] == 1  # a real report, copies found
    totals = [{key: state[key] for key in ("documents", "bytes", "contributors", "segments")}
              for state in [await (await client.get(f"/api/datanets/{name}")).json()
                            for name in ("plain", "streamed")]]
    assert totals[0] == totals[1]


async def test_errors_before_indexing_are_ordinary_answers_and_later_ones_a_last_line(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = await client.post("/api/datanets/nowhere/documents",
                                params={"contributor": "bob"}, data=_lines(TEXTS),
                                headers={"Accept": NDJSON})
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "datanet_not_found"

    assert (await client.post("/api/datanets", json={"name": "books"})).status == 201
    store = client.app[DATANETS]

    def failing_build(directory: Path, *args: Any) -> None:
        raise InvalidRequest("the index could not be built", param="documents")

    monkeypatch.setattr(store, "_build", failing_build)  # a build failing after screening
    failed = await client.post("/api/datanets/books/documents", params={"contributor": "bob"},
                               data=_lines(TEXTS), headers={"Accept": NDJSON})
    assert failed.status == 200  # the stream had begun
    events = [json.loads(line) for line in (await failed.read()).splitlines()]
    assert events[0]["progress"]["stage"] == "screening"
    assert events[-1] == {"error": {"message": "the index could not be built",
                                    "type": "invalid_request_error", "param": "documents",
                                    "code": "invalid_request"}, "status": 400}
    assert (await (await client.get("/api/datanets/books")).json())["documents"] == 0
