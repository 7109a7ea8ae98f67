"""Chat prompt formats: a conversation in, one prompt string and its stop strings out.

Pure string work with no llama.cpp import, so it is unit-testable on its own. The prompt
contains the format's special tokens as text (``<start_of_turn>``, ``<|im_start|>``); the
backend must tokenize it with special-token parsing on so they become single control
tokens. The BOS token is *not* part of the prompt: whether to add it is the model's
decision (``tokenizer.ggml.add_bos_token``), applied by the tokenizer.

A model whose ``chat_format`` is ``None`` uses the Jinja2 chat template in its GGUF
instead (:class:`TemplateChatFormat`), rendered by llama-cpp-python's formatter, which is
imported when the first template is compiled.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtimes.base import BackendError, ChatMessage

ROLES = frozenset({"system", "user", "assistant"})
TEMPLATE_ROLES = ROLES | {"tool"}  # a template that renders tools also takes tool turns


@dataclass(frozen=True)
class FormattedChat:
    """A chat rendered for a completion model."""

    prompt: str
    stop: tuple[str, ...]


def _check_roles(messages: Sequence[ChatMessage], roles: frozenset[str] = ROLES) -> None:
    if not messages:
        raise BackendError("a chat needs at least one message")
    for message in messages:
        if message.role not in roles:
            raise BackendError(
                f"unknown chat role {message.role!r}; expected one of {sorted(roles)}"
            )


def format_gemma(messages: Sequence[ChatMessage]) -> FormattedChat:
    """Gemma's turns, as its own chat template renders them (minus ``<bos>``).

    Gemma has no system role: system text is prepended, followed by a blank line, to the
    next user turn (a trailing system message becomes a user turn of its own). The
    assistant's role is called ``model``. Contents are stripped, as the template does.
    """
    _check_roles(messages)
    parts: list[str] = []
    pending_system: list[str] = []
    for message in messages:
        content = message.content.strip()
        if message.role == "system":
            pending_system.append(content)
            continue
        if message.role == "user" and pending_system:
            content = "\n\n".join([*pending_system, content])
            pending_system.clear()
        role = "model" if message.role == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    if pending_system:
        system_text = "\n\n".join(pending_system)
        parts.append(f"<start_of_turn>user\n{system_text}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return FormattedChat("".join(parts), ("<end_of_turn>",))


def format_chatml(messages: Sequence[ChatMessage]) -> FormattedChat:
    """ChatML (Qwen, many fine-tunes): ``<|im_start|>role\\ncontent<|im_end|>\\n``."""
    _check_roles(messages)
    parts = [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages]
    parts.append("<|im_start|>assistant\n")
    return FormattedChat("".join(parts), ("<|im_end|>",))


def _formatters() -> dict[str, Callable[[Sequence[ChatMessage]], FormattedChat]]:
    return {"gemma": format_gemma, "chatml": format_chatml}


def chat_format_names() -> list[str]:
    """The chat formats this module knows, sorted."""
    return sorted(_formatters())


def format_chat(messages: Sequence[ChatMessage], chat_format: str) -> FormattedChat:
    """Render ``messages`` in the named format; :class:`BackendError` if it is unknown."""
    try:
        formatter = _formatters()[chat_format]
    except KeyError:
        raise BackendError(
            f"unknown chat format {chat_format!r}; known: {chat_format_names()}"
        ) from None
    return formatter(messages)


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates (written for Hugging Face's renderer) expect it: tool
    call arguments as an object, not OpenAI's JSON text."""
    rendered: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            function = dict(call.get("function") or {})
            with contextlib.suppress(ValueError):  # not JSON: the text as it is
                function["arguments"] = json.loads(function.get("arguments") or "{}")
            calls.append({**call, "function": function})
        rendered["tool_calls"] = calls
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


class TemplateChatFormat:
    """A GGUF's own ``tokenizer.chat_template`` (Jinja2), as llama-cpp-python renders it.

    The template writes any BOS itself (``{{ bos_token }}``); the backend drops a second
    BOS if the tokenizer adds one too. The stop string is the EOS token's text.
    """

    def __init__(self, template: str, *, bos_token: str, eos_token: str) -> None:
        self.template = template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._formatter: Any = None

    @property
    def renders_tools(self) -> bool:
        """Whether the template uses the ``tools`` variable (and so knows tool turns)."""
        return "tools" in self.template

    def __call__(self, messages: Sequence[ChatMessage],
                 tools: Sequence[Mapping[str, Any]] = ()) -> FormattedChat:
        """Render ``messages`` (and ``tools``, for a template that renders them); template
        errors become :class:`BackendError`."""
        _check_roles(messages, TEMPLATE_ROLES if self.renders_tools else ROLES)
        try:
            if self._formatter is None:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                self._formatter = Jinja2ChatFormatter(
                    template=self.template, eos_token=self.eos_token, bos_token=self.bos_token
                )
            rendered = self._formatter(
                messages=[_template_message(m) for m in messages],
                tools=[dict(tool) for tool in tools] or None,
            )
        except Exception as exc:  # jinja2's errors and the template's raise_exception()
            # Only the type: a message could quote the conversation.
            raise BackendError(f"the model's chat template failed: {type(exc).__name__}") from None
        stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop]
        return FormattedChat(rendered.prompt, tuple(s for s in stops if s))
