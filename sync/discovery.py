"""Zeroconf (mDNS / DNS-SD) discovery of edged peers on the LAN.

See DESIGN.md, "Sync". Every node advertises the service type
``_edged._tcp.local.`` under the instance name ``edged-<id>`` with three TXT
keys: ``id`` (the node key fingerprint, 16 hex digits), ``v`` (the sync
protocol version) and ``port`` (the HTTP port of its sync API). It also browses
for the same type and keeps a table of the peers it has resolved.

Discovery is an untrusted hint: anyone on the segment can advertise anything.
A record whose TXT does not validate is ignored (logged once per service name
at debug level), a record claiming this node's own id is ignored, and nothing
learnt here grants trust; a peer's key must still be enrolled before its sync
requests are accepted.

One :class:`Discovery` (hence one ``AsyncZeroconf``) per process: the daemon
creates exactly one and shares it. Several instances in one process work (the
tests do that, all on ``127.0.0.1``) but each opens its own mDNS sockets.

Interfaces are always explicit. Production passes the LAN addresses to
advertise on; tests pass ``["127.0.0.1"]`` or run inside a network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_edged._tcp.local."
PROTOCOL_VERSION = 1
RESOLVE_TIMEOUT_MS = 3000
_MAX_LOGGED_NAMES = 1024

_NODE_ID = re.compile(rb"[0-9a-fA-F]{16}")
_DECIMAL = re.compile(rb"[0-9]{1,9}")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscoveredPeer:
    """A peer seen on the LAN: a hint of where a node might be reached, nothing more.

    ``node_id`` is the (lowercase) key fingerprint the peer claims, ``addresses``
    the IP addresses of its mDNS host record, ``port`` its sync port from TXT,
    ``version`` its protocol version and ``last_seen`` the unix time (seconds)
    at which its record was last resolved.
    """

    node_id: str
    addresses: tuple[str, ...]
    port: int
    version: int
    last_seen: float


@dataclass(frozen=True)
class TxtRecord:
    """The validated TXT fields of an ``_edged._tcp`` advertisement."""

    node_id: str
    version: int
    port: int


def parse_txt(properties: Mapping[bytes, bytes | None]) -> TxtRecord | str:
    """Validate TXT properties; return the record, or a short reason why it is rejected.

    ``id`` must be 16 hex digits (normalised to lowercase), ``v`` a plain
    decimal integer and ``port`` a decimal integer in 1..65535. No signs,
    spaces, underscores or non-ASCII digits are accepted.
    """
    node_id = properties.get(b"id")
    version = properties.get(b"v")
    port = properties.get(b"port")
    if node_id is None or not _NODE_ID.fullmatch(node_id):
        return "id is not 16 hex digits"
    if version is None or not _DECIMAL.fullmatch(version):
        return "v is not an integer"
    if port is None or not _DECIMAL.fullmatch(port) or not 1 <= int(port) <= 65535:
        return "port is not in 1..65535"
    return TxtRecord(node_id=node_id.decode("ascii").lower(), version=int(version),
                     port=int(port))


def _advertised_addresses(interfaces: Sequence[str]) -> list[bytes]:
    """The packed IP addresses to put in our A/AAAA records, from the interface list."""
    packed: list[bytes] = []
    for interface in interfaces:
        try:
            address = ipaddress.ip_address(interface.split("%", 1)[0])
        except ValueError as exc:
            raise ValueError(f"interface {interface!r} is not an IP address") from exc
        if address.is_unspecified:
            raise ValueError("interfaces must name addresses, not the unspecified address")
        packed.append(address.packed)
    if not packed:
        raise ValueError("at least one interface address is required")
    return packed


class Discovery:
    """Advertise this node over zeroconf and keep a table of the peers seen.

    Create one per process (it owns one ``AsyncZeroconf``), ``await start()``
    inside the running event loop, read :meth:`peers` at any time and ``await
    close()`` on shutdown, which sends goodbye packets so that peers drop this
    node at once. ``on_change`` is called (in the event loop, without
    arguments) whenever the peer table changes; it must not block.
    """

    def __init__(
        self,
        node_id: str,
        port: int,
        *,
        interfaces: Sequence[str],
        version: int = PROTOCOL_VERSION,
        instance_name: str | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id.encode()):
            raise ValueError("node_id must be a 16 hex digit key fingerprint")
        if not 1 <= port <= 65535:
            raise ValueError("port must be in 1..65535")
        if not 0 <= version < 10**9:
            raise ValueError("version must be a non-negative integer below 10**9")
        if isinstance(interfaces, str):
            raise TypeError("interfaces is a sequence of addresses, not one string")
        self.node_id = node_id.lower()
        self.port = port
        self.version = version
        self.interfaces = list(interfaces)
        self.instance_name = instance_name or f"edged-{self.node_id}"
        self._addresses = _advertised_addresses(self.interfaces)
        self._on_change = on_change
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._peers: dict[str, DiscoveredPeer] = {}  # by service name
        self._resolving: dict[str, asyncio.Task[None]] = {}  # by service name
        self._logged: set[str] = set()
        self._closed = False

    @property
    def service_name(self) -> str | None:
        """Our registered service name (it may differ from the requested one after a conflict)."""
        return self._info.name if self._info is not None else None

    async def start(self) -> None:
        """Open the mDNS sockets, register our service and start browsing for peers."""
        if self._zc is not None:
            raise RuntimeError("discovery already started")
        if self._closed:
            raise RuntimeError("discovery was closed")
        ip_version = (IPVersion.V4Only if all(len(a) == 4 for a in self._addresses)
                      else IPVersion.V6Only if all(len(a) == 16 for a in self._addresses)
                      else IPVersion.All)
        self._zc = AsyncZeroconf(interfaces=self.interfaces, ip_version=ip_version)
        try:
            self._info = AsyncServiceInfo(
                SERVICE_TYPE,
                f"{self.instance_name}.{SERVICE_TYPE}",
                addresses=self._addresses,
                port=self.port,
                properties={"id": self.node_id, "v": str(self.version), "port": str(self.port)},
                server=f"{self.instance_name}.local.",
            )
            # Someone else may hold the name (a stale record, or a squatter): peers are
            # identified by TXT id, so take a new name rather than fail to advertise.
            registered = await self._zc.async_register_service(self._info,
                                                               allow_name_change=True)
            await registered
            self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE,
                                                handlers=[self._on_state_change])
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop browsing, unregister (goodbye packets) and close the sockets. Idempotent."""
        self._closed = True
        tasks = list(self._resolving.values())
        self._resolving.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        zc, self._zc = self._zc, None
        browser, self._browser = self._browser, None
        if browser is not None:
            await browser.async_cancel()
        if zc is not None:
            # async_close unregisters every service (sending goodbyes) before closing.
            await zc.async_close()
        self._peers.clear()

    def peers(self) -> list[DiscoveredPeer]:
        """Peers currently advertised, excluding this node, one per node id, sorted by id.

        When several services claim one id, the most recently resolved one wins.
        """
        by_id: dict[str, DiscoveredPeer] = {}
        for peer in self._peers.values():
            known = by_id.get(peer.node_id)
            if known is None or peer.last_seen >= known.last_seen:
                by_id[peer.node_id] = peer
        return [by_id[node_id] for node_id in sorted(by_id)]

    def _on_state_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                         state_change: ServiceStateChange) -> None:
        """Browser callback (event loop): resolve added/updated services, drop removed ones."""
        if self._closed or service_type != SERVICE_TYPE:
            return
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        if state_change is ServiceStateChange.Removed:
            self._forget(name)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name))
        self._resolving[name] = task
        task.add_done_callback(lambda done: self._resolve_done(name, done))

    def _resolve_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]
        if not task.cancelled() and task.exception() is not None:
            logger.warning("resolving %s failed", name, exc_info=task.exception())

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        """Resolve one service's SRV/TXT/A records without blocking the loop."""
        if name == self.service_name:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            # It vanished before answering, or never answered completely.
            self._ignore(name, "did not resolve")
            self._forget(name)
            return
        txt = parse_txt(info.properties)
        if isinstance(txt, str):
            self._ignore(name, txt)
            self._forget(name)
            return
        if txt.node_id == self.node_id:
            self._ignore(name, "claims our own id")
            self._forget(name)
            return
        addresses = tuple(info.parsed_scoped_addresses())
        if not addresses:
            self._ignore(name, "has no address")
            self._forget(name)
            return
        peer = DiscoveredPeer(node_id=txt.node_id, addresses=addresses, port=txt.port,
                              version=txt.version, last_seen=time.time())
        known = self._peers.get(name)
        self._peers[name] = peer
        if known is None or (known.node_id, known.addresses, known.port, known.version) != (
                peer.node_id, peer.addresses, peer.port, peer.version):
            logger.debug("peer %s at %s port %d (v%d) via %s", peer.node_id,
                         ", ".join(addresses), peer.port, peer.version, name)
            self._changed()

    def _forget(self, name: str) -> None:
        if self._peers.pop(name, None) is not None:
            logger.debug("peer service %s is gone", name)
            self._changed()

    def _ignore(self, name: str, reason: str) -> None:
        """Log an ignored advertisement at debug level, once per service name."""
        if name in self._logged:
            return
        if len(self._logged) >= _MAX_LOGGED_NAMES:
            self._logged.clear()
        self._logged.add(name)
        logger.debug("ignoring discovered service %s: %s", name, reason)

    def _changed(self) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:
            logger.exception("discovery on_change callback failed")
