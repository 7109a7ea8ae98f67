"""Chat prompt formats, checked against the exact strings the models were trained on."""

from __future__ import annotations

import pytest

from runtimes.base import BackendError, ChatMessage
from runtimes.chat_formats import (
    FormattedChat,
    TemplateChatFormat,
    chat_format_names,
    format_chat,
)


def test_gemma_turns_and_generation_prompt() -> None:
    chat = format_chat(
        [
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Hello!"),
            ChatMessage("user", "  How are you?\n"),
        ],
        "gemma",
    )
    assert chat == FormattedChat(
        "<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nHow are you?<end_of_turn>\n"
        "<start_of_turn>model\n",
        ("<end_of_turn>",),
    )


def test_gemma_puts_system_text_before_the_next_user_turn() -> None:
    chat = format_chat([ChatMessage("system", "Be terse."), ChatMessage("user", "Hi")], "gemma")
    assert chat.prompt == (
        "<start_of_turn>user\nBe terse.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_trailing_system_message_becomes_a_user_turn() -> None:
    chat = format_chat([ChatMessage("system", "A"), ChatMessage("system", "B")], "gemma")
    assert chat.prompt == "<start_of_turn>user\nA\n\nB<end_of_turn>\n<start_of_turn>model\n"


def test_chatml() -> None:
    chat = format_chat([ChatMessage("system", "S"), ChatMessage("user", "U")], "chatml")
    assert chat == FormattedChat(
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n",
        ("<|im_end|>",),
    )


def test_format_names() -> None:
    assert chat_format_names() == ["chatml", "gemma"]


@pytest.mark.parametrize(
    ("messages", "chat_format", "message"),
    [
        ([ChatMessage("user", "x")], "llama-9", "unknown chat format"),
        ([ChatMessage("tool", "x")], "gemma", "unknown chat role"),
        ([ChatMessage("tool", "x")], "chatml", "unknown chat role"),
        ([], "gemma", "at least one message"),
    ],
)
def test_errors(messages: list[ChatMessage], chat_format: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        format_chat(messages, chat_format)


TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_gguf_template_is_rendered_with_bos_and_eos_text() -> None:
    chat = TemplateChatFormat(TEMPLATE, bos_token="<s>", eos_token="</s>")
    rendered = chat([ChatMessage("system", "S"), ChatMessage("user", "U")])
    assert rendered == FormattedChat("<s><system>S</s><user>U</s><assistant>", ("</s>",))


def test_gguf_template_errors_do_not_quote_the_conversation() -> None:
    chat = TemplateChatFormat(
        "{{ raise_exception('bad: ' + messages[0].content) }}", bos_token="", eos_token=""
    )
    with pytest.raises(BackendError, match="chat template failed") as caught:
        chat([ChatMessage("user", "secret-canary")])
    assert "secret-canary" not in str(caught.value)
    with pytest.raises(BackendError, match="chat template failed"):
        TemplateChatFormat("{% for %}", bos_token="", eos_token="")([ChatMessage("user", "x")])
