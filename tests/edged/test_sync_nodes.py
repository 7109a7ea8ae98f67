"""Three real nodes find each other over zeroconf, trust each other, serve traffic and
converge (every receipt of every origin held by every node once); a node stopped during
traffic catches up. On loopback (127.0.0.1 only), and in network namespaces joined by
veth pairs through a bridge."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.devtools.daemon import Daemon, clean_environment
from tests.conftest import TINY_CONTEXT
from tests.support.cluster import (
    add_tiny_model,
    serve_traffic,
    stop_serve_restart_converge,
    trust_each_other,
    wait_converged,
    wait_discovered,
)

pytestmark = pytest.mark.subprocess
NODES = 3
FAST = {"EDGED_SYNC_INTERVAL": "0.5", "EDGED_CHECKPOINT_INTERVAL": "0.5"}


def _start_cluster(nodes: list[Daemon], model_file: Path) -> list[Daemon]:
    for node in nodes:
        node.start()
        add_tiny_model(node, str(model_file), TINY_CONTEXT)
    trust_each_other(nodes)
    return nodes


@pytest.fixture
def loopback_nodes(tmp_path: Path, tiny_model_file: Path) -> Iterator[list[Daemon]]:
    env = clean_environment(EDGED_MDNS_INTERFACES="127.0.0.1", **FAST)
    nodes = [Daemon(tmp_path / f"node{i}" / "data", env=env) for i in range(NODES)]
    try:
        yield _start_cluster(nodes, tiny_model_file)
    finally:
        for node in nodes:
            node.stop()


def test_loopback_nodes_discover_each_other_and_converge(loopback_nodes: list[Daemon]) -> None:
    wait_discovered(loopback_nodes, "http://127.0.0.1:")
    stop_serve_restart_converge(loopback_nodes)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[list[tuple[str, str]]]:
    """A hub namespace with a bridge, and one namespace per node on a veth pair to it."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.fail("network namespace tests need iproute2 and root (CI has both)")
    tag = f"ed{os.getpid() % 100000}"
    hub = f"{tag}hub"
    made: list[str] = []
    try:
        _ip("netns", "add", hub)
        made.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        nodes = []
        for index in range(NODES):
            name, address = f"{tag}n{index}", f"10.77.{os.getpid() % 200}.{index + 1}"
            _ip("netns", "add", name)
            made.append(name)
            inside, outside = f"v{tag}{index}", f"p{tag}{index}"
            _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            _ip("link", "set", inside, "netns", name)
            _ip("link", "set", outside, "netns", hub)
            _ip("-n", hub, "link", "set", outside, "master", "br0")
            _ip("-n", hub, "link", "set", outside, "up")
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", name, "link", "set", inside, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", inside)
            nodes.append((name, address))
        yield nodes
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def test_nodes_in_network_namespaces_converge(namespaces: list[tuple[str, str]],
                                              tmp_path: Path, tiny_model_file: Path) -> None:
    nodes = []
    for index, (name, address) in enumerate(namespaces):
        # A non-loopback bind needs API keys; peers authenticate by node signature.
        env = clean_environment(EDGED_MDNS_INTERFACES=address, EDGED_API_KEYS="test-key",
                                **FAST)
        nodes.append(Daemon(tmp_path / f"ns{index}" / "data", env=env, namespace=name,
                            host=address, port=3343))
    try:
        _start_cluster(nodes, tiny_model_file)
        wait_discovered(nodes, "http://10.77.")
        stop_serve_restart_converge(nodes)
    finally:
        for node in nodes:
            node.stop()


def test_static_peers_sync_without_mdns(tmp_path: Path, tiny_model_file: Path) -> None:
    first, second = (Daemon(tmp_path / f"static{i}" / "data") for i in range(2))
    first.env = clean_environment(EDGED_PEERS=second.url, **FAST)
    second.env = clean_environment(EDGED_PEERS=first.url, **FAST)
    nodes = [first, second]
    try:
        _start_cluster(nodes, tiny_model_file)
        assert "http://127.0.0.1:" in first.cli("peers").stdout
        for node in nodes:
            serve_traffic(node, 3)
        wait_converged(nodes)
    finally:
        for node in nodes:
            node.stop()
