"""A hostile peer that trickles its answers holds up nothing: each exchange with a peer has
a deadline, peers of a round are met at once, and the fleet push runs apart from the peer
rounds. Real node apps and a real fleet manager on 127.0.0.1; the hostile peer is a raw
asyncio server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from edged.app import create_app
from edged.exchange import EXCHANGE, ExchangeService
from edged.fleet.api import FLEET
from edged.fleet.app import create_fleet_app
from edged.manifest import RUNTIMES
from edged.settings import Settings
from tests.edged.conftest import FAKE_MODEL, fake_loader, install_fake_model, make_settings
from tests.support.waiting import wait_until

Client = TestClient[Any, web.Application]

DEADLINE_S = 2.0  # the lowered per-peer deadline of the tests that wait it out
WAIT_S = 60.0  # the most any test waits for something that should take well under a second
LONG_DEADLINE_S = 600.0  # a stuck exchange outlives the test
TRICKLE_PAUSE_S = 0.1
TRICKLE_BYTES = 6000  # ten minutes of one byte at a time: longer than any test


class TricklingPeer:
    """Answers any request with a 200 and its headers, then one byte at a time, never
    done. Records whether (and for what) it was asked."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.closing = asyncio.Event()
        self.paths: list[str] = []
        self.answering: set[asyncio.Task[Any]] = set()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.answering.add(task)
        try:
            request_line = await reader.readline()
            await reader.readuntil(b"\r\n\r\n")
            self.paths.append(request_line.split()[1].decode())
            self.asked.set()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000\r\n\r\n")
            for _ in range(TRICKLE_BYTES):
                if self.closing.is_set() or reader.at_eof():  # or the caller gave up
                    break
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(TRICKLE_PAUSE_S)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the caller gave up on us
        finally:
            writer.close()
            self.answering.discard(task)


@pytest.fixture
async def trickling() -> AsyncIterator[tuple[TricklingPeer, str]]:
    peer = TricklingPeer()
    server = await asyncio.start_server(peer.answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield peer, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        peer.closing.set()  # each answer ends after its next byte
        await asyncio.wait_for(asyncio.gather(*peer.answering), WAIT_S)
        await server.wait_closed()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings(data_dir=tmp_path / "fleet-data", install_demo_model=False)
    async with TestClient(TestServer(create_fleet_app(settings))) as client:
        yield client


async def _node(aiohttp_client: Any, data_dir: Path, **settings: Any) -> Client:
    """A real node app (fake runtime). Its own sync loop is left idle (a long interval):
    the tests run rounds themselves."""
    install_fake_model(data_dir)
    node: Client = await aiohttp_client(create_app(
        make_settings(data_dir, sync_interval=3600.0, **settings), loader=fake_loader(),
        runtimes=RUNTIMES))
    return node


def _url(client: Client) -> str:
    return str(client.make_url("")).rstrip("/")


async def _key(node: Client) -> str:
    key: str = (await (await node.get("/api/node")).json())["public_key"]
    return key


async def _trust_each_other(first: Client, second: Client) -> None:
    first_key, second_key = await _key(first), await _key(second)
    assert (await first.post("/api/peers/trust", json={"key": second_key})).status == 201
    assert (await second.post("/api/peers/trust", json={"key": first_key})).status == 201


async def _join_fleet(node: Client, fleet: Client) -> None:
    """The node trusts the fleet's key and the fleet enrolls the node."""
    trusted = await node.post("/api/peers/trust", json={"key": fleet.app[FLEET].origin.hex()})
    assert trusted.status == 201
    enrolled = await fleet.post("/fleet/nodes", json={"node": await _key(node)})
    assert enrolled.status in (200, 201), await enrolled.text()


async def _serve(node: Client, count: int) -> None:
    for number in range(count):
        reply = await node.post("/v1/completions", json={"model": FAKE_MODEL,
                                                         "prompt": f"p{number}",
                                                         "max_tokens": 2})
        assert reply.status == 200


async def _held_of(node: Client, origin: Client) -> Callable[[], int]:
    """How many receipts of ``origin``'s log ``node`` holds, as a function to poll."""
    key = bytes.fromhex(await _key(origin))
    return lambda: node.app[EXCHANGE].replicas.size(key)


async def _asked(peer: TricklingPeer) -> None:
    try:
        await asyncio.wait_for(peer.asked.wait(), WAIT_S)
    except TimeoutError:
        raise AssertionError("the trickling peer was never asked") from None


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_an_honest_peer_syncs_while_a_trickling_peer_hangs(
        tmp_path: Path, aiohttp_client: Any,
        trickling: tuple[TricklingPeer, str]) -> None:
    """The stuck peer comes first in the list and never finishes, yet the honest peer
    after it is synced in the same round."""
    hostile, hostile_url = trickling
    node = await _node(aiohttp_client, tmp_path / "node")
    honest = await _node(aiohttp_client, tmp_path / "honest")
    await _trust_each_other(node, honest)
    await _serve(honest, 3)
    exchange: ExchangeService = node.app[EXCHANGE]
    exchange.peer_deadline_s = LONG_DEADLINE_S
    held = await _held_of(node, honest)

    sync_round = asyncio.create_task(exchange.sync_round([hostile_url, _url(honest)]))
    try:
        await _asked(hostile)
        # The receipts are stored (in the ingest thread) before the exchange resumes and
        # records its success: wait for both.
        await wait_until(lambda: held() == 3 and exchange.states[_url(honest)].last_ok
                         is not None, what="the honest peer's receipts and success",
                         timeout=WAIT_S)
        assert not sync_round.done()  # the hostile exchange is still stuck
        assert exchange.states[hostile_url].failures == 0
        assert hostile.paths[0].startswith("/v1/sync/hello?")
    finally:
        await _stop(sync_round)


async def test_a_trickling_peer_fails_at_the_deadline_and_the_round_goes_on(
        tmp_path: Path, aiohttp_client: Any,
        trickling: tuple[TricklingPeer, str]) -> None:
    hostile, hostile_url = trickling
    node = await _node(aiohttp_client, tmp_path / "node")
    honest = await _node(aiohttp_client, tmp_path / "honest")
    await _trust_each_other(node, honest)
    await _serve(honest, 3)
    exchange: ExchangeService = node.app[EXCHANGE]
    exchange.peer_deadline_s = DEADLINE_S

    results = await asyncio.wait_for(exchange.sync_round([hostile_url, _url(honest)]),
                                     DEADLINE_S + WAIT_S)
    timeout = f"TimeoutError: not done within {DEADLINE_S:g} s"
    assert results == {hostile_url: f"error: {timeout}", _url(honest): "ok: 3 new"}
    state = exchange.states[hostile_url]
    assert (state.failures, state.last_error, state.last_ok) == (1, timeout, None)
    assert state.next_attempt > 0  # it backs off like any failing peer
    assert exchange.states[_url(honest)].failures == 0
    assert (await _held_of(node, honest))() == 3

    # Backing off: the next round (not forced) leaves the hostile peer alone.
    assert await exchange.sync_round([hostile_url, _url(honest)]) == {
        _url(honest): "ok: 0 new"}
    assert len(hostile.paths) == 1


async def test_sync_now_answers_within_about_the_deadline(
        tmp_path: Path, aiohttp_client: Any, fleet: Client,
        trickling: tuple[TricklingPeer, str]) -> None:
    hostile, hostile_url = trickling
    honest = await _node(aiohttp_client, tmp_path / "honest")
    node = await _node(aiohttp_client, tmp_path / "node", fleet_url=_url(fleet),
                       peers=(hostile_url, _url(honest)))
    await _trust_each_other(node, honest)
    await _join_fleet(node, fleet)
    await _serve(honest, 3)
    await _serve(node, 2)
    node.app[EXCHANGE].peer_deadline_s = DEADLINE_S

    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await asyncio.wait_for(node.post("/api/sync/now"), DEADLINE_S + WAIT_S)
    elapsed = loop.time() - started
    assert reply.status == 200
    timeout = f"TimeoutError: not done within {DEADLINE_S:g} s"
    assert await reply.json() == {
        "peers": {hostile_url: f"error: {timeout}", _url(honest): "ok: 3 new"},
        "fleet": {_url(fleet): "ok: 2 new"}}
    assert elapsed >= DEADLINE_S  # the hostile peer had its whole deadline
    assert hostile.asked.is_set()

    status = await (await node.get("/api/sync/status")).json()
    by_url = {peer["url"]: peer for peer in status["peers"]}
    assert by_url[hostile_url]["last_error"] == timeout
    assert by_url[hostile_url]["failures"] == 1
    assert by_url[_url(honest)]["last_error"] is None
    assert status["fleet"]["stored"] == 2 and status["fleet"]["last_error"] is None


def _run_every(exchange: ExchangeService, interval_s: float, fleet_url: str,
               urls: list[str]) -> asyncio.Task[None]:
    """The background sync loop of ``exchange``, run often, with ``fleet_url``."""
    exchange.settings = dataclasses.replace(exchange.settings, sync_interval=interval_s,
                                            fleet_url=fleet_url)
    return asyncio.create_task(exchange.run_forever(lambda: urls))


async def test_the_fleet_push_does_not_wait_for_a_stuck_peer_round(
        tmp_path: Path, aiohttp_client: Any, fleet: Client,
        trickling: tuple[TricklingPeer, str]) -> None:
    hostile, hostile_url = trickling
    node = await _node(aiohttp_client, tmp_path / "node")
    await _join_fleet(node, fleet)
    exchange: ExchangeService = node.app[EXCHANGE]
    exchange.peer_deadline_s = LONG_DEADLINE_S
    loops = _run_every(exchange, 0.05, _url(fleet), [hostile_url])
    try:
        await _asked(hostile)  # a peer round is now stuck
        await _serve(node, 2)  # receipts made after it got stuck

        def pushed() -> int:
            state = exchange.states.get(_url(fleet))
            return state.received if state else 0

        await wait_until(lambda: pushed() == 2, what="the push of the new receipts",
                         timeout=WAIT_S)
        assert exchange.states[hostile_url].failures == 0  # still stuck all along
        assert exchange.states[hostile_url].last_error is None
    finally:
        await _stop(loops)


async def test_peer_rounds_do_not_wait_for_a_stuck_fleet_push(
        tmp_path: Path, aiohttp_client: Any,
        trickling: tuple[TricklingPeer, str]) -> None:
    hostile, hostile_url = trickling
    node = await _node(aiohttp_client, tmp_path / "node")
    honest = await _node(aiohttp_client, tmp_path / "honest")
    await _trust_each_other(node, honest)
    exchange: ExchangeService = node.app[EXCHANGE]
    exchange.peer_deadline_s = LONG_DEADLINE_S
    held = await _held_of(node, honest)
    loops = _run_every(exchange, 0.05, hostile_url, [_url(honest)])
    try:
        await _asked(hostile)  # the fleet push is now stuck
        await _serve(honest, 2)  # receipts made after it got stuck
        await wait_until(lambda: held() == 2, what="the pull of the new receipts",
                         timeout=WAIT_S)
        assert exchange.states[hostile_url].failures == 0  # still stuck all along
    finally:
        await _stop(loops)


async def test_a_deadline_after_progress_is_no_failure(tmp_path: Path,
                                                       aiohttp_client: Any) -> None:
    """A long backlog cut short by the deadline keeps what came and goes on at the next
    round, without backing off."""
    node = await _node(aiohttp_client, tmp_path / "node")
    exchange: ExchangeService = node.app[EXCHANGE]
    exchange.peer_deadline_s = 0.2
    url = "http://127.0.0.1:9"  # never contacted: the action below stands in for pulling

    async def five_then_stuck(client: Any, peer_url: str) -> int:
        exchange.states[peer_url].received += 5
        await asyncio.Event().wait()
        return 5

    results = await asyncio.wait_for(
        exchange.sync_round([url], action=five_then_stuck), WAIT_S)
    timeout = "TimeoutError: not done within 0.2 s"
    assert results == {url: f"partial: 5 new, {timeout}"}
    state = exchange.states[url]
    assert (state.failures, state.next_attempt, state.last_error) == (0, 0.0, timeout)
    assert state.received == 5


async def test_a_round_meets_at_most_parallel_peers_at_once(tmp_path: Path,
                                                           aiohttp_client: Any) -> None:
    node = await _node(aiohttp_client, tmp_path / "node")
    exchange: ExchangeService = node.app[EXCHANGE]
    urls = [f"http://127.0.0.1:{port}" for port in range(9001, 9007)]
    running, peak = 0, 0

    async def count_at_once(client: Any, url: str) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return 0

    results = await asyncio.wait_for(
        exchange.sync_round(urls, action=count_at_once), WAIT_S)
    assert results == {url: "ok: 0 new" for url in urls}
    assert peak == exchange.parallel_peers == 4
