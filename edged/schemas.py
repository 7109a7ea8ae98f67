"""Typed requests, validated from JSON bodies.

Validation turns any bad field into :class:`InvalidRequest` naming the
``param``; nothing downstream sees an unchecked value. Each OpenAI endpoint declares
its request fields once (:data:`CHAT_FIELDS`, :data:`COMPLETION_FIELDS`,
:data:`EMBEDDING_FIELDS`): a field edged does not implement is refused with 400,
never silently ignored, so a client never pays for an answer it did not ask for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from edged.errors import InvalidRequest, UnsupportedParameter
from edged.structured import grammar_for, schema_grammar
from edged.tools import (
    MAX_CALLS,
    Message,
    ToolCall,
    ToolUse,
    conversation,
    native_messages,
    parse_tools,
)
from runtimes import GenerationParams, Prompt

T = TypeVar("T")
MAX_STOP_SEQUENCES = 4
MAX_EMBEDDING_INPUTS = 256
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
MAX_TOP_LOGPROBS = 20
ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_KEEP_ALIVE = 365 * 24 * 3600.0
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class GenerateRequest:
    """A chat or completion request."""

    kind: str  # "chat" or "completion"
    model: str
    prompt: str | tuple[Message, ...]  # a completion's text, or the chat as sent
    params: GenerationParams
    stream: bool
    include_usage: bool  # stream_options.include_usage
    keep_alive: float | None
    tools: ToolUse | None = None  # chat: the tools the model may call, and how

    def committed_input(self) -> dict[str, Any]:
        """What the receipt's ``in`` commitment covers (never stored itself): the prompt,
        or the messages as ``[role, content]`` (a tool turn adds the call id it answers,
        an assistant turn that called tools adds ``[[id, name, arguments], ...]``); the
        grammar (GBNF text) when a response format or a required call constrained the
        answer; and the tools and choice (canonical JSON text) when tools were given."""
        if isinstance(self.prompt, str):
            committed: dict[str, Any] = {"prompt": self.prompt}
        else:
            committed = {"messages": [_committed_message(m) for m in self.prompt]}
        if self.params.grammar is not None:
            committed["grammar"] = self.params.grammar
        if self.tools is not None:
            committed["tools"] = self.tools.committed()
        return committed

    def backend_input(self, renders_tools: bool) -> tuple[Prompt, GenerationParams]:
        """The prompt and parameters for a model: a chat template that renders tools gets
        the tools and the tool turns as they are, any other the conversation with the
        tools described in its system turn (see :mod:`edged.tools`)."""
        if isinstance(self.prompt, str):
            return self.prompt, self.params
        if renders_tools:
            tools = self.tools.openai() if self.tools is not None else ()
            return native_messages(self.prompt), replace(self.params, tools=tools)
        return conversation(self.prompt, self.tools), self.params


def _committed_message(message: Message) -> list[Any]:
    if message.tool_calls:
        return [message.role, message.content,
                [[c.id, c.name, c.arguments] for c in message.tool_calls]]
    if message.tool_call_id is not None:
        return [message.role, message.content, message.tool_call_id]
    return [message.role, message.content]


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    keep_alive: float | None
    encoding_format: str = "float"  # or "base64": little-endian float32 bytes


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


def _never(value: Any) -> bool:
    return False


def _is_zero(value: Any) -> bool:
    return _is_number(value) and value == 0


def _is_empty_list(value: Any) -> bool:
    return isinstance(value, list) and not value


def _is_empty_object(value: Any) -> bool:
    return isinstance(value, dict) and not value


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_metadata(value: Any) -> bool:
    """OpenAI's limits: at most 16 string pairs, keys up to 64 and values up to 512 chars."""
    return isinstance(value, dict) and len(value) <= 16 and all(
        isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
        for k, v in value.items())


@dataclass(frozen=True)
class Ignored:
    """A field accepted, type-checked, and without effect; ``why`` says why that is honest."""

    why: str
    valid: Callable[[Any], bool]
    expected: str
    schema: Mapping[str, Any] = field(default_factory=dict)  # ``valid``, for the OpenAPI document


@dataclass(frozen=True)
class Refused:
    """A field edged does not implement: 400 naming it, except for ``null`` and the
    ``neutral`` value, which asks for exactly what edged does anyway (``tools: []``).
    ``why`` completes the error message "'<field>' is ..."."""

    why: str
    neutral: Callable[[Any], bool] = _never


@dataclass(frozen=True)
class Fields:
    """The one declaration of an endpoint's request fields.

    ``parsed``: parsed below into the typed request, each with the JSON-schema fragment
    of the values the parser accepts (``null`` always means absent); the OpenAPI document
    (:mod:`edged.http.openapi`) is built from these. ``ignored`` and ``refused``: the
    other fields edged knows. Any other field is refused as unknown. Supporting a
    refused field means moving its name from ``refused`` to ``parsed`` and parsing it.
    """

    endpoint: str
    parsed: Mapping[str, Mapping[str, Any]]
    ignored: Mapping[str, Ignored]
    refused: Mapping[str, Refused]

    def check(self, body: dict[str, Any]) -> None:
        """Raise for the first field (in body order) that edged would not honour."""
        for name, value in body.items():
            if name in self.parsed:
                continue
            shown = name if len(name) <= 64 else name[:61] + "..."
            if name in self.ignored:
                rule = self.ignored[name]
                if value is not None and not rule.valid(value):
                    raise InvalidRequest(f"'{shown}' must be {rule.expected}", param=shown)
            elif name in self.refused:
                if value is not None and not self.refused[name].neutral(value):
                    raise UnsupportedParameter(
                        f"'{shown}' is {self.refused[name].why}", param=shown)
            else:
                raise UnsupportedParameter(
                    f"'{shown}' is not a parameter of {self.endpoint}", param=shown)


def _unsupported(reason: str, neutral: Callable[[Any], bool] = _never) -> Refused:
    return Refused(f"not supported: {reason}", neutral)


_USER_ID = Ignored("an end-user id for the provider's abuse monitoring; edged neither "
                   "stores nor logs it", _is_str, "a string", {"type": "string"})
_NUMBER, _INTEGER, _BOOLEAN = {"type": "number"}, {"type": "integer"}, {"type": "boolean"}
_STRING = {"type": "string"}


def _within(low: float, high: float, kind: str = "number") -> dict[str, Any]:
    return {"type": kind, "minimum": low, "maximum": high}


_GENERATION_PARSED: dict[str, Mapping[str, Any]] = {
    "model": {"type": "string", "minLength": 1, "maxLength": 128},
    "stream": _BOOLEAN,
    "stream_options": {"type": "object", "additionalProperties": False, "properties": {
        "include_usage": _BOOLEAN, "include_obfuscation": {"const": False}}},
    "max_tokens": {"type": "integer", "minimum": 1},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    "temperature": _within(0, 2),
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "seed": _INTEGER,
    "stop": {"anyOf": [_STRING, {"type": "array", "maxItems": MAX_STOP_SEQUENCES,
                                 "items": {"type": "string", "minLength": 1}}]},
    "n": {"type": "integer", "minimum": 1, "maximum": 1},
    "keep_alive": {"anyOf": [_NUMBER, {"type": "string", "pattern": _DURATION.pattern}],
                   "description": "seconds, or a duration like '5m'; negative: forever"},
    "cache_prompt": _BOOLEAN,
    # sampling (llama.cpp's native chain) and structured output (a grammar)
    "presence_penalty": _within(-2, 2),
    "frequency_penalty": _within(-2, 2),
    "logit_bias": {"type": "object", "maxProperties": MAX_LOGIT_BIAS,
                   "propertyNames": {"pattern": "^[0-9]{1,9}$"},
                   "additionalProperties": _within(-100, 100)},
    "top_k": _within(0, 100_000, "integer"),
    "min_p": _within(0, 1),
    "repeat_penalty": _within(0, 10),
    "repetition_penalty": _within(0, 10),
    "response_format": {"type": "object", "required": ["type"], "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": {"type": "object"}}},
    "format": {"anyOf": [{"const": "json"}, {"type": "object"}],
               "description": "Ollama's structured output: \"json\" or a JSON schema"},
}
_MESSAGE_SCHEMA = {
    "type": "object", "required": ["role", "content"],
    "properties": {
        "role": {"enum": list(ROLES)},
        "content": {"anyOf": [_STRING, {"type": "array", "items": {
            "type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": _STRING}}}]},
        "tool_calls": {"type": "array", "minItems": 1, "maxItems": MAX_CALLS, "items": {
            "type": "object", "required": ["id", "function"], "properties": {
                "id": _STRING, "type": {"const": "function"},
                "function": {"type": "object", "required": ["name", "arguments"],
                             "properties": {"name": _STRING, "arguments": _STRING}}}}},
        "tool_call_id": _STRING,
    }}
CHAT_FIELDS = Fields(
    "/v1/chat/completions",
    parsed=_GENERATION_PARSED | {
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE_SCHEMA},
        "logprobs": _BOOLEAN,
        "top_logprobs": _within(0, MAX_TOP_LOGPROBS, "integer"),
        "tools": {"type": "array", "items": {"type": "object", "required": ["type"],
                                             "properties": {"type": {"const": "function"}}}},
        "tool_choice": {"anyOf": [{"enum": ["none", "auto", "required"]},
                                  {"type": "object"}]},
    },
    ignored={
        "user": _USER_ID,
        "safety_identifier": _USER_ID,
        "metadata": Ignored("tags for stored completions; edged stores none",
                            _is_metadata, "at most 16 string pairs",
                            {"type": "object", "maxProperties": 16,
                             "propertyNames": {"maxLength": 64},
                             "additionalProperties": {"type": "string", "maxLength": 512}}),
        "service_tier": Ignored("edged has one tier", lambda v: v in ("auto", "default"),
                                "'auto' or 'default'", {"enum": ["auto", "default"]}),
        "parallel_tool_calls": Ignored("every call the model makes is returned; required "
                                       "and named choices make exactly one", _is_bool,
                                       "a boolean", {"type": "boolean"}),
        "prompt_cache_key": Ignored("edged reuses shared prompt prefixes by itself "
                                    "(cache_prompt)", _is_str, "a string", {"type": "string"}),
    },
    refused={
        "functions": _unsupported("deprecated by OpenAI in favour of 'tools'", _is_empty_list),
        "function_call": _unsupported("deprecated by OpenAI in favour of 'tool_choice'",
                                      lambda v: v == "none"),
        "store": _unsupported("edged never stores prompts or outputs", lambda v: v is False),
        "modalities": _unsupported("edged generates text only", lambda v: v == ["text"]),
        "audio": _unsupported("edged generates text only"),
        "prediction": _unsupported("edged has no predicted outputs"),
        "reasoning_effort": _unsupported("edged has no reasoning-effort control"),
        "verbosity": _unsupported("edged has no verbosity control"),
        "web_search_options": _unsupported("edged has no web search"),
        "prompt_cache_retention": _unsupported("edged keeps no prompt cache across loads"),
    })

COMPLETION_FIELDS = Fields(
    "/v1/completions",
    parsed=_GENERATION_PARSED | {
        "prompt": {"anyOf": [_STRING, {"type": "array", "minItems": 1, "maxItems": 1,
                                       "items": _STRING}]},
        "logprobs": _within(0, MAX_TOP_LOGPROBS, "integer"),
    },
    ignored={"user": _USER_ID},
    refused={
        "echo": _unsupported("edged does not echo prompts", lambda v: v is False),
        "best_of": _unsupported("one candidate per request", lambda v: _is_int(v) and v == 1),
        "suffix": _unsupported("edged has no fill-in-the-middle"),
    })

EMBEDDING_FIELDS = Fields(
    "/v1/embeddings",
    parsed={
        "model": _GENERATION_PARSED["model"],
        "input": {"anyOf": [_STRING, {"type": "array", "minItems": 1,
                                      "maxItems": MAX_EMBEDDING_INPUTS, "items": _STRING}]},
        "encoding_format": {"enum": ["float", "base64"]},
        "keep_alive": _GENERATION_PARSED["keep_alive"],
    },
    ignored={"user": _USER_ID},
    refused={"dimensions": _unsupported("edged returns the model's full vectors")},
)

MESSAGE_FIELDS = frozenset({"role", "content", "tool_calls", "tool_call_id"})
"""Chat message keys; any other key with a non-null value (``name``, ``audio``...) is
refused, naming it as ``messages[i].key``."""


def _max_tokens(body: dict[str, Any], default: int) -> int:
    """``max_tokens``, or its newer OpenAI name ``max_completion_tokens``."""
    check, expected = (lambda v: _is_int(v) and v >= 1), "a positive integer"
    old = _get(body, "max_tokens", check, expected)
    new = _get(body, "max_completion_tokens", check, expected)
    if old is not None and new is not None and old != new:
        raise InvalidRequest("'max_tokens' and 'max_completion_tokens' differ; give one",
                             param="max_completion_tokens")
    value: int = old if old is not None else new if new is not None else default
    return value


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The sampler fields beyond temperature and top_p (llama.cpp's native chain)."""
    def number_within(low: float, high: float) -> Callable[[Any], bool]:
        return lambda v: _is_number(v) and low <= v <= high

    penalty = number_within(-2.0, 2.0)  # OpenAI's range
    repeat = _get(body, "repeat_penalty", number_within(0.0, 10.0), "a number within 0..10")
    alias = _get(body, "repetition_penalty", number_within(0.0, 10.0),
                 "a number within 0..10")
    if repeat is not None and alias is not None and repeat != alias:
        raise InvalidRequest("'repeat_penalty' and 'repetition_penalty' differ; give one",
                             param="repetition_penalty")
    bias = _get(body, "logit_bias", lambda v: isinstance(v, dict) and len(v) <= MAX_LOGIT_BIAS,
                f"an object of at most {MAX_LOGIT_BIAS} token ids", {})
    pairs = []
    for token, value in bias.items():
        if not (isinstance(token, str) and token.isdigit() and len(token) <= 9) or not (
                _is_number(value) and -100 <= value <= 100):
            raise InvalidRequest("'logit_bias' maps token ids to numbers within -100..100",
                                 param="logit_bias")
        pairs.append((int(token), float(value)))
    top_k = _get(body, "top_k", lambda v: _is_int(v) and 0 <= v <= 100_000,
                 "an integer within 0..100000")
    min_p = _get(body, "min_p", number_within(0.0, 1.0), "a number within 0..1")
    return {
        "presence_penalty": float(_get(body, "presence_penalty", penalty,
                                       "a number within -2..2", 0.0)),
        "frequency_penalty": float(_get(body, "frequency_penalty", penalty,
                                        "a number within -2..2", 0.0)),
        "repeat_penalty": None if repeat is None and alias is None else float(
            repeat if repeat is not None else alias),
        "logit_bias": tuple(sorted(pairs)),
        "top_k": top_k,
        "min_p": None if min_p is None else float(min_p),
    }


def _structured(body: dict[str, Any]) -> str | None:
    """The grammar for ``response_format`` (OpenAI) or ``format`` (Ollama: "json" or a
    JSON schema)."""
    response_format = body.get("response_format")
    ollama = body.get("format")
    if response_format is not None and ollama is not None:
        raise InvalidRequest("give 'response_format' or 'format', not both", param="format")
    if ollama is not None:
        if ollama == "json":
            return grammar_for({"type": "json_object"}, "format")
        if isinstance(ollama, dict):
            return schema_grammar(ollama, "format")
        raise InvalidRequest("'format' must be \"json\" or a JSON schema", param="format")
    return grammar_for(response_format)


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives per token to return (None: no logprobs). Chat: ``logprobs``
    true and ``top_logprobs`` 0..20; completions: ``logprobs`` 0..20."""
    if not chat:
        value: int | None = _get(body, "logprobs",
                                 lambda v: _is_int(v) and 0 <= v <= MAX_TOP_LOGPROBS,
                                 f"an integer within 0..{MAX_TOP_LOGPROBS}")
        return value
    wanted = _get(body, "logprobs", _is_bool, "a boolean", False)
    top = _get(body, "top_logprobs", lambda v: _is_int(v) and 0 <= v <= MAX_TOP_LOGPROBS,
               f"an integer within 0..{MAX_TOP_LOGPROBS}")
    if top and not wanted:
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if wanted else None


def _params(body: dict[str, Any], default_max_tokens: int, *, chat: bool) -> GenerationParams:
    max_tokens = _max_tokens(body, default_max_tokens)
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
    n = _get(body, "n", lambda v: _is_int(v) and v >= 1, "a positive integer")
    if n is not None and n > 1:
        raise UnsupportedParameter("'n' must be 1: edged answers one choice per request",
                                   param="n")
    cache_prompt = _get(body, "cache_prompt", lambda v: isinstance(v, bool), "a boolean", True)
    return GenerationParams(max_tokens=max_tokens, temperature=float(temperature),
                            top_p=float(top_p), stop=tuple(s for s in stops if s), seed=seed,
                            cache_prompt=cache_prompt, grammar=_structured(body),
                            logprobs=_logprobs(body, chat), **_sampling(body))


def _message(index: int, raw: Any) -> Message:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{param}' must be an object", param=param)
    for key, value in raw.items():
        if key not in MESSAGE_FIELDS and value is not None:
            shown = f"{param}.{key if len(key) <= 64 else key[:61] + '...'}"
            raise UnsupportedParameter(f"'{shown}' is not supported", param=shown)
    role = raw.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"'{param}.role' must be one of {list(ROLES)}", param=param)
    calls = _tool_calls(raw.get("tool_calls"), f"{param}.tool_calls") \
        if role == "assistant" else ()
    if raw.get("tool_calls") is not None and role != "assistant":
        raise InvalidRequest(f"'{param}.tool_calls' is for assistant messages", param=param)
    content = raw.get("content")
    if content is None and calls:
        content = ""
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
    call_id = raw.get("tool_call_id")
    if (role == "tool") != isinstance(call_id, str):
        raise InvalidRequest(f"'{param}.tool_call_id' is required on tool messages, and only "
                             f"there", param=param)
    return Message("system" if role == "developer" else role, _text(content, param), calls,
                   call_id)


def _tool_calls(raw: Any, param: str) -> tuple[ToolCall, ...]:
    """An assistant message's earlier calls: ``[{"id", "type": "function", "function":
    {"name", "arguments"}}]``."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_CALLS:
        raise InvalidRequest(f"'{param}' must be a list of 1-{MAX_CALLS} calls", param=param)
    calls = []
    for call in raw:
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and isinstance(call.get("id"), str)
                and isinstance(function.get("name"), str)
                and isinstance(function.get("arguments"), str)):
            raise InvalidRequest(f"'{param}' items need an id and a function with a name "
                                 f"and arguments (a JSON string)", param=param)
        calls.append(ToolCall(call["id"], function["name"], function["arguments"]))
    return tuple(calls)


def _common(body: Any, fields: Fields) -> tuple[str, float | None]:
    """Check the body against the endpoint's fields; return its model and keep_alive."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    fields.check(body)
    model = _get(body, "model", lambda v: _is_str(v) and 0 < len(v) <= 128,
                 "a model name", required=True)
    return model, parse_keep_alive(body.get("keep_alive"))


def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    """``stream`` and ``stream_options.include_usage``."""
    stream = _get(body, "stream", _is_bool, "a boolean", False)
    options = _get(body, "stream_options", lambda v: isinstance(v, dict), "an object", {})
    for key, value in options.items():
        # include_obfuscation pads chunks against length side channels; edged does not.
        if not (key == "include_usage" or (key == "include_obfuscation" and value is False)):
            raise UnsupportedParameter(f"'stream_options.{key[:64]}' is not supported",
                                       param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise InvalidRequest("'stream_options.include_usage' must be a boolean",
                             param="stream_options")
    return stream, include_usage


def parse_chat(body: Any, *, default_max_tokens: int) -> GenerateRequest:
    model, keep_alive = _common(body, CHAT_FIELDS)
    stream, include_usage = _streaming(body)
    raw_messages = _get(body, "messages", lambda v: isinstance(v, list) and len(v) > 0,
                        "a non-empty list of messages", required=True)
    use = parse_tools(body)
    messages = tuple(_message(i, m) for i, m in enumerate(raw_messages))
    params = _params(body, default_max_tokens, chat=True)
    if use is not None:
        if params.logprobs is not None:
            raise UnsupportedParameter("'logprobs' cannot be combined with tools yet",
                                       param="logprobs")
        grammar = use.grammar()
        if grammar is not None:
            if params.grammar is not None:
                raise InvalidRequest("a required tool call and a response format exclude "
                                     "each other", param="tool_choice")
            params = replace(params, grammar=grammar)
    return GenerateRequest("chat", model, messages, params, stream, include_usage, keep_alive,
                           use)


def parse_completion(body: Any, *, default_max_tokens: int) -> GenerateRequest:
    model, keep_alive = _common(body, COMPLETION_FIELDS)
    stream, include_usage = _streaming(body)
    prompt = _get(body, "prompt", lambda v: isinstance(v, str) or (
        isinstance(v, list) and len(v) == 1 and isinstance(v[0], str)),
        "a string", required=True)
    prompt = _text(prompt if isinstance(prompt, str) else prompt[0], "prompt")
    return GenerateRequest("completion", model, prompt,
                           _params(body, default_max_tokens, chat=False), stream, include_usage,
                           keep_alive)


def parse_embeddings(body: Any) -> EmbeddingRequest:
    model, keep_alive = _common(body, EMBEDDING_FIELDS)
    raw = _get(body, "input", lambda v: isinstance(v, str) or (
        isinstance(v, list) and 0 < len(v) <= MAX_EMBEDDING_INPUTS
        and all(isinstance(s, str) for s in v)),
        f"a string or a list of 1-{MAX_EMBEDDING_INPUTS} strings", required=True)
    encoding = _get(body, "encoding_format", lambda v: v in ("float", "base64"),
                    "'float' or 'base64'", "float")
    inputs = tuple(_text(text, "input") for text in ((raw,) if isinstance(raw, str) else raw))
    return EmbeddingRequest(model, inputs, keep_alive, encoding)
