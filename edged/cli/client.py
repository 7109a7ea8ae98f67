"""A small HTTP client of the daemon, used by every CLI command but ``serve``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from edged.errors import EdgedError
from edged.settings import Settings

CHUNK_BYTES = 1 << 20
NDJSON = "application/x-ndjson"
Advance = Callable[[int], None]  # told how many more bytes were hashed or sent


def read_chunks(path: Path, advance: Advance | None = None) -> Iterator[bytes]:
    """The file's bytes in 1 MiB chunks, each chunk's size told to ``advance``."""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk
            if advance is not None:
                advance(len(chunk))


def file_digest(path: Path, advance: Advance | None = None) -> str:
    """``sha256:<hex>`` of the file, the bytes hashed so far told to ``advance``."""
    digest = hashlib.sha256()
    for chunk in read_chunks(path, advance):
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()


class DaemonError(EdgedError):
    """The daemon answered with an error, or could not be reached.

    Raised on the client's side only (the CLI turns it into its one-line error, see
    ``edged.cli.common.daemon_errors``); as part of the one hierarchy it says what it would
    be as an answer of ours: a bad gateway, the daemon being what stands behind the client.
    """

    status = 502
    type = "server_error"
    code = "daemon_error"


class DaemonClient:
    def __init__(self, base_url: str, api_key: str | None = None,
                 timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> DaemonClient:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        host = f"[{host}]" if ":" in host else host
        api_key = settings.api_keys[0] if settings.api_keys else None
        return cls(url or f"http://{host}:{settings.port}", api_key)

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DaemonError(f"cannot reach the daemon at {self.http.base_url}: {exc}") from None
        return self._decode(response)

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise DaemonError(f"{response.status_code} {error.get('code') or ''}: "
                              f"{error.get('message') or response.reason_phrase}")
        return body

    def stream_completion(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Yield the parsed SSE events of a streamed completion."""
        try:
            with self.http.stream("POST", path, json={**body, "stream": True}) as response:
                if response.status_code >= 400:
                    response.read()
                    self._decode(response)
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    payload = line.removeprefix("data: ")
                    if payload == "[DONE]":
                        return
                    yield json.loads(payload)
        except httpx.HTTPError as exc:
            raise DaemonError(f"cannot reach the daemon at {self.http.base_url}: {exc}") from None

    def upload_blob(self, path: Path, *, hashed: Advance | None = None,
                    sent: Advance | None = None) -> str:
        """Upload a weights file unless the daemon has it already; return its digest.
        ``hashed`` and ``sent`` are told the bytes hashed and uploaded as they go."""
        digest = file_digest(path, hashed)
        head = self.http.head(f"/api/blobs/{digest}")
        if head.status_code != 200:
            self.send_file("PUT", f"/api/blobs/{digest}", path, sent=sent)
        return digest

    def send_file(self, method: str, path: str, file: Path, *, sent: Advance | None = None,
                  **kwargs: Any) -> Any:
        """``request`` with ``file`` as the body, streamed in chunks whose sizes are told to
        ``sent`` (with a Content-Length, as a file body would have)."""
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Length": str(file.stat().st_size), **kwargs.pop("headers", {})}
        return self.request(method, path, content=read_chunks(file, sent), headers=headers,
                            **kwargs)

    def request_with_progress(self, method: str, path: str,
                              on_progress: Callable[[dict[str, Any]], None],
                              **kwargs: Any) -> Any:
        """``request``, asking the daemon to stream its progress as JSON Lines (``Accept:
        application/x-ndjson``): each ``{"progress": {...}}`` line goes to ``on_progress``,
        the final ``{"result": ...}`` line is the answer, and an ``{"error": {...},
        "status": n}`` line raises ``DaemonError``. A plain JSON answer (errors found
        before any progress) is read as ``request`` reads it."""
        headers = {"Accept": NDJSON, **kwargs.pop("headers", {})}
        try:
            with self.http.stream(method, path, headers=headers, **kwargs) as response:
                if not response.headers.get("Content-Type", "").startswith(NDJSON):
                    response.read()
                    return self._decode(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        raise DaemonError("the daemon sent a malformed progress line") from None
                    if "progress" in event:
                        on_progress(event["progress"])
                    elif "error" in event:
                        error = event["error"]
                        raise DaemonError(f"{event.get('status', 500)} {error.get('code') or ''}"
                                          f": {error.get('message')}")
                    elif "result" in event:
                        return event["result"]
        except httpx.HTTPError as exc:
            raise DaemonError(f"cannot reach the daemon at {self.http.base_url}: {exc}") from None
        raise DaemonError("the daemon's progress stream ended without a result")
