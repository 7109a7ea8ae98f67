"""The root of edged's one exception hierarchy, importable by every package of ours.

Each error class carries its HTTP status, OpenAI error ``type`` and ``code`` as class
attributes, never set per instance; ``edged.http.common`` renders any of them in the shape
of the protocol a path belongs to. The root lives in ``sync`` because ``sync`` raises
errors of its own (``sync.auth.AuthError``) and may not import ``edged``;
``edged.errors`` re-exports it beside the daemon's errors. Messages never contain prompts,
outputs, paths or secrets.
"""

from __future__ import annotations

from typing import Any


class EdgedError(Exception):
    """An error the daemon answers with ``status``, ``type`` and ``code``."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error shape of this error."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
