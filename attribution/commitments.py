"""Keyed commitments to inputs and outputs.

A receipt never holds raw text, nor an unkeyed hash of it (short prompts can
be brute-forced): it holds HMAC-SHA256 under a node-local commitment key over
the canonical encoding of the value. Whoever holds the key and the text can
check a commitment; nobody else learns anything from it.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from attribution import canonical

COMMITMENT_KEY_BYTES = 32


def commit(key: bytes, value: Any) -> bytes:
    """HMAC-SHA256(key, canonical(value)); 32 bytes."""
    if len(key) < COMMITMENT_KEY_BYTES:
        raise ValueError("commitment key must be at least 32 bytes")
    return hmac.new(key, canonical.encode(value), hashlib.sha256).digest()


def digest(value: Any) -> bytes:
    """Unkeyed SHA-256 of canonical(value): for parameters and evidence, never for text."""
    return hashlib.sha256(canonical.encode(value)).digest()
