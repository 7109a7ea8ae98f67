"""The operator account's key file: created 0600, refused when others may read it.

The key is a wallet: it never appears in a message, and a file that gives group or others
any access is refused rather than used.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from sync.settlement.errors import SettlementError
from sync.settlement.extra import require_extra

try:
    from eth_account import Account
    from eth_account.signers.local import LocalAccount
except ImportError:  # pragma: no cover - only without the `fleet` extra (see extra.py)
    pass

__all__ = ["create_account_key", "load_account_key"]


def create_account_key(path: Path) -> str:
    """Write a new random secp256k1 private key (hex) to a new file with mode 0600.

    Refuses to overwrite an existing file (``FileExistsError``). Returns the account's
    checksum address.
    """
    require_extra()
    account = Account.from_key(_random_key())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write("0x" + bytes(account.key).hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return str(account.address)


def _random_key() -> bytes:
    order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    while True:
        candidate = secrets.token_bytes(32)
        if 0 < int.from_bytes(candidate, "big") < order:
            return candidate


def load_account_key(path: Path) -> LocalAccount:
    """The account whose private key ``path`` holds (hex, optional ``0x``).

    Raises :class:`SettlementError` when the file gives group or others any access (the
    key is a wallet: ``chmod 600`` it) or does not hold a key. The key never appears in a
    message.
    """
    require_extra()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SettlementError(f"cannot read account key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise SettlementError(f"account key {path} is not a regular file")
        if mode & 0o077:
            raise SettlementError(
                f"account key {path} has mode {stat.S_IMODE(mode):04o}, which lets group or "
                f"others access it; run: chmod 600 {path}")
        text = handle.read(200).strip()
    hex_key = text[2:] if text.lower().startswith("0x") else text
    try:
        key = bytes.fromhex(hex_key)
        if len(key) != 32:
            raise ValueError("not 32 bytes")
        return Account.from_key(key)
    except ValueError:
        raise SettlementError(
            f"account key {path} does not hold a 32-byte hex private key") from None
