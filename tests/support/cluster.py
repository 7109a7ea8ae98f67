"""Helpers for multi-node sync tests: traffic, trust, and waiting for convergence."""

from __future__ import annotations

import json
import time

from edged.devtools.daemon import Daemon


def add_tiny_model(node: Daemon, model_file: str, context_length: int) -> None:
    node.cli("models", "add", model_file, "--name", "tiny", "--context-length",
             str(context_length), "--chat-format", "none")


def trust_each_other(nodes: list[Daemon]) -> None:
    keys = [json.loads(n.cli("keys", "show").stdout)["public_key"] for n in nodes]
    for node, own in zip(nodes, keys, strict=True):
        for key in keys:
            if key != own:
                node.cli("peers", "trust", key)


def serve_traffic(node: Daemon, count: int) -> None:
    for number in range(count):
        answer = node.request_json("POST", "/v1/completions",
                                   {"model": "tiny", "prompt": f"r{number}", "max_tokens": 2})
        assert answer["status"] == 200, answer


def held(node: Daemon) -> dict[str, int]:
    status = node.request_json("GET", "/api/sync/status")["body"]
    return {o["origin"]: o["held"] for o in status["origins"]}


def own_log(node: Daemon) -> tuple[str, int]:
    info = node.request_json("GET", "/api/node")["body"]
    return info["public_key"], info["receipts"]


def converged(nodes: list[Daemon]) -> bool:
    sizes = dict(own_log(node) for node in nodes)
    for node in nodes:
        key, _ = own_log(node)
        if held(node) != {k: v for k, v in sizes.items() if k != key}:
            return False
    return True


def wait_converged(nodes: list[Daemon], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            node.cli("sync", "now")
        if converged(nodes):
            return
        time.sleep(0.3)
    raise AssertionError(f"no convergence: {[(own_log(n), held(n)) for n in nodes]}")


def wait_discovered(nodes: list[Daemon], needle: str, timeout: float = 45) -> None:
    """Until every node lists the others (lines containing ``needle``) via mDNS."""
    deadline = time.monotonic() + timeout
    listings: list[str] = []
    while time.monotonic() < deadline:
        listings = [n.cli("peers").stdout for n in nodes]
        if all(text.count(needle) >= len(nodes) - 1 for text in listings):
            return
        time.sleep(0.3)
    raise AssertionError(f"peers not discovered: {listings}")


def stop_serve_restart_converge(nodes: list[Daemon]) -> None:
    """Traffic everywhere, converge; stop one node, more traffic, restart, converge."""
    for node in nodes:
        serve_traffic(node, 4)
    wait_converged(nodes)
    stopped = nodes[-1]
    stopped.stop()
    serve_traffic(nodes[0], 3)
    serve_traffic(nodes[1], 2)
    stopped.start()
    wait_converged(nodes)
    for node in nodes:
        sizes = held(node)
        assert len(sizes) == len(nodes) - 1 and all(size > 0 for size in sizes.values())
