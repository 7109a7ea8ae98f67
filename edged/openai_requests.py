"""The OpenAI request bodies, declared once, and the typed requests they become.

:class:`ChatBody`, :class:`CompletionBody` and :class:`EmbeddingBody` are strict Pydantic
models (:mod:`edged.schema`): the one declaration of every field an endpoint knows, with
its type and range, that validates the body, names the failing ``param``, and is the
endpoint's schema in ``/openapi.json``. A field edged does not implement is declared
``refused`` and answered with 400, never silently ignored, so a client never pays for an
answer it did not ask for; a field without effect is declared ``ignored``, with why.
The rules between fields (``max_tokens`` against ``max_completion_tokens``, tools
against logprobs and grammars) run when a body becomes a :class:`GenerateRequest`.

Why one module of ~490 lines: three bodies that share their field types, and the typed
requests they become; apart, a field's declaration and its meaning would sit in two files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from edged.errors import InvalidRequest, UnsupportedParameter
from edged.schema import Body, Refused, ignored, invalid, refuse
from edged.structured import grammar_for, schema_grammar
from edged.tools import (
    MAX_CALLS,
    MAX_TOOLS,
    TOOL_NAME,
    Message,
    Tool,
    ToolCall,
    ToolUse,
    conversation,
    native_messages,
    parse_tools,
)
from runtimes import GenerationParams, Prompt

MAX_STOP_SEQUENCES = 4
MAX_EMBEDDING_INPUTS = 256
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
MAX_TOP_LOGPROBS = 20
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


def parse_keep_alive(value: Any) -> float | None:
    """Seconds as a number, or a duration like ``"5m"``, ``"30s"``, ``"-1"`` (as Ollama).
    Anything beyond ``MAX_KEEP_ALIVE`` means forever (-1)."""
    seconds: float | None = None
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds is None or not math.isfinite(seconds):
        raise InvalidRequest("'keep_alive' must be seconds or a duration like '5m'",
                             param="keep_alive")
    return -1.0 if seconds > MAX_KEEP_ALIVE else seconds


def _keep_alive(value: float | str) -> float | str:
    try:
        parse_keep_alive(value)
    except InvalidRequest:
        raise invalid("seconds, or a duration like '5m'") from None
    return value


# Field types, each declared once and shared by the bodies below.
ModelName = Annotated[str, Field(min_length=1, max_length=128)]
# The duration's pattern is documented, and checked by _keep_alive (whose message says
# what a duration is, where the pattern's would show a regular expression).
KeepAlive = Annotated[float | Annotated[str, Field(json_schema_extra={
    "pattern": r"^\s*" + _DURATION.pattern[1:-1] + r"\s*$"})],
                      AfterValidator(_keep_alive),
                      Field(description="seconds, or a duration like '5m'; negative: forever")]
Penalty = Annotated[float, Field(ge=-2, le=2)]  # OpenAI's range
RepeatPenalty = Annotated[float, Field(ge=0, le=10)]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]
StopText = Annotated[str, Field(min_length=1)]
UserId = Annotated[str, ignored("an end-user id for the provider's abuse monitoring; edged "
                                "neither stores nor logs it")]


def _is_exactly(expected: Any) -> Callable[[Any], bool]:
    """A neutral value test that tells ``true`` from ``1`` (JSON does, Python does not)."""
    return lambda value: type(value) is type(expected) and value == expected


def _only_one(value: int) -> int:
    if value > 1:
        raise refuse("limited to 1: edged answers one choice per request")
    return value


def _no_obfuscation(value: bool) -> bool:
    # include_obfuscation pads chunks against length side channels; edged does not.
    if value:
        raise refuse("not supported: edged does not pad stream chunks")
    return value


class _Nested(Body):
    endpoint: ClassVar[str] = "this object"


class StreamOptions(_Nested):
    include_usage: bool | None = None
    include_obfuscation: Annotated[bool, AfterValidator(_no_obfuscation)] | None = None


class JsonSchemaFormat(_Nested):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None


class ResponseFormat(_Nested):
    model_config = ConfigDict(json_schema_extra={"if": {"properties": {
        "type": {"const": "json_schema"}}}, "then": {"required": ["json_schema"]}})
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None  # required with type json_schema

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise invalid("type json_schema needs 'json_schema'")
        return self


class TextPart(_Nested):
    type: Literal["text"]
    text: str


class CalledFunction(_Nested):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class CallBody(_Nested):
    id: str
    type: Literal["function"] | None = None
    function: CalledFunction


Content = str | list[TextPart]  # content parts: only text is supported


class _Message(_Nested):
    """A chat message. Keys beyond its role's with a ``null`` value are dropped; with any
    other value (``name``, ``audio``...) they are refused, naming ``messages[i].key``."""

    role: str
    content: Content | None

    @model_validator(mode="before")
    @classmethod
    def _without_nulls(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) \
            else data

    def message(self) -> Message:
        content = self.content
        text = "".join(part.text for part in content) if isinstance(content, list) \
            else content or ""
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments)
                      for c in getattr(self, "tool_calls", None) or ())
        return Message("system" if self.role == "developer" else self.role, text, calls,
                       getattr(self, "tool_call_id", None))


class TextMessage(_Message):
    role: Literal["system", "developer", "user"]
    content: Content


class AssistantMessage(_Message):
    model_config = ConfigDict(json_schema_extra={
        "anyOf": [{"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
                  {"required": ["tool_calls"],
                   "properties": {"tool_calls": {"not": {"type": "null"}}}}]})
    role: Literal["assistant"]
    content: Content | None = None  # none: the turn only called tools
    tool_calls: Annotated[list[CallBody], Field(min_length=1, max_length=MAX_CALLS)] | None = None

    @model_validator(mode="after")
    def _says_or_calls(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise invalid("'content' is required unless the message calls tools")
        return self


class ToolMessage(_Message):
    role: Literal["tool"]
    content: Content
    tool_call_id: str  # the call this answers


ChatMessage = Annotated[TextMessage | AssistantMessage | ToolMessage,
                        Field(discriminator="role")]


class FunctionSpec(_Nested):
    name: Annotated[str, Field(pattern=TOOL_NAME.pattern)]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; none: no arguments
    strict: bool | None = None  # always strict: required calls are grammar-constrained


class ToolSpec(_Nested):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Nested):
    name: str


class NamedChoice(_Nested):
    type: Literal["function"]
    function: NamedFunction


class _OpenAIBody(Body):
    """What every OpenAI body shares: ``null`` means absent, for every declared field."""

    model: ModelName
    keep_alive: KeepAlive | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}


class _GenerationBody(_OpenAIBody):
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    n: Annotated[int, Field(ge=1, json_schema_extra={"maximum": 1}),
                 AfterValidator(_only_one)] | None = None
    cache_prompt: bool | None = None
    # sampling (llama.cpp's native chain) and structured output (a grammar)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[
        dict[Annotated[str, Field(pattern="^[0-9]{1,9}$")],
             Annotated[float, Field(ge=-100, le=100)]],
        Field(max_length=MAX_LOGIT_BIAS)] | None = None
    top_k: Annotated[int, Field(ge=0, le=100_000)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: RepeatPenalty | None = None
    repetition_penalty: RepeatPenalty | None = None
    response_format: ResponseFormat | None = None
    format: Annotated[Literal["json"] | dict[str, Any], Field(
        description="Ollama's structured output: \"json\" or a JSON schema")] | None = None

    def params(self, default_max_tokens: int, logprobs: int | None) -> GenerationParams:
        """The generation parameters, after the rules between fields."""
        if None not in (self.max_tokens, self.max_completion_tokens) and \
                self.max_tokens != self.max_completion_tokens:
            raise InvalidRequest("'max_tokens' and 'max_completion_tokens' differ; give one",
                                 param="max_completion_tokens")
        if None not in (self.repeat_penalty, self.repetition_penalty) and \
                self.repeat_penalty != self.repetition_penalty:
            raise InvalidRequest("'repeat_penalty' and 'repetition_penalty' differ; give one",
                                 param="repetition_penalty")
        max_tokens = self.max_tokens or self.max_completion_tokens or default_max_tokens
        repeat = self.repeat_penalty if self.repeat_penalty is not None \
            else self.repetition_penalty
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerationParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=tuple(s for s in stops if s), seed=self.seed,
            cache_prompt=self.cache_prompt is not False, grammar=self._grammar(),
            logprobs=logprobs,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repeat_penalty=repeat,
            logit_bias=tuple(sorted((int(k), v) for k, v in (self.logit_bias or {}).items())),
            top_k=self.top_k, min_p=self.min_p)

    def _grammar(self) -> str | None:
        """The grammar for ``response_format`` (OpenAI) or ``format`` (Ollama: "json" or
        a JSON schema)."""
        if self.response_format is not None and self.format is not None:
            raise InvalidRequest("give 'response_format' or 'format', not both", param="format")
        if self.format == "json":
            return grammar_for({"type": "json_object"}, "format")
        if isinstance(self.format, dict):
            return schema_grammar(self.format, "format")
        if self.response_format is None:
            return None
        return grammar_for(self.response_format.model_dump(exclude_none=True, by_alias=True))

    def streaming(self) -> tuple[bool, bool]:
        """``stream`` and ``stream_options.include_usage``."""
        options = self.stream_options
        return bool(self.stream), bool(options is not None and options.include_usage)


class ChatBody(_GenerationBody):
    """``POST /v1/chat/completions``. Every field OpenAI's API knows is declared: parsed,
    accepted without effect (with the reason), or refused (with the reason); any other
    field is refused as unknown, so a client never pays for an answer it did not ask for."""

    endpoint: ClassVar[str] = "/v1/chat/completions"
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    tools: Annotated[list[ToolSpec], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | None = None
    # accepted without effect
    user: UserId | None = None
    safety_identifier: UserId | None = None
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)],
                             Annotated[str, Field(max_length=512)]],
                        Field(max_length=16),
                        ignored("tags for stored completions; edged stores none")] | None = None
    service_tier: Annotated[Literal["auto", "default"],
                            ignored("edged has one tier")] | None = None
    parallel_tool_calls: Annotated[bool, ignored(
        "every call the model makes is returned; required and named choices make exactly "
        "one")] | None = None
    prompt_cache_key: Annotated[str, ignored(
        "edged reuses shared prompt prefixes by itself (cache_prompt)")] | None = None
    # refused
    functions: Annotated[Any, Refused(
        "deprecated by OpenAI in favour of 'tools'", lambda v: v == [], {"const": []})] = None
    function_call: Annotated[Any, Refused(
        "deprecated by OpenAI in favour of 'tool_choice'", _is_exactly("none"),
        {"const": "none"})] = None
    store: Annotated[Any, Refused("edged never stores prompts or outputs",
                                  _is_exactly(False), {"const": False})] = None
    modalities: Annotated[Any, Refused("edged generates text only", lambda v: v == ["text"],
                                       {"const": ["text"]})] = None
    audio: Annotated[Any, Refused("edged generates text only")] = None
    prediction: Annotated[Any, Refused("edged has no predicted outputs")] = None
    reasoning_effort: Annotated[Any, Refused("edged has no reasoning-effort control")] = None
    verbosity: Annotated[Any, Refused("edged has no verbosity control")] = None
    web_search_options: Annotated[Any, Refused("edged has no web search")] = None
    prompt_cache_retention: Annotated[Any, Refused(
        "edged keeps no prompt cache across loads")] = None

    def request(self, *, default_max_tokens: int) -> GenerateRequest:
        """The typed request: tools, logprobs and grammars checked against each other."""
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        tools = tuple(Tool(t.function.name, t.function.description or "",
                           t.function.parameters or {"type": "object", "properties": {}})
                      for t in self.tools or ())
        choice = self.tool_choice
        use = parse_tools(tools, choice if not isinstance(choice, NamedChoice)
                          else f"function:{choice.function.name}")
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        params = self.params(default_max_tokens, logprobs)
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
        stream, include_usage = self.streaming()
        return GenerateRequest("chat", self.model, tuple(m.message() for m in self.messages),
                               params, stream, include_usage, parse_keep_alive(self.keep_alive),
                               use)


class CompletionBody(_GenerationBody):
    """``POST /v1/completions`` (OpenAI's legacy completions), declared as :class:`ChatBody`."""

    endpoint: ClassVar[str] = "/v1/completions"
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    logprobs: TopLogprobs | None = None
    user: UserId | None = None
    echo: Annotated[Any, Refused("edged does not echo prompts", _is_exactly(False),
                                 {"const": False})] = None
    best_of: Annotated[Any, Refused("one candidate per request", _is_exactly(1),
                                    {"const": 1})] = None
    suffix: Annotated[Any, Refused("edged has no fill-in-the-middle")] = None

    def request(self, *, default_max_tokens: int) -> GenerateRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        stream, include_usage = self.streaming()
        return GenerateRequest("completion", self.model, prompt,
                               self.params(default_max_tokens, self.logprobs), stream,
                               include_usage, parse_keep_alive(self.keep_alive))


class EmbeddingBody(_OpenAIBody):
    """``POST /v1/embeddings``, declared as :class:`ChatBody`."""

    endpoint: ClassVar[str] = "/v1/embeddings"
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] | None = None
    user: UserId | None = None
    dimensions: Annotated[Any, Refused("edged returns the model's full vectors")] = None

    def request(self) -> EmbeddingRequest:
        inputs = (self.input,) if isinstance(self.input, str) else tuple(self.input)
        return EmbeddingRequest(self.model, inputs, parse_keep_alive(self.keep_alive),
                                self.encoding_format or "float")
