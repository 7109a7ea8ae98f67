"""The node's keys: an Ed25519 signing key and an HMAC commitment key.

Both live in ``<data_dir>/keys`` (mode 0700) in files of mode 0600, created on
first start. The commitment key never leaves the node: with it, an auditor on
the node can check that a receipt commits to a given prompt; without it, the
commitments reveal nothing.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from nacl.signing import SigningKey

from attribution.commitments import COMMITMENT_KEY_BYTES

logger = logging.getLogger(__name__)

SIGNING_KEY_FILE = "node.ed25519"
COMMITMENT_KEY_FILE = "commitment.key"


@dataclass(frozen=True)
class NodeKeys:
    signing_key: SigningKey
    commitment_key: bytes

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def fingerprint(self) -> str:
        """Short, stable id of the node: the first 16 hex digits of its public key."""
        return self.public_key.hex()[:16]


def _read_or_create_secret(path: Path, size: int) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            raise PermissionError(f"key file {path.name} must not be a symlink") from None
        if mode & 0o077:
            logger.warning("key file %s had mode %o; tightening to 0600", path.name, mode)
            path.chmod(0o600)
        data = path.read_bytes()
        if len(data) != size:
            raise ValueError(f"key file {path.name} is corrupt (wrong length)") from None
        return data
    data = secrets.token_bytes(size)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    logger.info("created key file %s", path.name)
    return data


def load_or_create_keys(keys_dir: Path) -> NodeKeys:
    """Load the node keys, creating them (0600 files in a 0700 folder) on first use."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys_dir.chmod(0o700)
    seed = _read_or_create_secret(keys_dir / SIGNING_KEY_FILE, 32)
    commitment = _read_or_create_secret(keys_dir / COMMITMENT_KEY_FILE, COMMITMENT_KEY_BYTES)
    return NodeKeys(SigningKey(seed), commitment)


NODE_KEYS = web.AppKey("node_keys", NodeKeys)
"""The node's signing and commitment keys: ``app[NODE_KEYS]``."""
