"""The one interface every model backend implements.

A backend is blocking: the daemon's scheduler calls it from a dedicated thread,
never from the event loop. Generation is a generator of events so that the
caller can stream text as it is produced and stop early: it yields
:class:`Delta` items and finally exactly one :class:`Done`. Setting the
``cancel`` event makes the backend stop after the current token and finish
with ``finish_reason="cancelled"``; the :class:`Done` still reports the tokens
actually produced.

Errors that depend on the request (a prompt longer than the context) are raised
before the first event is yielded, so a caller can pull one event and still
answer with a plain error instead of a half-open stream.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import numpy as np

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything a backend needs to load one model."""

    name: str
    path: Path
    chat_format: str | None = None
    context_length: int = 2048
    threads: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user", "assistant", or "tool" (templates that render tools)
    content: str
    # For a chat template that renders tools itself: an assistant turn's calls, OpenAI's
    # shape ({"id", "type": "function", "function": {"name", "arguments"}}), and the
    # call a tool turn answers.
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    tool_call_id: str | None = None


Prompt = str | Sequence[ChatMessage]
"""A raw completion prompt, or a chat conversation that the backend formats."""


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int | None = None  # None: until end of text or the context is full
    temperature: float = 0.8
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Reuse the evaluated prefix the previous request shares with this prompt. Faster, but
    # on some CPUs greedy output can then differ from a fresh evaluation where logits
    # nearly tie (batch and single-token kernels round differently), as in llama-server.
    cache_prompt: bool = True
    # Sampler settings the model has defaults for (None: the model's; see the backend).
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None  # llama.cpp's: 1.0 is off
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from a token already seen
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token was seen
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    grammar: str | None = None  # GBNF (root rule ``root``) the output must match
    logprobs: int | None = None  # None: none; k: each token's log-probability and top k
    # OpenAI tool definitions, for a chat template that renders tools itself
    # (:attr:`Backend.renders_tools`); other models get them described in the messages.
    tools: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Delta:
    """A piece of generated text and the number of generated tokens it completes.

    A token whose bytes are held back (part of a UTF-8 character, or a possible stop
    string) is counted by the next ``Delta`` that carries text, so a consumer that stops
    early can bill exactly the tokens behind the text it received."""

    text: str
    tokens: int
    # With ``GenerationParams.logprobs``: one entry per token this delta completes.
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's bytes and log-probability under the model's distribution
    (before sampling settings), and the most likely alternatives at that position."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class Done:
    """The last event of a generation."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


class BackendError(Exception):
    """Base class of errors raised by backends."""


class ContextLengthExceeded(BackendError):
    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(
            f"the prompt has {prompt_tokens} tokens; this model's context holds {context_length}"
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class UnsupportedOperation(BackendError):
    """The backend cannot do this (embeddings on a model without them, say)."""


class InvalidInput(BackendError):
    """The request's tensors do not fit the model (name, datatype, shape or values).

    ``param`` names the offending input when there is one, so the daemon can answer 400
    and point at it.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class MissingDependency(BackendError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'edged[{extra}]'")
        self.package = package
        self.extra = extra


class Backend(ABC):
    """A loaded model. Instances are created with :meth:`load`."""

    runtime: ClassVar[str]

    @classmethod
    @abstractmethod
    def load(cls, spec: ModelSpec) -> Backend:
        """Load the model; blocking."""

    @abstractmethod
    def generate(
        self, prompt: Prompt, params: GenerationParams, cancel: threading.Event
    ) -> Iterator[Delta | Done]:
        """Yield :class:`Delta` events and then one :class:`Done`."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        """One vector per text."""

    @abstractmethod
    def close(self) -> None:
        """Free the model's memory. Idempotent."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """An estimate of the memory this model holds."""

    @property
    def max_concurrency(self) -> int:
        """How many generate/embed calls may run at once on this instance."""
        return 1

    @property
    def renders_tools(self) -> bool:
        """Whether this model's own chat template renders tool definitions, tool calls and
        tool results (``GenerationParams.tools``, ``ChatMessage.tool_calls``)."""
        return False

    @property
    def embeds_apart(self) -> bool:
        """Whether :meth:`embed` uses its own context, so that it may run beside every
        running generation instead of waiting for one of their slots."""
        return False

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named input tensors and return its named output tensors.

        Tensor models (ONNX) implement it; a bad tensor raises :class:`InvalidInput`
        before anything runs. The default refuses.
        """
        raise UnsupportedOperation(f"the {self.runtime} runtime does not serve predictions")

    def describe(self) -> dict[str, Any]:
        """Metadata about the loaded model for the API (JSON-serialisable); may be empty."""
        return {}
