"""Tool calls (OpenAI ``tools`` / ``tool_choice``) for models of any chat format.

A model whose GGUF chat template renders tools (it uses the ``tools`` variable, as the
templates of Qwen, Llama 3.1+, Mistral and Hermes models do) gets the tools, the
assistant's earlier calls and the tool results as they are, rendered by that template
(:func:`native_messages`). For every other model (built-in formats, templates without
tools) the documented fallback is used. The conversation the model sees then: the tools
are described in the system turn, with the
one call syntax the model is asked to use,
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes/Qwen form that
many open models are trained on); an assistant turn that called tools is rendered with
those calls in that syntax, and a ``tool`` message becomes a user turn holding
``<tool_response>...</tool_response>``. That works with every chat format and template,
so a model is never refused for lacking native tool support.

``tool_choice``: ``none`` renders no tools; ``auto`` lets the model answer or call, and
a call is recognised in the output (a ``<tool_call>`` block naming a given tool with an
object of arguments, or a whole answer that is such an object); ``required`` and a named
function constrain sampling with a grammar to exactly one valid call whose arguments
match the function's parameter schema.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edged.errors import InvalidRequest
from edged.structured import schema_grammar
from runtimes import ChatMessage

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_TOOLS = 64
MAX_CALLS = 16  # tool calls one assistant message may carry
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CALL_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {"id": self.id, "type": "function",
                                "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


@dataclass(frozen=True)
class Message:
    """A chat message as the client sent it, tool fields included."""

    role: str  # system, user, assistant or tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers


@dataclass(frozen=True)
class ToolUse:
    """A request's tools and ``tool_choice`` (``auto``, ``required`` or one name)."""

    tools: tuple[Tool, ...]
    choice: str  # "auto", "required", or "function:<name>"

    def committed(self) -> str:
        """What the receipt's input commitment covers: the tools and the choice, as
        canonical JSON text (a schema may hold floats, which canonical msgpack has not)."""
        return json.dumps({"tools": [[t.name, t.description, t.parameters] for t in self.tools],
                           "tool_choice": self.choice}, sort_keys=True, separators=(",", ":"))

    def openai(self) -> tuple[dict[str, Any], ...]:
        """The tools in OpenAI's shape, for a chat template that renders them."""
        return tuple({"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in self.tools)

    def grammar(self) -> str | None:
        """The GBNF of one valid call, for ``required`` and a named function."""
        if self.choice == "auto":
            return None
        chosen = [t for t in self.tools if self.choice in ("required", f"function:{t.name}")]
        schema = {"anyOf": [{
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"], "additionalProperties": False,
        } for tool in chosen]}
        call = schema_grammar(schema, "tools")
        call = re.sub(r"^root ::=", "tool-call ::=", call, count=1, flags=re.MULTILINE)
        return f'root ::= "{OPEN}" tool-call "{CLOSE}"\n{call}'

    def system_text(self) -> str:
        lines = ["You can call these tools. To call one, answer with only:",
                 f'{OPEN}{{"name": "<tool name>", "arguments": {{<the arguments>}}}}{CLOSE}',
                 "Tools:"]
        for tool in self.tools:
            about = f": {tool.description}" if tool.description else ""
            lines.append(f"- {tool.name}{about}. Arguments (JSON schema): "
                         f"{json.dumps(tool.parameters, sort_keys=True)}")
        if self.choice == "required":
            lines.append("You must call one of the tools.")
        elif self.choice.startswith("function:"):
            lines.append(f"You must call {self.choice.removeprefix('function:')}.")
        return "\n".join(lines)


def parse_tools(tools: Sequence[Tool], choice: str | None) -> ToolUse | None:
    """The tools a chat may call and ``tool_choice`` (``none``, ``auto``, ``required``
    or ``function:<name>``); None when no tool may be called. The fields' shapes are
    checked by their declaration (:class:`edged.openai_requests.ChatBody`); this checks them
    against each other."""
    names = {tool.name for tool in tools}
    if len(names) != len(tools):
        raise InvalidRequest("tool names must be unique", param="tools")
    if choice is None:
        choice = "auto" if tools else "none"
    if choice.startswith("function:") and choice.removeprefix("function:") not in names:
        raise InvalidRequest("'tool_choice' must name one of the given tools",
                             param="tool_choice")
    if choice == "none":
        return None
    if not tools:
        raise InvalidRequest(f"'tool_choice' {choice!r} needs 'tools'", param="tool_choice")
    return ToolUse(tuple(tools), choice)


def conversation(messages: Sequence[Message], use: ToolUse | None) -> tuple[ChatMessage, ...]:
    """The messages the model sees: tool calls and results as text, tools described in
    the system turn (see the module docstring)."""
    rendered: list[ChatMessage] = []
    for message in messages:
        if message.role == "tool":
            body = json.dumps({"tool_call_id": message.tool_call_id, "content": message.content})
            rendered.append(ChatMessage("user", f"<tool_response>{body}</tool_response>"))
        elif message.tool_calls:
            calls = "".join(f"{OPEN}{json.dumps({'name': c.name, 'arguments': _loads(c)})}"
                            f"{CLOSE}" for c in message.tool_calls)
            rendered.append(ChatMessage("assistant", message.content + calls))
        else:
            rendered.append(ChatMessage(message.role, message.content))
    if use is not None:
        if rendered and rendered[0].role == "system":
            rendered[0] = ChatMessage("system", f"{rendered[0].content}\n\n{use.system_text()}")
        else:
            rendered.insert(0, ChatMessage("system", use.system_text()))
    return tuple(rendered)


def native_messages(messages: Sequence[Message]) -> tuple[ChatMessage, ...]:
    """The messages for a chat template that renders tool calls and results itself."""
    return tuple(ChatMessage(m.role, m.content,
                             tuple(c.to_openai() for c in m.tool_calls), m.tool_call_id)
                 for m in messages)


def _loads(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def find_calls(text: str, use: ToolUse) -> tuple[str | None, list[ToolCall]]:
    """The answer's content (None when only calls) and the calls it makes."""
    names = {tool.name for tool in use.tools}
    calls: list[ToolCall] = []
    for block in _CALL_BLOCK.findall(text):
        call = _call(block, names)
        if call is None:
            return text, []  # a malformed block: the text is the answer, as given
        calls.append(call)
    if calls:
        content = _CALL_BLOCK.sub("", text).strip()
        return content or None, calls
    bare = _call(text, names)  # a whole answer that is a call object
    return (None, [bare]) if bare is not None else (text, [])


def _call(text: str, names: set[str]) -> ToolCall | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, dict):
        return None
    return ToolCall(f"call_{secrets.token_hex(12)}", value["name"],
                    json.dumps(arguments, separators=(",", ":")))


class CallSplitter:
    """Streams an ``auto`` answer's content while holding back anything that may be a
    tool call: text from a (possible beginning of a) ``<tool_call>`` marker on, or a whole
    answer that starts as a JSON object. :meth:`finish` gives the rest and the calls."""

    def __init__(self, use: ToolUse) -> None:
        self.use = use
        self._text = ""
        self._sent = 0
        self._held = False  # a call has begun: nothing more is streamed

    def push(self, piece: str) -> str:
        self._text += piece
        if self._held:
            return ""
        if self._sent == 0 and self._text.lstrip().startswith("{"):
            self._held = True
            return ""
        start = self._text.find(OPEN, self._sent)
        if start >= 0:
            self._held = True
            return self._emit(start)
        # Keep back a tail that could be the start of the marker.
        keep = next((k for k in range(min(len(OPEN) - 1, len(self._text)), 0, -1)
                     if OPEN.startswith(self._text[-k:])), 0)
        if self._sent == 0 and not self._text.strip():
            return ""  # leading blanks: wait to see whether a JSON call follows
        return self._emit(len(self._text) - keep)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The content not yet streamed and the calls (text that was no call is content)."""
        content, calls = find_calls(self._text, self.use)
        if not calls:
            return self._emit(len(self._text)), []
        rest = self._text[self._sent:]
        tail = _CALL_BLOCK.sub("", rest) if OPEN in rest else ""
        if content is None:
            tail = ""
        return tail.rstrip(), calls

    def _emit(self, end: int) -> str:
        out = self._text[self._sent:end]
        self._sent = max(self._sent, end)
        return out
