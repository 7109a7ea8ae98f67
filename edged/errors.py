"""One exception hierarchy; each error knows its HTTP status and OpenAI type/code.

The root, :class:`EdgedError`, is defined in :mod:`sync.errors` (``sync`` raises errors
of its own and may not import ``edged``) and re-exported here. Statuses, types and codes
are class attributes. The HTTP layer (``edged.http.common.error_response``) renders any
:class:`EdgedError` in its path's protocol shape with ``status``; anything else becomes a
500 whose message reveals nothing about the internals. Messages never contain prompts,
outputs, paths or secrets.
"""

from __future__ import annotations

from sync.errors import EdgedError as EdgedError
from sync.errors import error_body as error_body


class InvalidRequest(EdgedError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class UnsupportedParameter(InvalidRequest):
    """A request field (or value) edged does not implement; ``param`` names it."""

    code = "unsupported_parameter"


class Unauthorized(EdgedError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(EdgedError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(EdgedError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(EdgedError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(EdgedError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(EdgedError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Unsupported(EdgedError):
    status = 400
    type = "invalid_request_error"
    code = "unsupported"


class RetryLater(EdgedError):
    """A refusal the client should retry after ``retry_after`` seconds (``Retry-After``)."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class Overloaded(RetryLater):
    """The model's wait queue is full."""

    status = 503
    type = "server_error"
    code = "queue_full"


class TooManyRequests(RetryLater):
    """Too many requests of one kind at once."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class NotReady(EdgedError):
    status = 503
    type = "server_error"
    code = "not_ready"


class InternalError(EdgedError):
    pass
