"""Trusted peer keys and known peer addresses.

A peer's key is accepted for sync only once enrolled (``edged peers trust KEY``);
addresses come from static configuration (``peers`` setting) or discovery, and
are only hints. Trust lives in ``<data_dir>/peers.json`` (written atomically).

:meth:`PeerStore.is_trusted` runs for every sync request, on the event loop: it answers from
a copy of the file held in memory, read again only when the file's identity (inode, size,
modification time in ns) differs from the copy's, as after an edit by ``edged peers trust``
in another process; the store's own writes replace the copy directly.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from edged.errors import InvalidRequest, NotFound
from edged.files import atomic_write_text

KEY_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def validate_key(key: str) -> str:
    key = key.strip().lower() if isinstance(key, str) else ""
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidRequest("a node key is 64 hex digits (see `edged keys show`)", param="key")
    return key


@dataclass(frozen=True)
class TrustedPeer:
    key: str  # hex Ed25519 public key
    label: str
    added: int  # unix seconds

    @property
    def fingerprint(self) -> str:
        return self.key[:16]


FileIdentity = tuple[int, int, int]  # (inode, size, mtime_ns); changes with every write


@dataclass(frozen=True)
class _TrustedFile:
    """The trusted entries of peers.json as read, and the identity of the file read."""

    identity: FileIdentity | None  # None: there was no file
    trusted: dict[str, dict[str, Any]]


def _identity(status: os.stat_result) -> FileIdentity:
    return status.st_ino, status.st_size, status.st_mtime_ns


class PeerStore:
    def __init__(self, path: Path, *, own_key: str) -> None:
        self.path = path
        self.own_key = own_key
        self._lock = threading.Lock()  # one writer of this process at a time
        self._cached: _TrustedFile | None = None  # replaced whole, never changed in place

    def _load(self) -> dict[str, dict[str, Any]]:
        """The trusted entries now (read from the file only when it changed). Callers
        must not change the dict or its entries: it is the cached copy."""
        try:
            identity: FileIdentity | None = _identity(os.stat(self.path))
        except FileNotFoundError:
            identity = None
        cached = self._cached
        if cached is None or identity != cached.identity:
            cached = self._cached = self._read()
        return cached.trusted

    def _read(self) -> _TrustedFile:
        try:
            with open(self.path, encoding="utf-8") as handle:
                # The identity of the file this text came from (a rename may follow).
                identity = _identity(os.fstat(handle.fileno()))
                data = json.loads(handle.read())
        except FileNotFoundError:
            return _TrustedFile(None, {})
        trusted: dict[str, dict[str, Any]] = data.get("trusted", {})
        return _TrustedFile(identity, trusted)

    def _save(self, trusted: dict[str, dict[str, Any]]) -> None:
        written = atomic_write_text(self.path, json.dumps({"trusted": trusted}, indent=2,
                                                          sort_keys=True), mode=0o600)
        self._cached = _TrustedFile(_identity(written), trusted)  # a rename keeps all three

    def _editable(self) -> dict[str, dict[str, Any]]:
        """A copy of the trusted entries to change and save."""
        return {key: dict(entry) for key, entry in self._load().items()}

    def trusted(self) -> list[TrustedPeer]:
        return [TrustedPeer(key, entry.get("label", ""), entry.get("added", 0))
                for key, entry in sorted(self._load().items())]

    def is_trusted(self, key: bytes) -> bool:
        return key.hex() in self._load()

    def trust(self, key: str, label: str = "") -> TrustedPeer:
        key = validate_key(key)
        if key == self.own_key:
            raise InvalidRequest("a node does not need to trust itself", param="key")
        if len(label) > 64:
            raise InvalidRequest("labels are at most 64 characters", param="label")
        with self._lock:
            trusted = self._editable()
            entry = trusted.setdefault(key, {"label": label, "added": int(time.time())})
            if label:
                entry["label"] = label
            self._save(trusted)
        return TrustedPeer(key, entry["label"], entry["added"])

    def untrust(self, key: str) -> None:
        key = validate_key(key)
        with self._lock:
            trusted = self._editable()
            if trusted.pop(key, None) is None:
                raise NotFound("that key is not trusted", param="key")
            self._save(trusted)


PEERS = web.AppKey("peers", PeerStore)
"""The trusted peer keys: ``app[PEERS]``."""
