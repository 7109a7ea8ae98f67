"""Signed sync requests: the caller's node key over method, path, timestamp, nonce and body.

See DESIGN.md, "Sync". A request carries four headers:

- ``X-Edged-Node``: the caller's 32-byte Ed25519 public key, lowercase hex;
- ``X-Edged-Timestamp``: unix milliseconds, decimal;
- ``X-Edged-Nonce``: 16 random bytes, lowercase hex;
- ``X-Edged-Signature``: the Ed25519 signature, lowercase hex, over
  ``b"edged/sync-request/v1\\0" + canonical({"method", "path", "ts", "nonce", "body"})``
  where ``body`` is the SHA-256 of the request body and ``path`` the raw path with
  its query string (as received, e.g. aiohttp's ``request.path_qs``).

:class:`RequestVerifier` refuses a request with :class:`AuthError` status 401 when
a header is missing or malformed, the signature is bad, the timestamp is more than
``window_ms`` from its clock, or the ``(key, nonce)`` pair was already accepted
within the window; and with its subclass :class:`UntrustedCaller` (403) when the
signature is valid but the key is not trusted. Nonces are remembered only for
accepted requests and only until their timestamp leaves the window, so memory is
bounded by the trusted peers' request
rate times twice the window; untrusted or unauthenticated callers add nothing.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Mapping

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from attribution import canonical
from sync.clock import unix_millis
from sync.errors import EdgedError

SIGNATURE_DOMAIN = b"edged/sync-request/v1\0"
HEADER_NODE = "X-Edged-Node"
HEADER_TIMESTAMP = "X-Edged-Timestamp"
HEADER_NONCE = "X-Edged-Nonce"
HEADER_SIGNATURE = "X-Edged-Signature"
NONCE_SIZE = 16
DEFAULT_WINDOW_MS = 30_000
_HEX = frozenset("0123456789abcdef")
_MAX_TS_DIGITS = 20  # 2**64 - 1 has 20 digits


class AuthError(EdgedError):
    """A sync request is refused: missing or malformed headers, a bad signature, a stale
    timestamp or a replayed nonce (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class UntrustedCaller(AuthError):
    """A well-signed sync request from a key this node does not trust (403)."""

    status = 403
    type = "permission_error"
    code = "forbidden"


def signing_bytes(method: str, path_qs: str, body: bytes, ts_ms: int, nonce: bytes,
                  audience: bytes | None = None) -> bytes:
    """What the caller signs: the domain, then the canonical request summary.

    ``method`` is upper-cased so ``get`` and ``GET`` sign alike. ``audience`` is the
    public key of the node the request is meant for: a request signed for one node is
    refused by every other, so it cannot be replayed elsewhere.
    """
    summary: dict[str, object] = {
        "method": method.upper(),
        "path": path_qs,
        "ts": ts_ms,
        "nonce": nonce,
        "body": hashlib.sha256(body).digest(),
    }
    if audience is not None:
        summary["aud"] = audience
    return SIGNATURE_DOMAIN + canonical.encode(summary)


def sign_request(key: SigningKey, method: str, path_qs: str, body: bytes, ts_ms: int,
                 nonce: bytes, audience: bytes | None = None) -> dict[str, str]:
    """The four ``X-Edged-*`` headers that authenticate this request as ``key``'s.

    ``nonce`` must be 16 fresh random bytes (``os.urandom(16)``) per request;
    ``audience`` the receiving node's public key (see :func:`signing_bytes`).
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    if not 0 <= ts_ms < 2**64:
        raise ValueError("ts_ms must be unix milliseconds")
    signature = key.sign(signing_bytes(method, path_qs, body, ts_ms, nonce, audience)).signature
    return {
        HEADER_NODE: bytes(key.verify_key).hex(),
        HEADER_TIMESTAMP: str(ts_ms),
        HEADER_NONCE: nonce.hex(),
        HEADER_SIGNATURE: signature.hex(),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive; HTTP header names are not
        lowered = name.lower()
        for key, item in headers.items():
            if key.lower() == lowered:
                value = item
                break
    if value is None:
        raise AuthError(f"missing {name} header")
    return value


def _hex_header(headers: Mapping[str, str], name: str, size: int) -> bytes:
    value = _header(headers, name)
    if len(value) != 2 * size or not set(value) <= _HEX:
        raise AuthError(f"{name} must be {size} bytes of lowercase hex")
    return bytes.fromhex(value)


class RequestVerifier:
    """Checks signed sync requests and remembers accepted nonces (per instance)."""

    def __init__(self, trusted: Callable[[bytes], bool], *, window_ms: int = DEFAULT_WINDOW_MS,
                 clock_ms: Callable[[], int] = unix_millis, audience: bytes | None = None) -> None:
        """``trusted(key)`` says whether a 32-byte public key is enrolled.

        A request's timestamp must be within ``window_ms`` of ``clock_ms()``. With
        ``audience`` (this node's public key), only requests signed for it are accepted.
        """
        self._audience = audience
        if window_ms <= 0:
            raise ValueError("window_ms must be positive")
        self._trusted = trusted
        self._window_ms = window_ms
        self._clock_ms = clock_ms
        self._seen: set[tuple[bytes, bytes]] = set()
        self._expiry: list[tuple[int, bytes, bytes]] = []  # min-heap of (ts + window, key, nonce)

    def precheck(self, headers: Mapping[str, str]) -> bytes:
        """Everything that can be checked before the body is read: well-formed headers,
        a fresh timestamp, a trusted key and an unused nonce. Raises :class:`AuthError`;
        changes no state. A server calls this before it reads a large body, then
        :meth:`verify` with the body (which repeats these checks and adds the signature)."""
        key, nonce, _, ts_ms = self._fields(headers)
        now = self._check_fresh(ts_ms)
        if not self._trusted(key):
            raise UntrustedCaller("the caller's key is not trusted")
        self._evict(now)
        if (key, nonce) in self._seen:
            raise AuthError("replayed request")
        return key

    def verify(self, method: str, path_qs: str, headers: Mapping[str, str],
               body: bytes) -> bytes:
        """Return the caller's public key, or raise :class:`AuthError` (401 or 403).

        A refused request changes no state; an accepted one records its nonce.
        """
        key, nonce, signature, ts_ms = self._fields(headers)
        now = self._check_fresh(ts_ms)
        try:
            VerifyKey(key).verify(signing_bytes(method, path_qs, body, ts_ms, nonce,
                                                self._audience), signature)
        except (CryptoError, ValueError):
            raise AuthError("bad request signature") from None
        if not self._trusted(key):
            raise UntrustedCaller("the caller's key is not trusted")
        self._evict(now)
        if (key, nonce) in self._seen:
            raise AuthError("replayed request")
        self._seen.add((key, nonce))
        heapq.heappush(self._expiry, (ts_ms + self._window_ms, key, nonce))
        return key

    @staticmethod
    def _fields(headers: Mapping[str, str]) -> tuple[bytes, bytes, bytes, int]:
        """(key, nonce, signature, timestamp) from the headers; 401 when malformed."""
        key = _hex_header(headers, HEADER_NODE, 32)
        nonce = _hex_header(headers, HEADER_NONCE, NONCE_SIZE)
        signature = _hex_header(headers, HEADER_SIGNATURE, 64)
        ts_text = _header(headers, HEADER_TIMESTAMP)
        if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > _MAX_TS_DIGITS:
            raise AuthError(f"{HEADER_TIMESTAMP} must be unix milliseconds")
        ts_ms = int(ts_text)
        if ts_ms >= 2**64 or str(ts_ms) != ts_text:
            raise AuthError(f"{HEADER_TIMESTAMP} must be unix milliseconds")
        return key, nonce, signature, ts_ms

    def _check_fresh(self, ts_ms: int) -> int:
        """The clock now; 401 when ``ts_ms`` is outside the window."""
        now = self._clock_ms()
        if abs(now - ts_ms) > self._window_ms:
            raise AuthError("stale request: timestamp outside the window")
        return now

    def remembered(self) -> int:
        """How many nonces are held (for tests and metrics)."""
        return len(self._seen)

    def _evict(self, now: int) -> None:
        # A nonce whose timestamp left the window cannot be replayed: the request is stale.
        while self._expiry and self._expiry[0][0] < now:
            _, key, nonce = heapq.heappop(self._expiry)
            self._seen.discard((key, nonce))
