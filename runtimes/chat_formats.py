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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runtimes.base import BackendError, ChatMessage

ROLES = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True)
class FormattedChat:
    """A chat rendered for a completion model."""

    prompt: str
    stop: tuple[str, ...]


def _check_roles(messages: Sequence[ChatMessage]) -> None:
    if not messages:
        raise BackendError("a chat needs at least one message")
    for message in messages:
        if message.role not in ROLES:
            raise BackendError(
                f"unknown chat role {message.role!r}; expected one of {sorted(ROLES)}"
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

    def __call__(self, messages: Sequence[ChatMessage]) -> FormattedChat:
        """Render ``messages``; template errors become :class:`BackendError`."""
        _check_roles(messages)
        try:
            if self._formatter is None:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                self._formatter = Jinja2ChatFormatter(
                    template=self.template, eos_token=self.eos_token, bos_token=self.bos_token
                )
            rendered = self._formatter(
                messages=[{"role": m.role, "content": m.content} for m in messages]
            )
        except Exception as exc:  # jinja2's errors and the template's raise_exception()
            # Only the type: a message could quote the conversation.
            raise BackendError(f"the model's chat template failed: {type(exc).__name__}") from None
        stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop]
        return FormattedChat(rendered.prompt, tuple(s for s in stops if s))
