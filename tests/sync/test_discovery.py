"""Zeroconf discovery: peers find each other on 127.0.0.1, drop the departed, ignore bad TXT.

Every instance runs with ``interfaces=["127.0.0.1"]``, never the host's default
interfaces. Node ids and instance names are random per test, and assertions only
look at this test's own ids, so concurrent runs on one host do not disturb each
other. Several ``AsyncZeroconf`` instances in one process see each other
there: their sockets share port 5353 (SO_REUSEPORT), join the group on the
loopback interface and have multicast loopback on, so each datagram sent to
224.0.0.251 over ``lo`` is delivered to all of them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from sync.discovery import (
    SERVICE_TYPE,
    DiscoveredPeer,
    Discovery,
    TxtRecord,
    parse_txt,
)

LOOPBACK = ["127.0.0.1"]
DEADLINE = 8.0  # seconds; discovery on loopback normally settles in well under one


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds, failing with ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def new_id() -> str:
    """A random node id (key fingerprint)."""
    return secrets.token_hex(8)


def peer_map(discovery: Discovery) -> dict[str, DiscoveredPeer]:
    """The peers ``discovery`` currently knows, by node id."""
    return {peer.node_id: peer for peer in discovery.peers()}


def sees_exactly(discovery: Discovery, ids: set[str], among: set[str]) -> Callable[[], bool]:
    """A condition: of the ids in ``among``, ``discovery`` knows exactly ``ids``."""
    return lambda: set(peer_map(discovery)) & among == ids


@pytest.fixture
async def nodes() -> AsyncIterator[list[Discovery]]:
    """Three started Discovery instances on 127.0.0.1 with distinct ids and ports."""
    changes = [0, 0, 0]

    def counter(index: int) -> Callable[[], None]:
        def bump() -> None:
            changes[index] += 1
        return bump

    started = [
        Discovery(new_id(), 18100 + index, interfaces=LOOPBACK,
                  version=index + 1, on_change=counter(index))
        for index in range(3)
    ]
    try:
        await asyncio.gather(*(node.start() for node in started))
        yield started
    finally:
        await asyncio.gather(*(node.close() for node in started))
    assert all(count > 0 for count in changes), changes


async def test_nodes_see_each_other_and_not_themselves(nodes: list[Discovery]) -> None:
    ids = {node.node_id for node in nodes}
    for node in nodes:
        await wait_for(sees_exactly(node, ids - {node.node_id}, ids),
                       f"{node.node_id} to see the other two nodes")
    for node in nodes:
        seen = peer_map(node)
        assert node.node_id not in seen
        for other in nodes:
            if other is node:
                continue
            peer = seen[other.node_id]
            assert peer.port == other.port
            assert peer.version == other.version
            assert "127.0.0.1" in peer.addresses
            assert peer.last_seen > 0


async def test_closed_node_is_dropped(nodes: list[Discovery]) -> None:
    first, second, third = nodes
    ids = {node.node_id for node in nodes}
    for node in nodes:
        await wait_for(sees_exactly(node, ids - {node.node_id}, ids), "full mesh")
    await third.close()
    await wait_for(sees_exactly(first, {second.node_id}, ids), "first to drop the closed node",
                   timeout=5.0)
    await wait_for(sees_exactly(second, {first.node_id}, ids), "second to drop the closed node",
                   timeout=5.0)
    assert third.peers() == []


async def test_updated_txt_is_picked_up() -> None:
    watcher = Discovery(new_id(), 18200, interfaces=LOOPBACK)
    moving = new_id()
    instance = f"edged-moving-{secrets.token_hex(4)}"
    zc = AsyncZeroconf(interfaces=LOOPBACK)
    try:
        await asyncio.gather(watcher.start(), register(
            zc, raw_service(instance, {"id": moving, "v": "1", "port": "18201"})))
        await wait_for(lambda: moving in peer_map(watcher), "the peer")
        assert peer_map(watcher)[moving].port == 18201
        moved = raw_service(instance, {"id": moving, "v": "2", "port": "18202"})
        await (await zc.async_update_service(moved))
        await wait_for(lambda: peer_map(watcher)[moving].port == 18202, "the new port")
        assert peer_map(watcher)[moving].version == 2
    finally:
        await watcher.close()
        await zc.async_close()


async def register(zc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
    """Register ``info`` and wait until its announcements have gone out."""
    await (await zc.async_register_service(info))


def raw_service(instance: str, properties: dict[str, str]) -> AsyncServiceInfo:
    """A hand-made ``_edged._tcp`` advertisement on 127.0.0.1, TXT as given."""
    return AsyncServiceInfo(
        SERVICE_TYPE, f"{instance}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton("127.0.0.1")], port=18300,
        properties=properties, server=f"{instance}.local.",
    )


def malformed(some_id: str) -> dict[str, dict[str, str]]:
    """Advertisements whose TXT must be rejected, by instance label."""
    return {
        "short-id": {"id": "abc", "v": "1", "port": "18300"},
        "nonhex-id": {"id": "zz" * 8, "v": "1", "port": "18300"},
        "long-id": {"id": some_id + "0", "v": "1", "port": "18300"},
        "word-version": {"id": some_id, "v": "one", "port": "18300"},
        "signed-version": {"id": some_id, "v": "+1", "port": "18300"},
        "port-zero": {"id": some_id, "v": "1", "port": "0"},
        "port-high": {"id": some_id, "v": "1", "port": "65536"},
        "missing-port": {"id": some_id, "v": "1"},
        "empty": {},
    }


async def test_malformed_txt_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sync.discovery")
    own_id, bad_id, good_id = new_id(), new_id(), new_id()
    watcher = Discovery(own_id, 18400, interfaces=LOOPBACK)
    zc = AsyncZeroconf(interfaces=LOOPBACK)
    tag = secrets.token_hex(4)
    bad = {f"bad-{label}-{tag}": txt for label, txt in malformed(bad_id).items()}
    bad[f"bad-own-id-{tag}"] = {"id": own_id, "v": "1", "port": "18300"}  # claims to be us
    control = {f"good-{tag}": {"id": good_id, "v": "7", "port": "18301"}}
    try:
        await asyncio.gather(watcher.start(), *(
            register(zc, raw_service(name, txt)) for name, txt in {**bad, **control}.items()))
        await wait_for(lambda: good_id in peer_map(watcher), "the well-formed control peer")

        def rejected() -> set[str]:
            messages = [record.getMessage() for record in caplog.records]
            return {name for name in bad
                    if any(f"ignoring discovered service {name}.{SERVICE_TYPE}" in message
                           for message in messages)}

        await wait_for(lambda: rejected() == set(bad), "every malformed advertisement rejected")
        seen = peer_map(watcher)
        assert own_id not in seen
        assert bad_id not in seen
        assert (seen[good_id].port, seen[good_id].version) == (18301, 7)
    finally:
        await watcher.close()
        await zc.async_close()


@pytest.mark.parametrize(("properties", "expected"), [
    ({b"id": b"0123456789ABCDEF", b"v": b"1", b"port": b"8080"},
     TxtRecord("0123456789abcdef", 1, 8080)),
    ({b"id": b"0123456789abcdef", b"v": b"3", b"port": b"65535", b"extra": None},
     TxtRecord("0123456789abcdef", 3, 65535)),
    ({b"id": b"0123456789abcdef", b"v": b"1", b"port": b"1"},
     TxtRecord("0123456789abcdef", 1, 1)),
])
def test_parse_txt_accepts(properties: dict[bytes, bytes | None], expected: TxtRecord) -> None:
    assert parse_txt(properties) == expected


@pytest.mark.parametrize("properties", [
    {},
    {b"id": None, b"v": b"1", b"port": b"80"},
    {b"id": b"0123456789abcde", b"v": b"1", b"port": b"80"},
    {b"id": b"0123456789abcdef0", b"v": b"1", b"port": b"80"},
    {b"id": b"0123456789abcdeg", b"v": b"1", b"port": b"80"},
    {b"id": b"0123456789abcdef", b"v": b"-1", b"port": b"80"},
    {b"id": b"0123456789abcdef", b"v": b" 1", b"port": b"80"},
    {b"id": b"0123456789abcdef", b"v": b"1_0", b"port": b"80"},
    {b"id": b"0123456789abcdef", b"v": "\u0661".encode(), b"port": b"80"},
    {b"id": b"0123456789abcdef", b"v": b"1", b"port": b"0"},
    {b"id": b"0123456789abcdef", b"v": b"1", b"port": b"70000"},
    {b"id": b"0123456789abcdef", b"v": b"1", b"port": None},
    {b"id": b"0123456789abcdef", b"v": b"1"},
])
def test_parse_txt_rejects(properties: dict[bytes, bytes | None]) -> None:
    assert isinstance(parse_txt(properties), str)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"node_id": "abc"}, ValueError),
    ({"node_id": "zz" * 8}, ValueError),
    ({"port": 0}, ValueError),
    ({"port": 65536}, ValueError),
    ({"interfaces": []}, ValueError),
    ({"interfaces": ["eth0"]}, ValueError),
    ({"interfaces": ["0.0.0.0"]}, ValueError),
    ({"interfaces": "127.0.0.1"}, TypeError),
])
def test_constructor_validates(kwargs: dict[str, object], error: type[Exception]) -> None:
    arguments: dict[str, object] = {"node_id": "ab" * 8, "port": 8080, "interfaces": LOOPBACK}
    arguments.update(kwargs)
    with pytest.raises(error):
        Discovery(**arguments)  # type: ignore[arg-type]


def test_instance_name_defaults_to_id() -> None:
    discovery = Discovery("AB" * 8, 8080, interfaces=LOOPBACK)
    assert discovery.node_id == "ab" * 8
    assert discovery.instance_name == "edged-" + "ab" * 8
    assert discovery.service_name is None
    assert discovery.peers() == []
