"""SIGKILL under load: no acknowledged receipt is lost, and the chain stays whole."""

from __future__ import annotations

import base64
import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from attribution.chain import verify_chain
from edged.devtools.daemon import Daemon
from tests.conftest import TINY_CONTEXT

pytestmark = pytest.mark.subprocess
ROUNDS = 4
WORKERS = 8
MIN_ACKS_PER_ROUND = 10


def _load(url: str, worker: int, stop: threading.Event, acknowledged: set[str]) -> None:
    """Send requests until told to stop; remember every receipt id the daemon returned."""
    with httpx.Client(base_url=url, timeout=10) as client:
        count = 0
        while not stop.is_set():
            count += 1
            if worker % 2:
                request = ("/v1/embeddings", {"model": "tiny", "input": f"w{worker}-{count}"})
            else:
                request = ("/v1/completions", {"model": "tiny", "prompt": f"p{count}",
                                               "max_tokens": 2})
            try:
                response = client.post(request[0], json=request[1])
            except httpx.HTTPError:
                continue  # the daemon died mid-request: nothing was acknowledged
            if response.status_code == 200:
                acknowledged.add(response.json()["receipt"]["id"])


def _all_raw(url: str) -> list[bytes]:
    raws: list[bytes] = []
    after = -1
    while True:
        page = httpx.get(url + "/v1/receipts", params={"after_seq": after, "limit": 1000}).json()
        raws += [base64.b64decode(r["raw"]) for r in page["data"]]
        after = page["next_after_seq"]
        if not page["has_more"]:
            return raws


def test_sigkill_under_load_keeps_every_acknowledged_receipt(tmp_path: Path,
                                                             tiny_model_file: Path) -> None:
    node = Daemon(tmp_path / "data").start()
    node.cli("models", "add", str(tiny_model_file), "--name", "tiny",
             "--context-length", str(TINY_CONTEXT), "--chat-format", "none")
    acknowledged: set[str] = set()
    rng = random.Random(1234)
    try:
        for _ in range(ROUNDS):
            stop = threading.Event()
            workers = [threading.Thread(target=_load, args=(node.url, i, stop, acknowledged))
                       for i in range(WORKERS)]
            for worker in workers:
                worker.start()
            # Kill at a random moment once this round is really under load.
            target = len(acknowledged) + MIN_ACKS_PER_ROUND
            deadline = time.monotonic() + 60
            while len(acknowledged) < target and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            node.kill()
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
            node.start()
        raws = _all_raw(node.url)
        report = verify_chain(raws)
        assert report.ok, report.problems
        stored = {r["id"] for r in
                  (httpx.get(node.url + f"/v1/receipts/{i}").json() for i in acknowledged)}
        assert stored == acknowledged
        assert len(acknowledged) >= ROUNDS * MIN_ACKS_PER_ROUND  # the load was real
        assert "OK" in node.cli("receipts", "verify").stdout
    finally:
        node.stop()
