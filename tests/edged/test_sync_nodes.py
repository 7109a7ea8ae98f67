"""Three real nodes on loopback find each other over zeroconf (127.0.0.1 only), trust
each other, serve traffic and converge; a node stopped during traffic catches up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_CONTEXT
from tests.support.daemon import Daemon, clean_environment

pytestmark = pytest.mark.subprocess
NODES = 3


def _serve(node: Daemon, count: int) -> None:
    for number in range(count):
        response = httpx.post(node.url + "/v1/completions", json={
            "model": "tiny", "prompt": f"r{number}", "max_tokens": 2}, timeout=30)
        assert response.status_code == 200, response.text


def _held(node: Daemon) -> dict[str, int]:
    status = httpx.get(node.url + "/api/sync/status", timeout=10).json()
    return {o["origin"]: o["held"] for o in status["origins"]}


def _own(node: Daemon) -> tuple[str, int]:
    info = httpx.get(node.url + "/api/node", timeout=10).json()
    return info["public_key"], info["receipts"]


def _converged(nodes: list[Daemon]) -> bool:
    sizes = dict(_own(node) for node in nodes)
    for node in nodes:
        key, _ = _own(node)
        expected = {k: v for k, v in sizes.items() if k != key}
        if _held(node) != expected:
            return False
    return True


def _wait_converged(nodes: list[Daemon], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            node.cli("sync", "now")
        if _converged(nodes):
            return
        time.sleep(0.3)
    raise AssertionError(f"no convergence: {[(_own(n), _held(n)) for n in nodes]}")


@pytest.fixture
def nodes(tmp_path: Path, tiny_model_file: Path) -> Iterator[list[Daemon]]:
    env = clean_environment(EDGED_MDNS_INTERFACES="127.0.0.1", EDGED_SYNC_INTERVAL="0.5",
                            EDGED_CHECKPOINT_INTERVAL="0.5")
    started = [Daemon(tmp_path / f"node{i}" / "data", env=env).start() for i in range(NODES)]
    try:
        for node in started:
            node.cli("models", "add", str(tiny_model_file), "--name", "tiny",
                     "--context-length", str(TINY_CONTEXT))
        keys = [json.loads(n.cli("keys", "show").stdout)["public_key"] for n in started]
        for node, own in zip(started, keys, strict=True):
            for key in keys:
                if key != own:
                    node.cli("peers", "trust", key)
        yield started
    finally:
        for node in started:
            node.stop()


def test_nodes_discover_each_other_and_converge(nodes: list[Daemon]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # discovery over mDNS on 127.0.0.1
        listings = [n.cli("peers").stdout for n in nodes]
        if all(text.count("http://127.0.0.1:") >= NODES - 1 for text in listings):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"peers not discovered: {listings}")
    for node in nodes:
        _serve(node, 4)
    _wait_converged(nodes)

    stopped = nodes[2]
    stopped.stop()
    _serve(nodes[0], 3)
    _serve(nodes[1], 2)
    stopped.start()
    _wait_converged(nodes)
    for node in nodes:
        held = _held(node)
        assert len(held) == NODES - 1 and all(size > 0 for size in held.values())
