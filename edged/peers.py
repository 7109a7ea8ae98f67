"""Trusted peer keys and known peer addresses.

A peer's key is accepted for sync only once enrolled (``edged peers trust KEY``);
addresses come from static configuration (``peers`` setting) or discovery, and
are only hints. Trust lives in ``<data_dir>/peers.json`` (written atomically).
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.errors import InvalidRequest, NotFound

KEY_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def validate_key(key: str) -> str:
    key = key.strip().lower() if isinstance(key, str) else ""
    if not KEY_PATTERN.match(key):
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


class PeerStore:
    def __init__(self, path: Path, *, own_key: str) -> None:
        self.path = path
        self.own_key = own_key
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        trusted: dict[str, dict[str, Any]] = data.get("trusted", {})
        return trusted

    def _save(self, trusted: dict[str, dict[str, Any]]) -> None:
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".peers-")
        with open(fd, "w", encoding="utf-8") as handle:
            json.dump({"trusted": trusted}, handle, indent=2, sort_keys=True)
        Path(temp).replace(self.path)

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
            trusted = self._load()
            entry = trusted.setdefault(key, {"label": label, "added": int(time.time())})
            if label:
                entry["label"] = label
            self._save(trusted)
        return TrustedPeer(key, entry["label"], entry["added"])

    def untrust(self, key: str) -> None:
        key = validate_key(key)
        with self._lock:
            trusted = self._load()
            if trusted.pop(key, None) is None:
                raise NotFound("that key is not trusted", param="key")
            self._save(trusted)
