"""A small HTTP client of the daemon, used by every CLI command but ``serve``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from edged.models import file_sha256
from edged.settings import Settings


class DaemonError(Exception):
    """The daemon answered with an error, or could not be reached."""


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

    def upload_blob(self, path: Path) -> str:
        """Upload a weights file unless the daemon has it already; return its digest."""
        digest = "sha256:" + file_sha256(path)
        head = self.http.head(f"/api/blobs/{digest}")
        if head.status_code != 200:
            with path.open("rb") as handle:
                self.request("PUT", f"/api/blobs/{digest}", content=handle,
                             headers={"Content-Type": "application/octet-stream"})
        return digest
