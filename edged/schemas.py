"""Typed requests, validated from JSON bodies.

Validation turns any bad field into :class:`InvalidRequest` naming the
``param``; nothing downstream sees an unchecked value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from edged.errors import InvalidRequest
from runtimes import ChatMessage, GenerationParams

T = TypeVar("T")
MAX_STOP_SEQUENCES = 4
MAX_EMBEDDING_INPUTS = 256
ROLES = ("system", "user", "assistant", "developer")
MAX_KEEP_ALIVE = 365 * 24 * 3600.0
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class GenerateRequest:
    """A chat or completion request."""

    kind: str  # "chat" or "completion"
    model: str
    prompt: str | tuple[ChatMessage, ...]
    params: GenerationParams
    stream: bool
    include_usage: bool  # stream_options.include_usage
    keep_alive: float | None

    def committed_input(self) -> dict[str, Any]:
        """What the receipt's ``in`` commitment covers (never stored itself)."""
        if isinstance(self.prompt, str):
            return {"prompt": self.prompt}
        return {"messages": [[m.role, m.content] for m in self.prompt]}


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    keep_alive: float | None


def _get(body: dict[str, Any], name: str, check: Callable[[Any], bool], expected: str,
         default: Any = None, *, required: bool = False) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise InvalidRequest(f"'{name}' is required", param=name)
        return default
    value = body[name]
    if not check(value):
        raise InvalidRequest(f"'{name}' must be {expected}", param=name)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def parse_keep_alive(value: Any) -> float | None:
    """Seconds as a number, or a duration like ``"5m"``, ``"30s"``, ``"-1"`` (as Ollama).
    Anything beyond ``MAX_KEEP_ALIVE`` means forever (-1)."""
    seconds: float | None = None
    if value is None:
        return None
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds is None or not math.isfinite(seconds):
        raise InvalidRequest("'keep_alive' must be seconds or a duration like '5m'",
                             param="keep_alive")
    return -1.0 if seconds > MAX_KEEP_ALIVE else seconds


def _text(value: str, param: str) -> str:
    """Strings must be valid Unicode text (JSON allows lone surrogates; UTF-8 does not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"'{param}' is not valid Unicode text", param=param) from None
    return value


def _params(body: dict[str, Any], default_max_tokens: int) -> GenerationParams:
    max_tokens = _get(body, "max_tokens", lambda v: _is_int(v) and v >= 1,
                      "a positive integer")
    if max_tokens is None:
        max_tokens = _get(body, "max_completion_tokens", lambda v: _is_int(v) and v >= 1,
                          "a positive integer", default_max_tokens)
    temperature = _get(body, "temperature", lambda v: _is_number(v) and 0 <= v <= 2,
                       "a number between 0 and 2", 1.0)
    top_p = _get(body, "top_p", lambda v: _is_number(v) and 0 < v <= 1,
                 "a number in (0, 1]", 1.0)
    seed = _get(body, "seed", _is_int, "an integer")
    stop = _get(body, "stop", lambda v: isinstance(v, str) or (
        isinstance(v, list) and len(v) <= MAX_STOP_SEQUENCES
        and all(isinstance(s, str) and s for s in v)),
        f"a string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings", [])
    stops = tuple(_text(s, "stop") for s in ((stop,) if isinstance(stop, str) else stop))
    _get(body, "n", lambda v: _is_int(v) and v == 1, "1 (one choice per request)")
    cache_prompt = _get(body, "cache_prompt", lambda v: isinstance(v, bool), "a boolean", True)
    return GenerationParams(max_tokens=max_tokens, temperature=float(temperature),
                            top_p=float(top_p), stop=tuple(s for s in stops if s), seed=seed,
                            cache_prompt=cache_prompt)


def _message(index: int, raw: Any) -> ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{param}' must be an object", param=param)
    role = raw.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"'{param}.role' must be one of {list(ROLES)}", param=param)
    content = raw.get("content")
    if isinstance(content, list):  # content parts: only text is supported
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise InvalidRequest(f"'{param}.content' parts must be text", param=param)
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise InvalidRequest(f"'{param}.content' must be a string", param=param)
    return ChatMessage("system" if role == "developer" else role, _text(content, param))


def _common(body: Any) -> tuple[str, float | None, bool, bool]:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = _get(body, "model", lambda v: _is_str(v) and 0 < len(v) <= 128,
                 "a model name", required=True)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    stream = _get(body, "stream", lambda v: isinstance(v, bool), "a boolean", False)
    options = _get(body, "stream_options", lambda v: isinstance(v, dict), "an object", {})
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise InvalidRequest("'stream_options.include_usage' must be a boolean",
                             param="stream_options")
    return model, keep_alive, stream, include_usage


def parse_chat(body: Any, *, default_max_tokens: int) -> GenerateRequest:
    model, keep_alive, stream, include_usage = _common(body)
    raw_messages = _get(body, "messages", lambda v: isinstance(v, list) and len(v) > 0,
                        "a non-empty list of messages", required=True)
    messages = tuple(_message(i, m) for i, m in enumerate(raw_messages))
    return GenerateRequest("chat", model, messages, _params(body, default_max_tokens), stream,
                           include_usage, keep_alive)


def parse_completion(body: Any, *, default_max_tokens: int) -> GenerateRequest:
    model, keep_alive, stream, include_usage = _common(body)
    prompt = _get(body, "prompt", lambda v: isinstance(v, str) or (
        isinstance(v, list) and len(v) == 1 and isinstance(v[0], str)),
        "a string", required=True)
    prompt = _text(prompt if isinstance(prompt, str) else prompt[0], "prompt")
    return GenerateRequest("completion", model, prompt, _params(body, default_max_tokens),
                           stream, include_usage, keep_alive)


def parse_embeddings(body: Any) -> EmbeddingRequest:
    model, keep_alive, _, _ = _common(body)
    raw = _get(body, "input", lambda v: isinstance(v, str) or (
        isinstance(v, list) and 0 < len(v) <= MAX_EMBEDDING_INPUTS
        and all(isinstance(s, str) for s in v)),
        f"a string or a list of 1-{MAX_EMBEDDING_INPUTS} strings", required=True)
    _get(body, "encoding_format", lambda v: v in ("float", "base64"), "'float' or 'base64'")
    inputs = tuple(_text(text, "input") for text in ((raw,) if isinstance(raw, str) else raw))
    return EmbeddingRequest(model, inputs, keep_alive)
